"""The rows a training stage uses: SFT prompt/completion pairs and GRPO prompts, and what was left out and why.

Every dropped row is counted, and a stage with no rows left stops with the counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from gsm8k_tr.config import Recipe
from gsm8k_tr.data import prepare
from gsm8k_tr.data.prompts import build_prompt, build_target, fit_context
from gsm8k_tr.errors import UserError


def sft_examples(rows: list[dict[str, Any]], recipe: Recipe, stop_token: str, count_tokens: Callable[[str], int],
                 max_length: int) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Prompt/completion pairs for SFT, and the counts of rows left out and why (`prepare.sft_leaves_out`)."""
    left_out = [prepare.sft_leaves_out(r, recipe.data) for r in rows]
    reasons = Counter(left_out)
    examples = [{"prompt": build_prompt(r["question"], recipe.prompt),
                 "completion": build_target(r["solution"], r["answer"], recipe.prompt, stop_token)}
                for r, reason in zip(rows, left_out) if reason is None]
    fitted, too_long = fit_context(examples, count_tokens, 0, max_length, lambda e: e["prompt"] + e["completion"])
    counts = {"rows": len(rows), "dropped_no_solution": reasons["no_solution"], "dropped_no_work": reasons["no_work"],
              "dropped_disagreeing": reasons["disagreeing"], "dropped_too_long": too_long, "used": len(fitted)}
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


# What keeps each kind of left-out row out, and the recipe key that lets it in.
LET_IN = {"dropped_no_solution": "raise data.solution_fraction, or give answers with worked solutions",
          "dropped_no_work": "data.sft_keep_no_work=true keeps solutions that only state the result",
          "dropped_disagreeing": "data.sft_keep_disagreeing=true keeps solutions that contradict the verified answer",
          "dropped_too_long": {"sft": "raise sft.max_length (the model's context allowing)",
                               "grpo": "lower grpo.max_completion_length, which leaves the prompts no room"}}


def require_rows(examples: list[Any], counts: dict[str, int], stage: str) -> None:
    """A stage with no usable rows stops with the counts that explain why, and the keys that let them in."""
    if examples:
        return
    fixes = [fix[stage] if isinstance(fix, dict) else fix for key, fix in LET_IN.items() if counts.get(key)]
    fixes = fixes or ["check data.dataset"]
    raise UserError(f"{stage}: no training rows left ({counts}); {'; or '.join(fixes)}")
