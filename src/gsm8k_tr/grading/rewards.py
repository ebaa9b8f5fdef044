"""The four rewards of the original GRPO recipe, with its bugs fixed.

Each reward has TRL's signature `f(completions, answer=None, **kwargs) -> list[float]`,
accepts plain-string or conversational completions, never raises (a completion
it cannot read scores 0.0) and runs in time linear in the completion length.

What the widely copied versions got wrong, and what changed:
- The strict and soft format regexes had no DOTALL, so `.` never crossed the
  newlines of multi-line reasoning and both rewards were always 0. Here the
  formats are checked with string searches that treat newlines as ordinary text.
- The xml-count reward charged the whole completion as "text after the closing
  tag" when that tag was missing. Here the penalty exists only after a real
  closing tag.
Tag names are keyword arguments (`reasoning_tag`, `answer_tag`), default
`sebep` and `cevap`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from gsm8k_tr.grading.answers import is_correct

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the contents of a message list.

    >>> completion_text([{"role": "assistant", "content": "<cevap>5</cevap>"}])
    '<cevap>5</cevap>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts: list[str] = []
    for message in completion:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):  # multimodal style: [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise TypeError(f"completion content is {type(content).__name__}, not text")
        parts.append(content)
    return "".join(parts)


def _safe(score: Callable[[str], float], completion: Any, name: str) -> float:
    """Score one completion; anything unreadable scores 0.0 and is logged."""
    try:
        return float(score(completion_text(completion)))
    except Exception as error:  # a reward must never stop training
        logger.warning("%s: scored 0.0 for unreadable completion (%s): %.80r", name, error, completion)
        return 0.0


def correctness_reward_func(
    completions: Sequence[Any], answer: Sequence[Any] | None = None, *, answer_tag: str = "cevap", **kwargs: Any
) -> list[float]:
    """2.0 when the final number of the last answer block equals the gold answer, else 0.0.

    >>> correctness_reward_func(["<sebep>\\n9*2\\n</sebep>\\n<cevap>\\n18 dolar\\n</cevap>", "<cevap>17</cevap>"], ["18", "18"])
    [2.0, 0.0]
    """
    if answer is None:
        return [0.0] * len(completions)
    if isinstance(answer, (str, int, float)):  # one gold for every completion
        answer = [answer] * len(completions)
    golds = list(answer) + [None] * max(0, len(completions) - len(answer))
    return [
        _safe(lambda text, gold=gold: 2.0 if gold is not None and is_correct(text, gold, answer_tag) else 0.0,
              completion, "correctness_reward_func")
        for completion, gold in zip(completions, golds)
    ]


def _strict(text: str, reasoning_tag: str, answer_tag: str) -> float:
    r_open, r_close = f"<{reasoning_tag}>", f"</{reasoning_tag}>"
    a_open, a_close = f"<{answer_tag}>", f"</{answer_tag}>"
    if any(text.count(tag) != 1 for tag in (r_open, r_close, a_open, a_close)):
        return 0.0
    head, middle, tail = f"{r_open}\n", f"\n{r_close}\n{a_open}\n", f"\n{a_close}"
    body = text.rstrip()
    if not (body.startswith(head) and body.endswith(tail)):
        return 0.0
    # Each tag occurs once, so the layout is fixed: the middle separator must
    # sit between the opening line and the closing line, not overlap them.
    cut = body.find(middle, len(head))
    return 0.5 if 0 <= cut and cut + len(middle) <= len(body) - len(tail) else 0.0


def strict_format_reward_func(
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    *,
    reasoning_tag: str = "sebep",
    answer_tag: str = "cevap",
    **kwargs: Any,
) -> list[float]:
    """0.5 when the completion is exactly `<sebep>\\n…\\n</sebep>\\n<cevap>\\n…\\n</cevap>` (+ whitespace).

    Reasoning may span many lines; each tag must occur exactly once.

    >>> strict_format_reward_func(["<sebep>\\nadım 1\\nadım 2\\n</sebep>\\n<cevap>\\n5\\n</cevap>\\n", "<cevap>\\n5\\n</cevap>"])
    [0.5, 0.0]
    """
    return [
        _safe(lambda text: _strict(text, reasoning_tag, answer_tag), c, "strict_format_reward_func")
        for c in completions
    ]


def _soft(text: str, reasoning_tag: str, answer_tag: str) -> float:
    # Equivalent to re.search(r"<r>.*?</r>\s*<a>.*?</a>", DOTALL) but linear:
    # some "</r>\s*<a>" joint must come after the first "<r>" and before the
    # last "</a>".
    first_open = text.find(f"<{reasoning_tag}>")
    last_close = text.rfind(f"</{answer_tag}>")
    if first_open < 0 or last_close < 0:
        return 0.0
    joint = re.compile(rf"</{re.escape(reasoning_tag)}>\s*<{re.escape(answer_tag)}>")
    earliest = first_open + len(reasoning_tag) + 2
    for match in joint.finditer(text, earliest):
        return 0.5 if match.end() <= last_close else 0.0
    return 0.0


def soft_format_reward_func(
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    *,
    reasoning_tag: str = "sebep",
    answer_tag: str = "cevap",
    **kwargs: Any,
) -> list[float]:
    """0.5 when a `<sebep>…</sebep>` block is followed (after whitespace) by a `<cevap>…</cevap>` block.

    >>> soft_format_reward_func(["Önce: <sebep>çok\\nsatır</sebep>\\n\\n<cevap>5</cevap> son", "<cevap>5</cevap><sebep>x</sebep>"])
    [0.5, 0.0]
    """
    return [
        _safe(lambda text: _soft(text, reasoning_tag, answer_tag), c, "soft_format_reward_func")
        for c in completions
    ]


def _xmlcount(text: str, reasoning_tag: str, answer_tag: str) -> float:
    pieces = (
        f"<{reasoning_tag}>\n",
        f"\n</{reasoning_tag}>\n",
        f"\n<{answer_tag}>\n",
        f"\n</{answer_tag}>",
    )
    score = 0.125 * sum(text.count(piece) == 1 for piece in pieces)
    closing = f"</{answer_tag}>"
    end = text.rfind(closing)
    if end >= 0:
        score -= 0.001 * len(text[end + len(closing):].strip())
    return max(score, 0.0)


def xmlcount_reward_func(
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    *,
    reasoning_tag: str = "sebep",
    answer_tag: str = "cevap",
    **kwargs: Any,
) -> list[float]:
    """+0.125 per well-placed tag occurring once, minus 0.001 per character after the last `</cevap>`.

    The penalty applies only when the closing tag exists; the result is floored at 0.

    >>> xmlcount_reward_func(["<sebep>\\nx\\n</sebep>\\n<cevap>\\n5\\n</cevap>", "<sebep>\\nx\\n</sebep>\\n<cevap>\\n5" + "y" * 500])
    [0.5, 0.375]
    """
    return [
        _safe(lambda text: _xmlcount(text, reasoning_tag, answer_tag), c, "xmlcount_reward_func")
        for c in completions
    ]


REWARDS: dict[str, RewardFunc] = {
    "correctness": correctness_reward_func,
    "strict_format": strict_format_reward_func,
    "soft_format": soft_format_reward_func,
    "xmlcount": xmlcount_reward_func,
}


def get_reward(name: str) -> RewardFunc:
    """Look a reward up by its registry name (or its function name)."""
    key = name.removesuffix("_reward_func")
    if key not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARDS)}")
    return REWARDS[key]


def build_rewards(
    weights: dict[str, float], reasoning_tag: str = "sebep", answer_tag: str = "cevap"
) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions bound to the recipe's tag names, and their weights, in recipe order.

    >>> funcs, ws = build_rewards({"correctness": 1.0, "xmlcount": 0.5}, answer_tag="yanit")
    >>> [f.__name__ for f in funcs], ws
    (['correctness_reward_func', 'xmlcount_reward_func'], [1.0, 0.5])
    """
    funcs: list[RewardFunc] = []
    for name in weights:
        base = get_reward(name)
        tags = {"answer_tag": answer_tag}
        if base is not correctness_reward_func:
            tags["reasoning_tag"] = reasoning_tag
        # TRL names each logged reward after `__name__`, so keep the original's.
        funcs.append(functools.update_wrapper(functools.partial(base, **tags), base))
    return funcs, [float(w) for w in weights.values()]
