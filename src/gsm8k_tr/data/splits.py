"""A prepared data folder: finding or making it for a recipe, and reading its splits.

A stage prepares its data with `prepare` into `{output_dir}/data` (once; later
stages of the run reuse it) unless `data.dataset` already names a folder that
`prepare` wrote.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe, recipe_dict
from gsm8k_tr.data import prepare
from gsm8k_tr.data.prepare import REPORT
from gsm8k_tr.data.sources import json_rows
from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)

SPLIT_FILES = ("train.jsonl", "test.jsonl")
OLD_REPORT = "report.json"  # the prepare statistics' name before 0.2; folders prepared then still read


def report_path(folder: Path) -> Path | None:
    """The prepare statistics of a prepared folder (either name), or None."""
    for name in (REPORT, OLD_REPORT):
        if (folder / name).is_file():
            return folder / name
    return None


def is_prepared(path: Path) -> bool:
    """Whether `path` is a folder written by `prepare`."""
    return path.is_dir() and all((path / name).is_file() for name in SPLIT_FILES) and report_path(path) is not None


def prepared_folder(recipe: Recipe) -> tuple[Path, bool]:
    """Where this recipe's prepared data is, and whether it is prepared already.

    A run folder's data prepared from another `data` section is an error:
    the run would train on data its recipe does not describe (the keys SFT
    reads when it chooses rows, `prepare.SFT_ROW_KEYS`, may differ).
    """
    named = Path(recipe.data.dataset).expanduser()
    if is_prepared(named):
        return named, True
    cache = Path(recipe.output_dir) / "data"
    if not is_prepared(cache):
        return cache, False
    import yaml

    saved = yaml.safe_load((cache / "recipe.yaml").read_text(encoding="utf-8")) if (cache / "recipe.yaml").is_file() else {}
    if _prepared_keys((saved or {}).get("data")) != _prepared_keys(recipe_dict(recipe)["data"]):
        raise UserError(f"{cache} was prepared from a different 'data' section than this recipe's; "
                        "use another output_dir, or delete that folder to prepare it again")
    return cache, True


def _prepared_keys(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """A `data` section without the keys SFT reads when it chooses rows: they do not change what `prepare` writes."""
    return None if data is None else {key: value for key, value in data.items() if key not in prepare.SFT_ROW_KEYS}


def ensure_prepared(recipe: Recipe) -> Path:
    """The prepared-data folder for this recipe, preparing it on first use."""
    cache, ready = prepared_folder(recipe)
    if ready:
        return cache
    log.info("preparing data into %s", cache)
    prepare.main(recipe, output=str(cache), overwrite=cache.exists())
    return cache


def load_split(folder: Path, split: str) -> list[dict[str, Any]]:
    """The rows of one prepared split; an empty or missing split is an error."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        hint = "; folders prepared before 0.2 have none: prepare the data again" if split == "validation" else ""
        raise UserError(f"split {split!r} not found: {path} does not exist (splits are train, validation and "
                        f"test{hint})")
    if path.stat().st_size == 0:
        fraction = {"validation": "data.validation_fraction", "test": "data.test_fraction"}.get(split)
        raise UserError(f"split {split!r} in {folder} is empty; check data.dataset"
                        + (f" and {fraction}" if fraction else ""))
    rows = []
    for number, row in json_rows(path):  # one reader for JSON lines: encodings, malformed lines, non-objects
        if not row.get("question") or row.get("answer") in (None, ""):
            raise UserError(f"{path}, line {number}: needs 'question' and 'answer'; prepare the data again")
        rows.append(row)
    return rows


def fingerprint(folder: Path) -> str:
    """A short hash of the prepared data, for the run manifest."""
    digest = hashlib.sha256()
    for name in (*SPLIT_FILES, "validation.jsonl"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]
