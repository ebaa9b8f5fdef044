"""The in-training held-out check: every `eval.every_steps` GRPO steps, greedy answers graded as `evaluate` does."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from gsm8k_tr.config import Recipe
from gsm8k_tr.infer.evaluate import evaluate


class HeldOutAccuracy(TrainerCallback):
    """Every `eval.every_steps` steps, grade greedy answers on a held-out slice, as `evaluate` does.

    TRL's GRPO has no task metric; the training reward is measured on sampled
    answers to training prompts. This logs `eval/accuracy` and the format
    rate to the console, TensorBoard and the log history while the run goes
    on. It runs on the main process, on the unwrapped model.
    """

    KEYS = ("accuracy", "flexible_accuracy", "strict_format_rate", "mean_completion_tokens", "truncated_rate")

    def __init__(self, trainer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> None:
        self.trainer, self.rows, self.recipe = trainer, rows, recipe

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.recipe.eval.every_steps
        if not every or state.global_step % every:
            return
        if state.is_world_process_zero:
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            training_mode = model.training
            result, _ = evaluate(model, self.trainer.processing_class, self.rows, self.recipe)
            model.train(training_mode)
            logs = {f"eval/{key}": result[key] for key in self.KEYS}
            # Straight to the log history and the loggers: GRPOTrainer.log would flush the step's training metrics.
            state.log_history.append({**logs, "step": state.global_step})
            should_log = control.should_log  # on_log clears it, which would drop this step's training log
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log
        self.trainer.accelerator.wait_for_everyone()
