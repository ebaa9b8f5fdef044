"""Disk space: a stage that will not fit its checkpoints and outputs refuses to start, and one whose disk fills up
while it runs (another process wrote there) stops with one line (`outputs.full_disk_reported` with RESUME)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError

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


# A stage's outputs are its checkpoints: after a full disk, --resume goes on from the newest complete one.
RESUME = "free some space, then run the same command with --resume: it goes on from the newest complete checkpoint"
