"""A training stage's life: begin (the stage folder, resume or overwrite), load the model, finish (save, manifest).

Stage layout (`{output_dir}/{stage}/`):
    checkpoints/checkpoint-N/   trainer checkpoints (trainer_state.json, adapter, optimizer), written atomically
    checkpoints/recipe.yaml     the recipe the run began with, and start.json the stage output it began from:
                                --resume compares both (`compare_with_start`)
    adapter/                    the LoRA adapter (safetensors)
    merged/                     base + adapter merged (safetensors) with its tokenizer
    recipe.yaml manifest.json log_history.json README.md
    tensorboard/                TensorBoard logs
`manifest.json` is written last: its presence means the stage finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe, changed_keys, recipe_dict, save_recipe
from gsm8k_tr.errors import UserError, compiler_failure
from gsm8k_tr.outputs import full_disk_reported, read_object
from gsm8k_tr.processes import process_state, sharding
from gsm8k_tr.run_folder import is_finished, read_manifest, stage_dir
from gsm8k_tr.train.checkpoints import CHECKPOINTS, last_checkpoint
from gsm8k_tr.train.disk import RESUME
from gsm8k_tr.train.fitting import ran_out

log = logging.getLogger(__name__)


def begin(recipe: Recipe, stage: str, resume: bool, overwrite: bool,
          start: dict[str, Any] | None = None) -> tuple[Path, str | None, bool]:
    """Check the stage folder; return it, the checkpoint to resume from, and whether the stage is already done.

    Without --resume an existing stage output is refused unless --overwrite.
    Every process makes the same read-only decision (so an error stops them
    all); only the main process then changes the folder.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one")
    folder = stage_dir(recipe, stage)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder; choose another output_dir")
    # Only files count: a run that stopped at a recipe error leaves at most empty folders, and the record of how it
    # began (nothing trained yet).
    has_files = folder.is_dir() and any(p.is_file() and p not in (folder / CHECKPOINTS / STARTED,
                                                                  folder / CHECKPOINTS / START_MODEL)
                                        for p in folder.rglob("*"))
    if has_files and resume and is_finished(folder):
        finished_with = folder / "recipe.yaml"  # saved with its outputs
        other = {"sft": ("grpo.", "prompt_filter."), "grpo": ("sft.",)}.get(stage, ())  # the other stage's sections
        changed = [change for change in (recipe_changes(finished_with, recipe) if finished_with.is_file() else [])
                   if not change.startswith((*other, *EVALUATION_ONLY))]
        began = folder / CHECKPOINTS / START_MODEL
        began_from = read_object(began, "pass --overwrite to train the stage again") if began.is_file() else None
        if began_from is not None and began_from != (start or {}):  # GRPO on an SFT output trained again since
            changed.append(f"start model: {_start_name(began_from)} -> {_start_name(start or {})}")
        if changed:  # kept as it finished: a changed key (more steps, another rate) would otherwise pass unnoticed
            log.warning("--resume: %s already finished, with another recipe than this one (%s); it is kept as it is: "
                        "pass --overwrite to train it again with this recipe", folder, "; ".join(changed))
        return folder, None, True
    if has_files and not resume and not overwrite:
        raise UserError(f"{folder} already holds a {stage} run; pass --resume to continue it or --overwrite to start again")
    state = process_state()  # the launch was checked by the stage's `held_by_one_run`
    # Every process has looked before the main one writes: a process that looked later would find the main one's
    # files (the write test below) and stop as if the folder held a run, as one of two did at random.
    state.wait_for_everyone()
    with state.main_process_first():
        if state.is_main_process:
            if has_files and overwrite:
                shutil.rmtree(folder)
            try:
                (folder / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
                probe = folder / ".write-test"
                probe.write_text("ok")
                probe.unlink()
            except OSError as error:
                raise UserError(f"cannot write to {folder}: {error.strerror}; choose a writable output_dir") from None
    checkpoint = last_checkpoint(folder / CHECKPOINTS) if resume else None
    if resume and checkpoint is None:
        log.warning("--resume: %s has no complete checkpoint; training from the start", folder)
    elif checkpoint:
        compare_with_start(recipe, folder / CHECKPOINTS / STARTED, start)
        log.info("--resume: resuming from %s", checkpoint)
    if checkpoint is None and state.is_main_process:
        save_recipe(recipe, folder / CHECKPOINTS)
        (folder / CHECKPOINTS / START_MODEL).write_text(json.dumps(start or {}), encoding="utf-8")
    return folder, checkpoint, False


STARTED = "recipe.yaml"  # in checkpoints/: the recipe the run began with, which --resume compares
START_MODEL = "start.json"  # beside it: the stage output the run began from (GRPO: the SFT output), likewise
# What the checkpoints were trained as: resumed with other values, the adapter would load into another layout (another
# LoRA rank stopped in a traceback) or base model, or train on with other prompts or rewards.
FIXED_ON_RESUME = ("model.", "lora.", "prompt.", "rewards.")
# Keys only the final evaluation reads: a finished stage would train the same with other values (the pipeline
# evaluates it again).
EVALUATION_ONLY = ("eval.split ", "eval.limit ", "eval.device ", "eval.dtype ")


def _start_name(model: dict[str, Any]) -> str:
    """A stage's start model as a start record holds it: GRPO's SFT output, with when it finished, or none."""
    return f"an SFT output finished at {model['finished_at']}" if model else "the base model"


def compare_with_start(recipe: Recipe, started: Path, start: dict[str, Any] | None = None) -> None:
    """Refuse a resume whose recipe or start model (`start`: GRPO's SFT output, with when it finished) changes what
    the checkpoints were trained as; name every other change."""
    if not started.is_file():  # a run begun by an earlier version
        return
    record = started.with_name(START_MODEL)
    began = read_object(record, "pass --overwrite to start the stage again") if record.is_file() else None
    if began is not None and began != (start or {}):
        raise UserError(f"--resume: the run in {started.parent.parent} began from {_start_name(began)}, and starts now "
                        f"from {_start_name(start or {})}: its checkpoints belong to another model; pass --overwrite "
                        "to start again")

    changed = recipe_changes(started, recipe)
    fixed = [change for change in changed if change.startswith(FIXED_ON_RESUME)]
    if fixed:
        raise UserError(f"--resume: the run in {started.parent.parent} began with another recipe ({'; '.join(fixed)}); "
                        "resume with the values it began with (its checkpoints/recipe.yaml), or pass --overwrite")
    if changed:
        log.warning("--resume: the recipe differs from the one the run began with (%s); the run goes on with its "
                    "saved optimizer and schedule", "; ".join(changed))


def recipe_changes(saved: Path, recipe: Recipe) -> list[str]:
    """Each key whose value differs between the recipe saved at `saved` and `recipe`: "key old -> new"."""
    import yaml

    before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    return [change for change in changed_keys(before, recipe_dict(recipe)) if not change.startswith("output_dir ")]


def load_base(recipe: Recipe, path: str | None = None, checkpoint: str | None = None) -> tuple[Any, Any]:
    """Tokenizer and model, the main process first (it may build a `builtin:` model). A run resumed from
    `checkpoint` loads the recipe's Hub model at the commit the checkpoint's adapter was trained on."""
    from gsm8k_tr.modeling import load_model, load_tokenizer, pin_commit

    saved = Path(checkpoint) / "adapter_config.json" if checkpoint and path is None else None
    commit = read_object(saved, "remove that checkpoint").get("revision") if saved and saved.is_file() else None
    if commit:
        pin_commit(recipe.model, commit)
    with process_state().main_process_first():
        return load_tokenizer(recipe.model, path), load_model(recipe.model, path)


def log_to(folder: Path) -> None:
    """Send this stage's TensorBoard events to `{stage}/tensorboard`."""
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder / "tensorboard")


SHARDINGS = {  # a sharded launch (`processes.sharding`): what it is called, and how to launch it again
    "FSDP": ("an FSDP launch", "accelerate launch --config_file recipes/accelerate/fsdp.yaml ..."),
    "DEEPSPEED": ("a DeepSpeed launch (ZeRO stage 0-2)", "accelerate launch --config_file with the DeepSpeed config it "
                  "began with, such as recipes/accelerate/zero2.yaml"),
    "DEEPSPEED_ZERO3": ("a DeepSpeed ZeRO-3 launch", "accelerate launch --config_file with the ZeRO-3 config it began "
                        "with"),
}


def saved_sharding(checkpoint: str) -> tuple[str | None, int | None]:
    """Which sharded launch saved `checkpoint` (a `SHARDINGS` key, or None for a plain one: `optimizer.pt`), by
    the files each leaves, and for DeepSpeed how many processes its optimizer state is split into.

    FSDP saves the trainable weights and the optimizer as its own files
    (accelerate's `FSDP_MODEL_NAME`, `optimizer.bin`). DeepSpeed saves its
    engine's state in `global_step*` folders (the name transformers'
    `deepspeed_load_checkpoint` looks for): the model's as
    `mp_rank_*_model_states.pt`, under ZeRO-3 one `zero_pp_rank_*_…` per
    process, and the optimizer's as one `*zero_pp_rank_*_optim_states.pt`
    per process.
    """
    from accelerate.utils.constants import FSDP_MODEL_NAME

    folder = Path(checkpoint)
    if any(folder.glob(f"{FSDP_MODEL_NAME}*")):
        return "FSDP", None
    engine = sorted(path for path in folder.glob("global_step*") if path.is_dir())
    if not engine:
        return None, None
    zero3 = any(engine[-1].glob("zero_pp_rank_*_model_states.pt"))
    parts = len(list(engine[-1].glob("*zero_pp_rank_*_optim_states.pt")))
    return "DEEPSPEED_ZERO3" if zero3 else "DEEPSPEED", parts or None


def check_checkpoint_sharding(checkpoint: str, launch: str | None, processes: int) -> None:
    """A checkpoint resumes only under the sharding it was saved with (`launch`: this run's, a `SHARDINGS` key or
    None), and a DeepSpeed one on as many processes as it split its optimizer state over.

    Each sharding reads only its own files. Without FSDP transformers
    refuses FSDP's ("only supported when using PyTorch FSDP"), and an FSDP
    launch looks for `optimizer.bin` in another's checkpoint; DeepSpeed finds
    no `global_step*` folder in another's ("Can't find a valid checkpoint"),
    no ZeRO-3 files in a ZeRO-2 one (an AssertionError), and refuses another
    number of processes ("Automatic adjustment ... not currently
    supported"): each a traceback on every process. A DeepSpeed checkpoint
    resumed without DeepSpeed was worse: it has no `optimizer.pt`, so
    transformers went on with a new optimizer, its moments lost, and said
    nothing.
    """
    saved, parts = saved_sharding(checkpoint)
    fix = "; or pass --overwrite to start the stage again"
    if saved == launch:
        if parts is not None and parts != processes:
            raise UserError(f"--resume: {checkpoint} was saved by {parts} processes, and DeepSpeed cannot split its "
                            f"optimizer state over {processes}: resume it with --num_processes {parts}{fix}")
        return
    if saved is None:
        raise UserError(f"--resume: {checkpoint} was saved by a launch without FSDP or DeepSpeed, and this one is "
                        f"{SHARDINGS[launch][0]}: resume it as it began{fix}")
    name, how = SHARDINGS[saved]
    raise UserError(f"--resume: {checkpoint} was saved by {name}, and this run is not one: resume it under the same "
                    f"launch ({how}){fix}")


def check_whole_saves(trainer: Any) -> None:
    """Under FSDP the trainer saves the adapter whole only with accelerate's FULL_STATE_DICT. With another state dict
    type its checkpoints and its final save hold no adapter file: no checkpoint is complete for `--resume`, GRPO's
    kept check is never written (a FileNotFoundError on the first), and the stage would stop at its end; so it stops
    before training."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    kind = str(getattr(plugin, "state_dict_type", "")).rsplit(".", 1)[-1]
    if sharding(trainer.accelerator) == "FSDP" and plugin is not None and kind != "FULL_STATE_DICT":
        raise UserError(f"the accelerate config's fsdp_state_dict_type is {kind}, with which the trainer saves no "
                        "adapter file; set fsdp_state_dict_type: FULL_STATE_DICT (recipes/accelerate/fsdp.yaml)")


def train(trainer: Any, checkpoint: str | None, stage: str) -> str | None:
    """Train, resuming from `checkpoint`; returns the checkpoint itself when it already holds the last step.

    A run killed after its last checkpoint (during the final save) resumes
    with nothing left to train, and transformers would still take one more
    step when the last step falls inside an epoch. The finished checkpoint's
    own adapter and state are used instead. Where the recipe asked to compile
    the training step (`torch_compile`) and torch's compiler fails on this
    machine, one line says so at the first step. A SIGTERM or Ctrl-C saves the
    step it ends and stops the stage unfinished (`stopping.StopOnSignal`).
    """
    check_whole_saves(trainer)
    if checkpoint is not None:
        check_checkpoint_sharding(checkpoint, sharding(trainer.accelerator), trainer.accelerator.num_processes)
    if checkpoint is not None and trainer.args.max_steps > 0:
        from transformers import TrainerState

        state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        if state.global_step >= trainer.args.max_steps:
            log.info("--resume: %s is at the last step (%d); nothing left to train", checkpoint, state.global_step)
            trainer.state = state
            return checkpoint
    from gsm8k_tr.train.stopping import StopOnSignal

    stopper = StopOnSignal(trainer.accelerator)
    trainer.add_callback(stopper)
    try:
        with stopper, full_disk_reported(Path(trainer.args.output_dir), RESUME):
            trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as error:
        memory = ran_out(error, trainer, stage)  # the newest checkpoint is looked up only then
        if memory is not None:
            raise memory from error
        reason = compiler_failure(error) if getattr(trainer.args, "torch_compile", False) else None
        if reason is None:
            raise
        raise UserError(f"{stage}.torch_compile: torch's compiler failed on this machine ({reason}); set "
                        f"{stage}.torch_compile=false and run again with --resume") from error
    stopper.raise_if_stopped(trainer.args.output_dir)
    return None


def finish(trainer: Any, folder: Path, recipe: Recipe, stage: str, info: dict[str, Any],
           base: str | None = None, final_checkpoint: str | None = None) -> dict[str, Any]:
    """Save the stage outputs; every process gets the manifest.

    Under FSDP or DeepSpeed ZeRO-3 each process holds a piece of the weights,
    so every process takes part in `trainer.save_model`, which gathers the
    full adapter and writes it from the main process (or the adapter comes
    from `final_checkpoint`: a finished checkpoint, see `train`, or GRPO's
    kept held-out check, `held_out.HeldOutAccuracy.kept`). The main process
    then merges that adapter into the base model (`base`: a folder, or None
    for the recipe's model) loaded afresh, and writes the rest.
    """
    from gsm8k_tr.train.artifacts import ADAPTER_STAGING, save_stage

    accelerator = trainer.accelerator
    # The type the Accelerator trained with (FSDP, DEEPSPEED, ...), not the one PartialState reports.
    info = {**info, "processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1]}
    log.info("process %d of %d finished %s at step %d", accelerator.process_index, accelerator.num_processes, stage,
             trainer.state.global_step)
    staging = folder / ADAPTER_STAGING
    with full_disk_reported(folder, RESUME):
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            if final_checkpoint is not None:
                staging.mkdir()
                for name in ("adapter_model.safetensors", "adapter_config.json"):
                    if (Path(final_checkpoint) / name).is_file():  # else `save_stage` says why there are no weights
                        shutil.copy2(Path(final_checkpoint) / name, staging / name)
        accelerator.wait_for_everyone()
        if final_checkpoint is None:
            trainer.save_model(str(staging))
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_stage(trainer, folder, recipe, stage, info, staging, base)
            log.info("saved %s outputs to %s (main process only)", stage, folder)
    accelerator.wait_for_everyone()
    return read_manifest(folder)


def best_model(trainer: Any) -> dict[str, Any]:
    """Where a stage that evaluates stopped and which checkpoint it kept (empty when it does not evaluate)."""
    args, state = trainer.args, trainer.state
    if str(args.eval_strategy).rsplit(".", 1)[-1].lower() == "no":
        return {}
    return {"metric_for_best_model": args.metric_for_best_model, "best_metric": state.best_metric,
            "best_step": state.best_global_step, "stopped_at_step": state.global_step,
            "stopped_early": 0 < args.max_steps and state.global_step < args.max_steps,
            "loaded_best": bool(args.load_best_model_at_end and state.best_model_checkpoint)}


def stage_info(recipe: Recipe, stop: str, data_dir: Path, counts: dict[str, int], started: float,
               checkpoint: str | None, config: Any, **extra: Any) -> dict[str, Any]:
    """The manifest fields both stages record (`config`: the TRL config the stage trained with)."""
    import time

    from gsm8k_tr.data.splits import fingerprint
    from gsm8k_tr.modeling import hub_commit
    from gsm8k_tr.placement import compact_scoring, device_name

    return {"base_model": recipe.model.name_or_path, "base_model_revision": hub_commit(recipe.model), **extra,
            "stop_token": stop,
            "prompt": recipe_dict(recipe)["prompt"], "data_dir": str(data_dir), "data_fingerprint": fingerprint(data_dir),
            "data_counts": counts, "device": device_name(),
            "precision": "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32",
            "lm_head_positions": "scored" if compact_scoring(config.device) else "all",
            "pad_to_multiple_of": getattr(config, "pad_to_multiple_of", None),
            "train_seconds": time.perf_counter() - started,
            "resumed_from": checkpoint}
