"""The console progress and the step times SFT's logs carry."""

from __future__ import annotations

import pytest

from gsm8k_tr.train import progress


def test_step_times_leave_out_evaluations_and_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    now = iter([0.0, 1.0, 31.0, 32.5, 33.0, 34.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(now))
    clock = progress.StepClock()
    clock.on_train_begin()  # 0
    clock.on_step_end()  # 1: a 1 s step
    clock.on_evaluate()  # 31: a 30 s evaluation after it
    clock.on_step_end()  # 32.5: a 1.5 s step
    assert clock.mean() == 1.25 and clock.mean() is None  # each call starts afresh
    clock.on_save()  # 33
    clock.on_step_end()  # 34
    assert clock.mean() == 1.0


def test_a_timed_trainer_adds_step_time_to_training_logs_only() -> None:
    seen = []

    class Base:
        def log(self, logs, start_time=None):
            seen.append(logs)

    class Trainer(progress.TimedSteps, Base):
        pass

    trainer = Trainer()
    trainer.clock = progress.StepClock()
    trainer.clock.seconds = [2.0, 4.0]
    trainer.log({"eval_loss": 1.0})  # an evaluation's log: no step time, and the steps wait for the training log
    trainer.log({"loss": 0.5, "grad_norm": 1.0})
    trainer.log({"loss": 0.4})  # no step ended since the last log
    assert seen == [{"eval_loss": 1.0}, {"loss": 0.5, "grad_norm": 1.0, "step_time": 3.0}, {"loss": 0.4}]
    assert progress.summary(seen[1]) == "loss=0.5 grad_norm=1 step=3.00s"
