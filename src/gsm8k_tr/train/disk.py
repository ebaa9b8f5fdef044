"""Disk space: a stage that will not fit its checkpoints and outputs refuses to start, and one whose disk fills up
while it runs (another process wrote there) stops with one line."""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError, one_line

log = logging.getLogger(__name__)


def estimated_bytes(model: Any, save_total_limit: int | None) -> int:
    """Disk a stage needs: the merged model, the adapter, and the checkpoints kept (plus one being written).

    A checkpoint holds the trainable weights and AdamW's two moments (3x),
    with the scheduler, RNG and trainer state as small change; sizes are fp32.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    checkpoints = (save_total_limit or 3) + 1
    return 4 * (total + trainable + checkpoints * 3 * trainable) + 16 * 2**20


def check_disk_space(folder: Path, model: Any, save_total_limit: int | None) -> None:
    """Refuse to start a stage whose outputs will not fit on the disk."""
    need = estimated_bytes(model, save_total_limit)
    free = shutil.disk_usage(folder).free
    log.info("disk: about %.0f MiB needed for checkpoints and outputs, %.0f MiB free", need / 2**20, free / 2**20)
    if free < need:
        raise UserError(f"{folder} has {free / 2**20:.0f} MiB free but this stage needs about {need / 2**20:.0f} MiB "
                        "(checkpoints, adapter, merged model); free space, lower save_total_limit, or choose "
                        "another output_dir")


NEARLY_FULL = 2**20  # bytes: with less free, a failed write is taken as the disk having filled up
NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # a full disk, or a full quota on it


@contextmanager
def full_disk_reported(folder: Path) -> Iterator[None]:
    """Turn a write that failed because the disk holding `folder` filled up into one line (`filled_up`)."""
    try:
        yield
    except Exception as error:
        full = filled_up(error, folder)
        if full is None:
            raise
        raise full from error


def filled_up(error: BaseException, folder: Path) -> UserError | None:
    """The one line for `error` where it is a write that failed because the disk holding `folder` filled up, else None.

    Not every writer says so: Python's files raise ENOSPC (EDQUOT over a
    quota), safetensors says "os error 28" and torch.save only "file write
    failed". So the disk is asked as well: a failed write with less than
    NEARLY_FULL left counts too.
    """
    said = (isinstance(error, OSError) and error.errno in NO_SPACE) or "No space left on device" in str(error) \
        or "os error 28" in str(error) or "Disk quota exceeded" in str(error)
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    a_write = (isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError") \
        and "out of memory" not in str(error)  # torch's OutOfMemoryError is a RuntimeError: told as it is (fitting)
    if not said and not (a_write and free is not None and free < NEARLY_FULL):
        return None
    left = f"{free / 2**20:.1f} MiB free now; " if free is not None else ""
    return UserError(f"the disk holding {folder} filled up while the stage wrote to it ({left}{one_line(error)[:120]}); "
                     "free some space, then run the same command with --resume: it goes on from the newest complete "
                     "checkpoint")
