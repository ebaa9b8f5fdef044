"""Where a run's parts live, shared by training and inference: the prepared data and the finished stage outputs.

`{output_dir}/data` holds the prepared splits; `{output_dir}/{stage}` a
stage's outputs, whose `manifest.json` is written last, so its presence means
the stage finished. Inference reads these; only training writes stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gsm8k_tr.config import Recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.outputs import read_object, run_lock
from gsm8k_tr.processes import check_devices, process_state

T = TypeVar("T")


def stage_dir(recipe: Recipe, stage: str) -> Path:
    """`{output_dir}/{stage}`."""
    return Path(recipe.output_dir) / stage


def is_finished(folder: Path) -> bool:
    """A stage output whose final save completed."""
    return (folder / "manifest.json").is_file() and (folder / "merged" / "config.json").is_file()


# The manifest's keys that commands compute with or pass on, and their types (a stage writes every one; every
# version has written global_step, which is required).
MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "global_step": (int,), "train_seconds": (int, float), "finished_at": (str,), "stop_token": (str, type(None)),
    "base_model_revision": (str, type(None))}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a finished stage: an object with those keys of their types, else one line naming it (one
    edited by hand stopped in a traceback wherever it was read)."""
    path, remedy = folder / "manifest.json", "run the stage again with --overwrite"
    manifest = read_object(path, remedy, "an object, as a stage writes its manifest")
    if "global_step" not in manifest:
        raise UserError(f"{path}: no 'global_step', which a stage writes in its manifest; {remedy}")
    for key, types in MANIFEST_TYPES.items():
        if key not in manifest or (isinstance(manifest[key], types) and not isinstance(manifest[key], bool)):
            continue
        raise UserError(f"{path}: {key!r} is {manifest[key]!r}, not {' or '.join(t.__name__ for t in types)} as a "
                        f"stage writes it; {remedy}")
    return manifest


# What evaluate writes as numbers in metrics.json, and the pipeline's summary and the report compute with.
METRIC_NUMBERS = ("n", "accuracy", "flexible_accuracy", "strict_format_rate", "soft_format_rate",
                  "mean_completion_tokens", "truncated_rate", "pass_at_k", "maj_at_k", "seconds")
METRIC_REQUIRED = ("split", "n", "accuracy")  # what every row of the summary and the report is read from


def read_metrics(path: Path, remedy: str) -> dict[str, Any]:
    """An evaluation's metrics.json: an object whose counts and rates are numbers, else one line naming the file
    (a damaged or hand-edited one stopped in a traceback inside a plot or the summary)."""
    metrics = read_object(path, remedy, "an object of metrics, as evaluate writes it")
    missing = [key for key in METRIC_REQUIRED if key not in metrics]
    if missing:  # the report's row was left blank, and its stage-to-stage comparisons dropped without a word
        raise UserError(f"{path}: no {', '.join(map(repr, missing))}, which evaluate writes; {remedy}")
    if not isinstance(metrics["split"], str) or not metrics["split"]:
        raise UserError(f"{path}: 'split' is {metrics['split']!r}, not a split's name as evaluate writes it; {remedy}")
    for key in METRIC_NUMBERS:
        value = metrics.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path}: {key!r} is {value!r}, not a number as evaluate writes it; {remedy}")
    return metrics


def grpo_held_out(run: Path, key: str = "held_out") -> dict[str, Any] | None:
    """Where a run's GRPO stage drew its in-training check from (split, questions), or with `key="held_out_kept"`
    which check's adapter it kept (`eval.grpo_keep_best`); None before GRPO finished or without one."""
    folder = run / "grpo"
    return read_manifest(folder).get(key) if (folder / "manifest.json").is_file() else None


def prepared_data(recipe: Recipe) -> Path:
    """`data.splits.ensure_prepared`, done by the main process while the others wait."""
    from gsm8k_tr.data.splits import ensure_prepared

    with process_state().main_process_first():
        return ensure_prepared(recipe)


def held_by_one_run(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a command's `main(recipe, ...)` that trains into `recipe.output_dir`: its main process holds the
    folder for the whole call (`outputs.run_lock`), so a second run into it stops with one line, before it reads or
    deletes anything. Before that, every process checks the launch (`processes.check_devices`): one that cannot
    work stops before any work, where the pipeline had prepared the data and evaluated the base model first."""

    @functools.wraps(main)
    def held(recipe: Recipe, *args: Any, **kwargs: Any) -> T:
        state = process_state()
        check_devices(state)
        if not state.is_main_process:  # the launch's other processes run under their main one's hold
            return main(recipe, *args, **kwargs)
        with run_lock(Path(recipe.output_dir)):
            return main(recipe, *args, **kwargs)

    return held
