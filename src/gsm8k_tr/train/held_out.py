"""The in-training held-out check: greedy answers graded as `evaluate` does, during SFT's evaluations and every
`eval.every_steps` GRPO steps."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from gsm8k_tr.config import Recipe
from gsm8k_tr.infer.evaluate import evaluate
from gsm8k_tr.placement import COMPUTE_DTYPES
from gsm8k_tr.train.rollouts import generating_policy


def is_sharded(accelerator: Any) -> bool:
    """Whether the model's weights are split across processes (FSDP, or DeepSpeed ZeRO-3)."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP":
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return kind == "DEEPSPEED" and plugin is not None and getattr(plugin, "zero_stage", 0) == 3


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
    """GRPO: every `eval.every_steps` steps, log the held-out metrics as `eval/…` (console, TensorBoard, history)."""

    def __init__(self, trainer: Any, rows: list[dict[str, Any]], recipe: Recipe, merge: bool = False) -> None:
        self.check = HeldOutCheck(trainer, rows, recipe, merge)
        self.trainer, self.recipe, self.where = trainer, recipe, self.check.where

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.recipe.eval.every_steps
        if not every or state.global_step % every:
            return
        result = self.check.measure()
        if state.is_world_process_zero:
            logs = {f"eval/{key}": value for key, value in result.items()}
            # Straight to the log history and the loggers: GRPOTrainer.log would flush the step's training metrics.
            state.log_history.append({**logs, "step": state.global_step})
            should_log = control.should_log  # on_log clears it, which would drop this step's training log
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log
        self.trainer.accelerator.wait_for_everyone()
