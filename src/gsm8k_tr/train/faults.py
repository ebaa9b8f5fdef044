"""The fault-injection hook: a process kills itself at a named point, so tests can check a kill there loses nothing.

`GSM8K_TR_FAULT=kill-during-save` (a checkpoint written but not yet renamed
into place) or `kill-during-merge` (the merged model half written) makes the
process SIGKILL itself at that point. Unset in normal use.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

FAULT_ENV = "GSM8K_TR_FAULT"


def inject_fault(point: str) -> None:
    """SIGKILL this process at `point` when FAULT_ENV names it."""
    if os.environ.get(FAULT_ENV) == point:
        log.warning("%s=%s: killing this process", FAULT_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)
