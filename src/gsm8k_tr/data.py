"""The prepared data a training stage or evaluation reads, and the rows each one uses.

A stage prepares its data with `prepare` into `{output_dir}/data` (once; later
stages of the run reuse it) unless `data.dataset` already names a folder that
`prepare` wrote. Every dropped row is counted and reported.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe, recipe_dict
from gsm8k_tr.errors import UserError
from gsm8k_tr.prompts import build_prompt, build_target, fit_context
from gsm8k_tr.sources import json_rows

log = logging.getLogger(__name__)

PREPARED_FILES = ("report.json", "train.jsonl", "test.jsonl")


def is_prepared(path: Path) -> bool:
    """Whether `path` is a folder written by `prepare`."""
    return path.is_dir() and all((path / name).is_file() for name in PREPARED_FILES)


def ensure_prepared(recipe: Recipe) -> Path:
    """The prepared-data folder for this recipe, preparing it on first use."""
    named = Path(recipe.data.dataset).expanduser()
    if is_prepared(named):
        return named
    cache = Path(recipe.output_dir) / "data"
    wanted = recipe_dict(recipe)["data"]
    if is_prepared(cache):
        import yaml

        saved = yaml.safe_load((cache / "recipe.yaml").read_text(encoding="utf-8")) if (cache / "recipe.yaml").is_file() else {}
        if (saved or {}).get("data") != wanted:
            raise UserError(f"{cache} was prepared from a different 'data' section than this recipe's; "
                            "use another output_dir, or delete that folder to prepare it again")
        return cache
    from gsm8k_tr import prepare

    log.info("preparing data into %s", cache)
    prepare.main(recipe, output=str(cache), overwrite=cache.exists())
    return cache


def load_split(folder: Path, split: str) -> list[dict[str, Any]]:
    """The rows of one prepared split; an empty or missing split is an error."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"split {split!r} not found: {path} does not exist (splits are train and test)")
    if path.stat().st_size == 0:
        raise UserError(f"split {split!r} in {folder} is empty; check data.dataset and data.test_fraction")
    rows = []
    for number, row in json_rows(path):  # one reader for JSON lines: encodings, malformed lines, non-objects
        if not row.get("question") or row.get("answer") in (None, ""):
            raise UserError(f"{path}, line {number}: needs 'question' and 'answer'; prepare the data again")
        rows.append(row)
    return rows


def fingerprint(folder: Path) -> str:
    """A short hash of the prepared data, for the run manifest."""
    digest = hashlib.sha256()
    for name in PREPARED_FILES[1:]:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def sft_examples(rows: list[dict[str, Any]], recipe: Recipe, stop_token: str, count_tokens: Callable[[str], int],
                 max_length: int) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Prompt/completion pairs for SFT, and the counts of rows left out and why.

    A solution whose own final number contradicts the verified gold would teach
    the wrong answer, so such rows are left out unless `data.sft_keep_disagreeing`.
    """
    keep = recipe.data.sft_keep_disagreeing
    agreeing = [r for r in rows if keep or r.get("solution_agrees", True)]
    examples = [{"prompt": build_prompt(r["question"], recipe.prompt),
                 "completion": build_target(r["solution"], r["answer"], recipe.prompt, stop_token)} for r in agreeing]
    fitted, too_long = fit_context(examples, count_tokens, 0, max_length, lambda e: e["prompt"] + e["completion"])
    counts = {"rows": len(rows), "dropped_disagreeing": len(rows) - len(agreeing), "dropped_too_long": too_long,
              "used": len(fitted)}
    return fitted, counts


def grpo_examples(rows: list[dict[str, Any]], recipe: Recipe, count_tokens: Callable[[str], int],
                  max_completion_tokens: int, context: int) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Prompts with their verified gold answers for GRPO, and the counts left out.

    Every row has a verified gold (the reward needs nothing else), so
    disagreeing solutions are kept. TRL 1.x has no `max_prompt_length`: a
    prompt that leaves no room for a full completion is dropped here.
    """
    examples = [{"prompt": build_prompt(r["question"], recipe.prompt), "answer": r["answer"]} for r in rows]
    fitted, too_long = fit_context(examples, count_tokens, max_completion_tokens, context, lambda e: e["prompt"])
    return fitted, {"rows": len(rows), "dropped_too_long": too_long, "used": len(fitted)}


def require_rows(examples: list[Any], counts: dict[str, int], stage: str) -> None:
    """A stage with no usable rows stops with the counts that explain why."""
    if not examples:
        raise UserError(f"{stage}: no training rows left ({counts}); check the data, or lower the completion length")
