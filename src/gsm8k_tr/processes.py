"""Processes and devices under `accelerate launch`: the shared process state and one-line errors for bad launches."""

from __future__ import annotations

import logging
import os
from typing import Any

from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)


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
