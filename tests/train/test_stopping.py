"""A stop asked for during training: at the end of the step, on every process of a launch, never at the last step;
a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

from gsm8k_tr.errors import Stopped
from gsm8k_tr.train.stopping import StopOnSignal


class Launch:
    """accelerate's trigger across a launch of `processes`: `check_trigger` is an all-reduce, so at each step's check
    every process sees whether any one had set its flag."""

    def __init__(self, processes: int) -> None:
        self.flags, self.rounds, self.checks = [0] * processes, {}, 0

    def process(self, index: int) -> SimpleNamespace:
        launch, seen = self, []

        def set_trigger() -> None:
            launch.flags[index] = 1

        def check_trigger() -> bool:
            launch.checks += 1
            asked = launch.rounds.setdefault(len(seen), any(launch.flags))
            seen.append(asked)
            launch.flags[index] = 0
            return asked

        return SimpleNamespace(num_processes=len(self.flags), set_trigger=set_trigger, check_trigger=check_trigger)


def _step(stopper: StopOnSignal, step: int, last: int = 100) -> SimpleNamespace:
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    stopper.on_step_end(None, SimpleNamespace(global_step=step, max_steps=last), control)
    return control


def test_a_signal_saves_and_stops_at_the_end_of_the_step() -> None:
    with StopOnSignal(Launch(1).process(0)) as stopper:
        assert signal.getsignal(signal.SIGTERM) == stopper._receive
        assert not _step(stopper, 4).should_training_stop  # nothing asked yet
        stopper._receive(signal.SIGTERM, None)
        stopper._receive(signal.SIGTERM, None)  # a scheduler that repeats itself changes nothing
        control = _step(stopper, 5)
    assert control.should_save and control.should_training_stop and stopper.stopped == (signal.SIGTERM, 5)
    assert signal.getsignal(signal.SIGTERM) is not stopper._receive  # the handlers before training are back
    with pytest.raises(Stopped, match=r"by SIGTERM at step 5; its checkpoint is saved \(ck/checkpoint-5\)") as raised:
        stopper.raise_if_stopped("ck")
    assert raised.value.code == 143


def test_a_second_ctrl_c_stops_at_once() -> None:
    with StopOnSignal(Launch(1).process(0)) as stopper:
        stopper._receive(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            stopper._receive(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is not stopper._receive  # restored before raising


def test_at_the_last_step_the_stage_just_finishes() -> None:
    with StopOnSignal(Launch(1).process(0)) as stopper:
        stopper._receive(signal.SIGINT, None)
        control = _step(stopper, 100, last=100)
    assert not control.should_training_stop and stopper.stopped is None
    stopper.raise_if_stopped("ck")  # nothing to raise


@pytest.mark.parametrize("processes", [1, 2])
def test_one_process_of_a_launch_stops_them_all_at_the_same_step(processes: int) -> None:
    launch = Launch(processes)
    told, other = StopOnSignal(launch.process(0)), StopOnSignal(launch.process(processes - 1))
    told._receive(signal.SIGTERM, None)
    assert _step(told, 7).should_training_stop  # the process the signal reached shares it ...
    assert _step(other, 7).should_training_stop is (processes > 1)  # ... and the other sees it at the same step
    assert launch.checks == (2 if processes > 1 else 0)  # one process alone asks nothing of accelerate
