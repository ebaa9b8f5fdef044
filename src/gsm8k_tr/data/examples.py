"""The rows a training stage uses: SFT prompt/completion pairs and GRPO prompts, and what was left out and why.

Every dropped row is counted, and a stage with no rows left stops with the counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gsm8k_tr.config import Recipe
from gsm8k_tr.data.prepare import shows_work, split_position
from gsm8k_tr.data.prompts import build_prompt, build_target, fit_context
from gsm8k_tr.errors import UserError


def sft_examples(rows: list[dict[str, Any]], recipe: Recipe, stop_token: str, count_tokens: Callable[[str], int],
                 max_length: int) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Prompt/completion pairs for SFT, and the counts of rows left out and why.

    A row without a worked solution (an answer only, or outside
    `data.solution_fraction`) has nothing to imitate; one whose solution only
    states the result (`prepare.shows_work`) would teach answering without
    reasoning, and is left out unless `data.sft_keep_no_work`. A solution whose
    own final number contradicts the verified gold would teach the wrong answer,
    so such rows are left out unless `data.sft_keep_disagreeing`.
    """
    with_solution = [r for r in rows if has_solution(r, recipe.data.solution_fraction)]
    worked = [r for r in with_solution if recipe.data.sft_keep_no_work or shows_work(r["solution"])]
    keep = recipe.data.sft_keep_disagreeing
    agreeing = [r for r in worked if keep or r.get("solution_agrees", True)]
    examples = [{"prompt": build_prompt(r["question"], recipe.prompt),
                 "completion": build_target(r["solution"], r["answer"], recipe.prompt, stop_token)} for r in agreeing]
    fitted, too_long = fit_context(examples, count_tokens, 0, max_length, lambda e: e["prompt"] + e["completion"])
    counts = {"rows": len(rows), "dropped_no_solution": len(rows) - len(with_solution),
              "dropped_no_work": len(with_solution) - len(worked),
              "dropped_disagreeing": len(worked) - len(agreeing), "dropped_too_long": too_long,
              "used": len(fitted)}
    return fitted, counts


def has_solution(row: dict[str, Any], fraction: float = 1.0) -> bool:
    """Whether SFT may use the row's worked solution: it has one, and its question falls in `fraction` (by hash).

    >>> has_solution({"question": "q", "solution": ""}), has_solution({"question": "q", "solution": "2+2=4"})
    (False, True)
    """
    if not str(row.get("solution") or "").strip():
        return False
    return fraction >= 1.0 or split_position(row["question"], "solution") < fraction


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
