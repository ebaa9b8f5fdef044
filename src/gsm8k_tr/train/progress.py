"""Console progress: a bar, and one short line per logging step instead of the full metrics dict.

TRL's GRPO logs some thirty metrics each step; the console shows the ones a
user watches (loss, each reward, accuracy, length, clipped ratio, where the
time went). Everything still goes to TensorBoard and the log history.
"""

from __future__ import annotations

from typing import Any

from transformers import ProgressCallback

SHOWN = ("loss", "train_loss", "reward", "accuracy", "completions/mean_length", "completions/clipped_ratio",
         "frac_reward_zero_std", "frac_correctness_zero_std", "learning_rate", "grad_norm")
HELD_OUT = ("eval/accuracy", "eval/strict_format_rate", "eval_accuracy", "eval_strict_format_rate", "eval_loss")
# Shares of prompt groups with no advantage: by the total reward (TRL's) and by correctness alone.
LABELS = {"frac_reward_zero_std": "zero_std", "frac_correctness_zero_std": "zero_std_correct"}


def summary(logs: dict[str, Any]) -> str:
    """The console line for one log entry.

    >>> summary({"loss": 0.51234, "rewards/correctness_reward_func/mean": 1.5, "step_time": 2.0, "time/generation_s": 1.5})
    'loss=0.5123 correctness=1.5 gen=75% step=2.00s'
    >>> summary({"eval_loss": 0.8, "eval_accuracy": 0.5, "eval_runtime": 3.0})
    'held-out accuracy=0.500 held-out loss=0.800'
    """
    parts = [f"{LABELS.get(key, key.split('/')[-1])}={value:.4g}" for key in SHOWN
             if isinstance(value := logs.get(key), (int, float))]
    parts += [f"held-out {key.split('/')[-1].removeprefix('eval_')}={value:.3f}" for key in HELD_OUT
              if isinstance(value := logs.get(key), (int, float))]
    for key, value in logs.items():
        if key.startswith("rewards/") and key.endswith("/mean") and isinstance(value, (int, float)):
            parts.append(f"{key.split('/')[1].removesuffix('_reward_func')}={value:.4g}")
    step, generation = logs.get("step_time"), logs.get("time/generation_s")
    if isinstance(step, (int, float)) and step > 0:
        if isinstance(generation, (int, float)):
            parts.append(f"gen={min(generation / step, 1.0):.0%}")
        parts.append(f"step={step:.2f}s")
    return " ".join(parts)


class CompactProgress(ProgressCallback):
    """transformers' progress bar, printing `summary(logs)` under it (no second bar for SFT's evaluations)."""

    def on_prediction_step(self, *args: Any, **kwargs: Any) -> None:
        pass  # an evaluation takes seconds; its own bar would break the training bar's line

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            line = summary(logs)
            if line:
                self.training_bar.write(f"step {state.global_step}: {line}")


def use_compact_progress(trainer: Any) -> None:
    """Swap the trainer's progress printer for CompactProgress."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgress())
