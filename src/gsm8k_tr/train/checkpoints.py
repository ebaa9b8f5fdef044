"""Trainer checkpoints: written atomically, and found again by `--resume`.

transformers writes `checkpoint-N` in place, so a kill mid-save leaves a
folder that a resume would pick up. Here each checkpoint is written to a
staging folder and renamed into place; a resume takes the newest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gsm8k_tr.train.faults import inject_fault

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STAGING = ".saving"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")


def checkpoint_complete(path: Path) -> bool:
    """A checkpoint with parseable trainer state and whole weights (older, non-atomic saves can be half-written; a
    disk can fail under any): the safetensors header read and the file as long as it says, nothing loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    try:
        for file in weights:
            with safe_open(str(file), "pt"):
                pass
    except (SafetensorError, OSError):
        return False
    return bool(weights)


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete `checkpoint-N` in `folder`; incomplete ones are skipped with a warning."""
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        name, _, step = path.name.partition("-")
        if name == "checkpoint" and step.isdigit() and path.is_dir():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        if checkpoint_complete(path):
            return str(path)
        log.warning("skipping %s: it is incomplete (a save was interrupted)", path)
    return None


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is written to a staging folder, then renamed into place.

    A kill leaves only the staging folder, which the next save clears.
    """

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        root = self.args.output_dir
        staging = os.path.join(root, STAGING)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = root
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        name = f"checkpoint-{self.state.global_step}"
        self._point_at_best(root, os.path.join(staging, name))
        if self.args.should_save:
            final = os.path.join(root, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            inject_fault("kill-during-save")  # the checkpoint is written but not yet in place
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=root, save_total_limit=self.args.save_total_limit, use_mtime=False,
                               best_model_checkpoint=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _point_at_best(self, root: str, written: str) -> None:
        """Name the best checkpoint by its final path, in every process's state and in the checkpoint just written.

        transformers looks for the best checkpoint beside the one it writes,
        which here is the staging folder: it would record a path that the
        rename is about to empty, `load_best_model_at_end` would then find
        nothing, and rotation would not protect the best one. Every process
        loads the best at the end: under DeepSpeed one that still held the
        staging path stopped the run ("Can't find a valid checkpoint"), and
        under DDP it went on with the last step's weights.
        """
        best = self.state.best_global_step
        if not best:
            return
        path = os.path.join(root, f"checkpoint-{best}")
        if best == self.state.global_step or os.path.isdir(path):
            self.state.best_model_checkpoint = path
            if self.args.should_save:
                self.state.save_to_json(os.path.join(written, "trainer_state.json"))
