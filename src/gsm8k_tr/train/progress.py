"""Console progress: a bar, and one short line per logging step instead of the full metrics dict.

TRL's GRPO logs some thirty metrics each step; the console shows the ones a
user watches (loss, each reward, accuracy, length, clipped ratio, where the
time went). Everything still goes to TensorBoard and the log history.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import ProgressCallback, TrainerCallback

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


class StepClock(TrainerCallback):
    """Wall seconds of each optimizer step, from the end of the one before (or the start of training): its batches
    fetched, forward, backward, update and log. Evaluations and checkpoints, which run between steps, are left out."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.seconds: list[float] = []

    def _restart(self, *args: Any, **kwargs: Any) -> None:
        self.last = time.perf_counter()

    on_train_begin = on_evaluate = on_save = _restart

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.seconds.append(now - self.last)
        self.last = now

    def mean(self) -> float | None:
        """The mean step since the last call, and start afresh; None when no step ended since."""
        taken, self.seconds = self.seconds, []
        return sum(taken) / len(taken) if taken else None


class TimedSteps:
    """Adds `step_time` to each training log that lacks one (SFT's; TRL's GRPO logs its own): the mean seconds of
    the optimizer steps since the last log, for the console line and the log history (with `num_tokens`: tokens
    per second). Timed on the host, which runs at most a step ahead: each step reads its loss back."""

    clock: StepClock | None = None

    def log(self, logs: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if self.clock is not None and "loss" in logs and "step_time" not in logs:
            mean = self.clock.mean()
            if mean is not None:
                logs = {**logs, "step_time": mean}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def use_compact_progress(trainer: Any) -> None:
    """Swap the trainer's progress printer for CompactProgress; a `TimedSteps` trainer gets its clock."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgress())
    if isinstance(trainer, TimedSteps):
        trainer.clock = StepClock()
        trainer.add_callback(trainer.clock)
