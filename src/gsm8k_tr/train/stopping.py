"""A stop asked for during training (a scheduler's SIGTERM, a first Ctrl-C): the step ends, a checkpoint is saved at
it, and the stage stops unfinished, so `--resume` loses nothing. A second Ctrl-C stops at once.

Without it a Ctrl-C or a preemption lost every step since the last periodic
checkpoint (`save_steps`: 100 GRPO steps in the real recipe, 5 to 20 minutes
on one GPU). transformers' own `enable_jit_checkpoint` answers SIGTERM only,
3 s late, and each process of a launch alone, so two processes can stop at
different steps and wait on each other; and its `train()` then returns as if
training had ended, so the stage would save its outputs as finished.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from transformers import TrainerCallback

from gsm8k_tr.errors import Stopped

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    """Trainer callback: after a SIGINT or SIGTERM, save at the end of the step and stop; `stopped` then says where.

    Every process of a launch stops at the same step: the request is shared
    at each step's end (`Accelerator.check_trigger`, one small all-reduce),
    so it is enough for one process to get the signal.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.received: int | None = None
        self.stopped: tuple[signal.Signals, int] | None = None  # the signal and the step saved
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python takes signals in the main thread only
            self._previous = {number: signal.signal(number, self._receive) for number in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _receive(self, number: int, frame: Any) -> None:
        if self.received is not None:
            if number == signal.SIGINT:  # asked twice: stop now, as Ctrl-C did before
                self.__exit__()
                raise KeyboardInterrupt
            return
        self.received = number
        log.warning("%s: saving a checkpoint at the end of this step, then stopping%s", signal.Signals(number).name,
                    " (Ctrl-C again stops at once, without it)" if number == signal.SIGINT else "")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        asked = self.received is not None
        if self.accelerator.num_processes > 1:  # one process's signal stops them all at this step
            if asked:
                self.accelerator.set_trigger()
            asked = self.accelerator.check_trigger()
        if asked and state.global_step < state.max_steps:  # at the last step the stage just finishes
            control.should_save = True
            control.should_training_stop = True
            self.stopped = (signal.Signals(self.received or signal.SIGTERM), state.global_step)
        return control

    def raise_if_stopped(self, checkpoints: str) -> None:
        """After training: the Stopped error that ends the command, where a signal stopped it."""
        if self.stopped is not None:
            number, step = self.stopped
            raise Stopped(f"stopped by {number.name} at step {step}; its checkpoint is saved "
                          f"({checkpoints}/checkpoint-{step}): run the same command with --resume to continue",
                          code=128 + number)
