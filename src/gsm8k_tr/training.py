"""What the SFT and GRPO stages share: the stage folder, TRL configs from the recipe, checkpoints.

Stage layout (`{output_dir}/{stage}/`):
    checkpoints/checkpoint-N/   trainer checkpoints (trainer_state.json, adapter, optimizer), written atomically
    adapter/                    the LoRA adapter (safetensors)
    merged/                     base + adapter merged (safetensors) with its tokenizer
    recipe.yaml manifest.json log_history.json README.md
    tensorboard/                TensorBoard logs
`manifest.json` is written last: its presence means the stage finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import typing
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe, coerce
from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STAGING = ".saving"
# Batch sizes, lengths and step counts below 1 (max_steps may be -1: train by epochs). TRL accepts some zeros and
# fails later, and divides by others before saying anything, so they are checked before the config is built.
AT_LEAST_ONE = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                "max_completion_length", "logging_steps", "save_steps", "max_steps")
# TRL options that hold credentials → the environment variable to use instead.
SECRET_KEYS = {"hub_token": "HF_TOKEN"}
# Test hook: `kill-during-save` or `kill-during-merge` makes the process SIGKILL itself at that point, so the
# reliability tests can check that a kill there loses nothing. Unset in normal use.
FAULT_ENV = "GSM8K_TR_FAULT"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
# Deprecated TrainingArguments names: a recipe that sets the old one overrides our default for the new one.
ALIASES = {"gradient_checkpointing": "activation_checkpointing",
           "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def stage_dir(recipe: Recipe, stage: str) -> Path:
    """`{output_dir}/{stage}`."""
    return Path(recipe.output_dir) / stage


def is_finished(folder: Path) -> bool:
    """A stage output whose final save completed."""
    return (folder / "manifest.json").is_file() and (folder / "merged" / "config.json").is_file()


def begin(recipe: Recipe, stage: str, resume: bool, overwrite: bool) -> tuple[Path, str | None, bool]:
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
    # Only files count: a run that stopped at a recipe error leaves at most empty folders.
    has_files = folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
    if has_files and resume and is_finished(folder):
        return folder, None, True
    if has_files and not resume and not overwrite:
        raise UserError(f"{folder} already holds a {stage} run; pass --resume to continue it or --overwrite to start again")
    state = process_state()
    check_devices(state)
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
        log.info("--resume: resuming from %s", checkpoint)
    return folder, checkpoint, False


def cpu_processes_without_gpus() -> None:
    """Tell accelerate that a multi-process launch on a machine without GPUs runs on CPU (gloo).

    Otherwise accelerate treats the processes as unrelated: each would think
    it is the main process and write the same files. It must run before
    anything creates accelerate's shared state (importing TRL does), so the
    CLI calls it first.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"


def process_state() -> Any:
    """accelerate's shared process state."""
    from accelerate import PartialState

    cpu_processes_without_gpus()
    return PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))


def check_devices(state: Any) -> None:
    """An accelerate launch with more processes per machine than GPUs fails with one line, before any work.

    Without this, rank k > GPUs dies deep in CUDA with "invalid device ordinal"
    while the others hang waiting for it.
    """
    import torch

    kind = str(state.distributed_type).rsplit(".", 1)[-1]
    if kind in ("MULTI_GPU", "DEEPSPEED", "FSDP") and state.num_processes > 1 and state.device.type != "cpu":
        gpus = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        if local > gpus:
            raise UserError(f"accelerate started {local} processes on this machine but it has {gpus} GPU(s); "
                            f"launch with --num_processes {gpus}, or run without accelerate launch on one GPU")
    elif kind in ("DEEPSPEED", "FSDP") and state.device.type == "cpu":
        raise UserError(f"the accelerate config uses {kind}, which needs CUDA GPUs; use recipes/accelerate/ddp.yaml "
                        "to run several CPU processes")
    if state.num_processes > 1:
        log.info("process %d of %d (%s) on %s", state.process_index, state.num_processes, kind, state.device)


def checkpoint_complete(path: Path) -> bool:
    """A checkpoint with parseable trainer state and weights (older, non-atomic saves can be half-written)."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any((path / name).is_file() and (path / name).stat().st_size > 0 for name in WEIGHT_FILES)


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete `checkpoint-N` in `folder`; incomplete ones are skipped with a warning."""
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        name, _, step = path.name.partition("-")
        if name == "checkpoint" and step.isdigit() and path.is_dir():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        if checkpoint_complete(path):
            return str(path)
        log.warning("skipping %s: it is incomplete (a save was interrupted)", path)
    return None


def _field_types(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # a library annotation we cannot resolve: check names only
        return {}


def trl_config(config_cls: type, section: str, values: dict[str, Any], defaults: dict[str, Any],
               forced: dict[str, tuple[Any, str]]) -> Any:
    """Build TRL's `config_cls` from recipe `values` over our `defaults`.

    Keys must be fields of the TRL class; `forced` keys are set by gsm8k-tr
    (value, why) and may not appear in the recipe.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    hints = _field_types(config_cls)
    values = dict(values)
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown recipe key '{section}.{key}': not an option of TRL's {config_cls.__name__}")
        if key in forced:
            raise UserError(f"recipe key '{section}.{key}' is set by gsm8k-tr ({forced[key][1]}); remove it")
        if key in SECRET_KEYS and value:
            raise UserError(f"recipe key '{section}.{key}' is a secret, and recipes are saved with every output; "
                            f"remove it and set {SECRET_KEYS[key]} in the environment instead")
        if key in AT_LEAST_ONE and isinstance(value, (int, float)) and value < 1 and (key, value) != ("max_steps", -1):
            raise UserError(f"recipe key '{section}.{key}' must be at least 1, got {value}")
        if key in hints and value is not None:
            try:
                checked = coerce(value, hints[key], f"{section}.{key}")
            except TypeError:  # Literal and other annotations isinstance cannot check
                continue
            if isinstance(value, str) and not isinstance(checked, str):
                values[key] = checked  # `5e-5` read as a string by YAML
    defaults = {k: v for k, v in defaults.items() if not any(ALIASES.get(u) == k for u in values)}
    kwargs = {**defaults, **values, **{k: v for k, (v, _) in forced.items()}}
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"recipe section '{section}': {first}") from None


def check_report_to(section: str, config: Any) -> None:
    """Each `report_to` backend must be installed (transformers would fail later with a traceback).

    Nothing logs in here: wandb or trackio start only when training starts,
    with credentials from their own environment variables.
    """
    import importlib.util

    for backend in config.report_to or []:
        module = {"tensorboard": "tensorboard"}.get(backend, backend)
        if backend not in ("none", "all") and importlib.util.find_spec(module) is None:
            raise UserError(f"recipe key '{section}.report_to' names {backend!r}, which is not installed; "
                            f"pip install {backend}, or use tensorboard (the default)")


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is written to a staging folder, then renamed into place.

    transformers writes `checkpoint-N` in place, so a kill mid-save leaves a
    folder that `--resume` would pick up. Here a kill leaves only the staging
    folder, which the next save clears.
    """

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        root = self.args.output_dir
        staging = os.path.join(root, STAGING)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = root
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            final = os.path.join(root, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            inject_fault("kill-during-save")  # the checkpoint is written but not yet in place
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=root, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()


class GuardNonFinite:
    """Trainer mixin: a NaN or infinite loss or gradient never reaches the weights.

    `on_non_finite` (the recipe key) says what happens instead. `stop`, the
    default, ends the run with one line naming the last good checkpoint:
    training on would write NaN weights into the next checkpoint and the
    final model. `skip` drops that step's gradients before the optimizer
    runs, so AdamW leaves the weights and its moments as they were (zeroed
    gradients would still move them through momentum); each skip is logged
    and the running count goes into the log history as `skipped_steps`,
    which a resumed run continues from. DeepSpeed keeps gradients to itself,
    so under it only the loss is checked.
    """

    on_non_finite = "stop"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped_steps: int | None = None  # read back from the log history when first needed
        self.add_callback(_gradient_check(self))

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        import math

        loss = super().training_step(*args, **kwargs)
        value = float(loss.detach())
        if not math.isfinite(value) and self.on_non_finite == "stop":
            self._stop(f"the training loss became {value}")
        return loss  # under `skip`, its gradients are dropped before the optimizer step

    def check_gradients(self) -> None:
        """Before each optimizer step: stop, or drop every gradient, if any of them is not finite."""
        import torch

        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))
        bad = (~torch.isfinite(norm)).float()
        if self.accelerator.num_processes > 1:  # sharded gradients (FSDP): every rank must decide the same
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bad.item():
            return
        if self.on_non_finite == "stop":
            self._stop(f"the gradient norm became {float(norm)}")
        for p in self.model.parameters():
            p.grad = None
        self.skipped_steps = self._skipped_so_far() + 1
        log.warning("step %d: the loss or gradient norm is not finite (%s); skipped this optimizer step "
                    "(on_non_finite: skip; %d skipped so far)", self.state.global_step + 1, float(norm),
                    self.skipped_steps)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.on_non_finite == "skip":
            logs = {**logs, "skipped_steps": self._skipped_so_far()}
        super().log(logs, *args, **kwargs)

    def _skipped_so_far(self) -> int:
        if self.skipped_steps is None:  # a resumed run continues the count its checkpoint logged
            self.skipped_steps = max((int(h.get("skipped_steps", 0)) for h in self.state.log_history), default=0)
        return self.skipped_steps

    def _stop(self, what: str) -> None:
        good = last_checkpoint(Path(self.args.output_dir))
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
        raise UserError(f"{what} at step {self.state.global_step + 1}; {where}. Lower the learning rate (or check "
                        "the data) and rerun with --resume, or set on_non_finite: skip in the recipe")


def _gradient_check(trainer: GuardNonFinite) -> Any:
    """A callback at the one point transformers offers before `optimizer.step()` (imported late: see cli)."""
    from transformers import TrainerCallback

    class CheckGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trainer.check_gradients()

    return CheckGradients()


def inject_fault(point: str) -> None:
    """SIGKILL this process at `point` when the test hook names it (see FAULT_ENV)."""
    if os.environ.get(FAULT_ENV) == point:
        import signal

        log.warning("%s=%s: killing this process", FAULT_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


def estimated_bytes(model: Any, save_total_limit: int | None) -> int:
    """Disk a stage needs: the merged model, the adapter, and the checkpoints kept (plus one being written).

    A checkpoint holds the trainable weights and AdamW's two moments (3x),
    with the scheduler, RNG and trainer state as small change; sizes are fp32.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    checkpoints = (save_total_limit or 3) + 1
    return 4 * (total + trainable + checkpoints * 3 * trainable) + 16 * 2**20


def check_disk_space(folder: Path, model: Any, save_total_limit: int | None) -> None:
    """Refuse to start a stage whose outputs will not fit on the disk."""
    need = estimated_bytes(model, save_total_limit)
    free = shutil.disk_usage(folder).free
    log.info("disk: about %.0f MiB needed for checkpoints and outputs, %.0f MiB free", need / 2**20, free / 2**20)
    if free < need:
        raise UserError(f"{folder} has {free / 2**20:.0f} MiB free but this stage needs about {need / 2**20:.0f} MiB "
                        "(checkpoints, adapter, merged model); free space, lower save_total_limit, or choose "
                        "another output_dir")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a finished stage."""
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def prepared_data(recipe: Recipe) -> Path:
    """`data.ensure_prepared`, done by the main process while the others wait."""
    from gsm8k_tr.data import ensure_prepared

    with process_state().main_process_first():
        return ensure_prepared(recipe)


def load_base(recipe: Recipe, path: str | None = None) -> tuple[Any, Any]:
    """Tokenizer and model, the main process first (it may build a `builtin:` model)."""
    from gsm8k_tr.modeling import load_model, load_tokenizer

    with process_state().main_process_first():
        return load_tokenizer(recipe.model, path), load_model(recipe.model, path)


def log_to(folder: Path) -> None:
    """Send this stage's TensorBoard events to `{stage}/tensorboard`."""
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder / "tensorboard")


def finish(trainer: Any, folder: Path, recipe: Recipe, stage: str, info: dict[str, Any]) -> dict[str, Any]:
    """Save the stage outputs from the main process; every process gets the manifest."""
    from gsm8k_tr.artifacts import save_stage

    accelerator = trainer.accelerator
    info = {**info, "processes": accelerator.num_processes}
    log.info("process %d of %d finished %s at step %d", accelerator.process_index, accelerator.num_processes, stage,
             trainer.state.global_step)
    if accelerator.is_main_process:
        save_stage(trainer, folder, recipe, stage, info)
        log.info("saved %s outputs to %s (main process only)", stage, folder)
    accelerator.wait_for_everyone()
    return read_manifest(folder)


def stage_info(recipe: Recipe, stop: str, data_dir: Path, counts: dict[str, int], started: float,
               checkpoint: str | None, **extra: Any) -> dict[str, Any]:
    """The manifest fields both stages record."""
    import time

    from gsm8k_tr.config import recipe_dict
    from gsm8k_tr.data import fingerprint
    from gsm8k_tr.modeling import device_name

    return {"base_model": recipe.model.name_or_path, **extra, "stop_token": stop,
            "prompt": recipe_dict(recipe)["prompt"], "data_dir": str(data_dir), "data_fingerprint": fingerprint(data_dir),
            "data_counts": counts, "device": device_name(), "train_seconds": time.perf_counter() - started,
            "resumed_from": checkpoint}
