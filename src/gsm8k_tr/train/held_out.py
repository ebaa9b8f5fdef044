"""The in-training held-out check: greedy answers graded as `evaluate` does, during SFT's evaluations and every
`eval.every_steps` GRPO steps; with `eval.grpo_keep_best`, GRPO's best check is what the stage saves."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from gsm8k_tr.config import Recipe
from gsm8k_tr.infer.evaluate import evaluate
from gsm8k_tr.outputs import read_object
from gsm8k_tr.placement import COMPUTE_DTYPES
from gsm8k_tr.processes import sharding
from gsm8k_tr.train.artifacts import RESUME_ONLY
from gsm8k_tr.train.rollouts import generating_policy

log = logging.getLogger(__name__)

BEST = "best-held-out"  # in the stage's checkpoints folder: the best check's adapter weights and best.json
_REMEDY = f"remove the {BEST} folder: the run then keeps the best of the checks it makes from now on"


def is_sharded(accelerator: Any) -> bool:
    """Whether the model's weights are split across processes (FSDP, or DeepSpeed ZeRO-3)."""
    return sharding(accelerator) in ("FSDP", "DEEPSPEED_ZERO3")


class HeldOutCheck:
    """Greedy answers to a held-out slice, graded as `evaluate` does, on the model being trained.

    TRL's trainers have no task metric: SFT's loss and GRPO's rewards are
    measured on training text. Every process answers its share of the
    questions on the training model, under the trainer's mixed precision;
    when the weights are sharded, generation keeps the processes in step
    (`synced_gpus`), so no process waits for a gather that never comes.
    """

    KEYS = ("accuracy", "flexible_accuracy", "strict_format_rate", "mean_completion_tokens", "truncated_rate")

    def __init__(self, trainer: Any, rows: list[dict[str, Any]], recipe: Recipe, merge: bool = False) -> None:
        self.trainer, self.rows, self.recipe, self.merge = trainer, rows, recipe, merge
        accelerator = trainer.accelerator
        precision = {"bf16": "bfloat16", "fp16": "float16"}.get(str(accelerator.mixed_precision), "float32")
        self.where = {"device": str(accelerator.device), "dtype": precision, "split": recipe.eval.held_out_split,
                      "questions": len(rows)}

    def measure(self) -> dict[str, float]:
        """The held-out metrics now (every process gets them); the model's train/eval mode is kept."""
        accelerator = self.trainer.accelerator
        model = accelerator.unwrap_model(self.trainer.model)
        training_mode = model.training
        with generating_policy(model, accelerator, self.merge, COMPUTE_DTYPES.get(str(accelerator.mixed_precision))):
            result, _ = evaluate(model, self.trainer.processing_class, self.rows, self.recipe,
                                 synced_gpus=is_sharded(accelerator))
        model.train(training_mode)
        return {key: result[key] for key in self.KEYS}


class HeldOutAccuracy(TrainerCallback):
    """GRPO: every `eval.every_steps` steps, log the held-out metrics as `eval/…` (console, TensorBoard, history).

    With `keep_best` (a folder: `checkpoints/best-held-out`), the start is
    checked too (step 0), the last step as well when it falls between checks,
    and the adapter of each check at least as accurate as the best so far
    (a tie goes to the later, more trained one) is written there, so that a
    resumed run still knows it; the stage saves that folder's adapter in place
    of the model's (`kept`). The weights are the LoRA adapter's only, a few
    megabytes, gathered from every process where the weights are split.
    """

    def __init__(self, trainer: Any, rows: list[dict[str, Any]], recipe: Recipe, merge: bool = False,
                 keep_best: Path | None = None) -> None:
        self.check = HeldOutCheck(trainer, rows, recipe, merge)
        self.trainer, self.recipe, self.where = trainer, recipe, self.check.where
        self.keep_best = keep_best
        self.measured: dict[int, float] = {}  # step → held-out accuracy, this process's run
        record = keep_best / "best.json" if keep_best else None
        self.best: dict[str, Any] | None = read_object(record, _REMEDY) if record and record.is_file() else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.best is not None and self.best["step"] > state.global_step:
            # Checked after the checkpoint this run resumes from (the kill came before that step's checkpoint): its
            # weights belong to steps this run trains again. Forgotten, with the checks before it.
            log.warning("grpo: the best held-out check so far (step %d) came after the checkpoint this run resumes "
                        "from (step %d); it is forgotten", self.best["step"], state.global_step)
            self.best = None
            if state.is_world_process_zero:
                shutil.rmtree(self.keep_best)
        if self.keep_best and state.global_step == 0:  # the start itself is a candidate: GRPO may not beat it
            self._measure(args, state, control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.recipe.eval.every_steps
        if not every or state.global_step % every:
            return
        self._measure(args, state, control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.keep_best and state.global_step not in self.measured:  # the last step, between checks
            self._measure(args, state, control)

    def _measure(self, args: Any, state: Any, control: Any) -> None:
        result = self.check.measure()
        self.measured[state.global_step] = result["accuracy"]
        if state.is_world_process_zero:
            logs = {f"eval/{key}": value for key, value in result.items()}
            # Straight to the log history and the loggers: GRPOTrainer.log would flush the step's training metrics.
            state.log_history.append({**logs, "step": state.global_step})
            should_log = control.should_log  # on_log clears it, which would drop this step's training log
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log
        # Every process decides alike, and so keeps the same best: each has the result, and each read the best so far
        # from disk when the run began.
        if self.keep_best and (self.best is None or result["accuracy"] >= self.best["accuracy"]):
            self.best = {"step": state.global_step, "accuracy": result["accuracy"]}
            self._write_best()
        self.trainer.accelerator.wait_for_everyone()

    def _write_best(self) -> None:
        """The adapter as it is now, written to `keep_best`; every process calls it.

        It is written as the stage's final adapter is: `trainer.save_model`,
        in which every process takes part where the weights are split (FSDP's
        full state dict, DeepSpeed ZeRO-3's consolidated adapter) and the main
        process writes. A kill leaves the previous best, the new one or
        (between the last two lines) none, and then the resumed run chooses
        among its own checks; never half of one.
        """
        accelerator = self.trainer.accelerator
        staging = self.keep_best.with_name(self.keep_best.name + ".saving")
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        self.trainer.save_model(str(staging))
        if not accelerator.is_main_process:
            return
        for name in RESUME_ONLY:  # the trainer's pickled arguments: not part of a kept adapter
            (staging / name).unlink(missing_ok=True)
        (staging / "best.json").write_text(json.dumps(self.best))
        shutil.rmtree(self.keep_best, ignore_errors=True)
        staging.rename(self.keep_best)

    def kept(self) -> tuple[dict[str, Any] | None, str | None]:
        """What was kept, for the manifest, and the folder whose adapter the stage saves in place of the model's
        (None when the model's own, the last step's, is the best). Nothing is loaded into the model: under FSDP
        its weights are sharded, and the saved adapter is all the stage's outputs are built from."""
        if not self.keep_best or self.best is None:
            return None, None
        last = max(self.measured) if self.measured else None
        kept = {"kept_step": self.best["step"], "kept_held_out_accuracy": self.best["accuracy"],
                "last_step": last, "last_held_out_accuracy": self.measured.get(last) if last is not None else None}
        if self.best["step"] == last:
            return kept, None
        config = self.keep_best / "adapter_config.json"
        if not config.is_file() and self.trainer.accelerator.is_main_process:  # kept by a version that wrote weights only
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            model.peft_config[model.active_adapter].save_pretrained(str(self.keep_best))
        log.info("grpo: keeping step %d (held-out accuracy %.3f) over the last step %s (%s)", self.best["step"],
                 self.best["accuracy"], last, kept["last_held_out_accuracy"])
        return kept, str(self.keep_best)
