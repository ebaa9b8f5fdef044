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
`sebep` and `cevap`, bound from the recipe's `prompt` section. A reward's other
keyword-only arguments are its parameters, set from the recipe's `rewards`
section (`correctness: {weight: 1.0, requires_format: strict}`), as open-r1's
registry binds them from its config. A new reward is one function here with
`@register("name")` and its test.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from gsm8k_tr.errors import UserError
from gsm8k_tr.grading.answers import is_correct

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]
REWARDS: dict[str, RewardFunc] = {}
TAGS = ("reasoning_tag", "answer_tag")  # bound from the recipe's `prompt` section, never from `rewards`


def register(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Add a reward to the registry under `name` (the key recipes use)."""

    def add(func: RewardFunc) -> RewardFunc:
        REWARDS[name] = func
        return func

    return add


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


@register("correctness")
def correctness_reward_func(
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    *,
    answer_tag: str = "cevap",
    reasoning_tag: str = "sebep",
    requires_format: Literal["none", "soft", "strict"] = "none",
    **kwargs: Any,
) -> list[float]:
    """2.0 when the final number of the last answer block equals the gold answer, else 0.0.

    `requires_format` (`soft` or `strict`) counts a right answer only when the
    completion also has that format, so a policy cannot earn correctness with
    malformed text that the grader still reads.

    >>> correctness_reward_func(["<sebep>\\n9*2\\n</sebep>\\n<cevap>\\n18 dolar\\n</cevap>", "<cevap>17</cevap>"], ["18", "18"])
    [2.0, 0.0]
    >>> correctness_reward_func(["<cevap>18</cevap>"], ["18"]), correctness_reward_func(["<cevap>18</cevap>"], ["18"], requires_format="soft")
    ([2.0], [0.0])
    """
    if answer is None:
        return [0.0] * len(completions)
    if isinstance(answer, (str, int, float)):  # one gold for every completion
        answer = [answer] * len(completions)
    golds = list(answer) + [None] * max(0, len(completions) - len(answer))
    formats = {"none": None, "soft": _soft, "strict": _strict}
    if requires_format not in formats:
        raise ValueError(f"requires_format must be one of {', '.join(formats)}, got {requires_format!r}")
    check = formats[requires_format]

    def score(text: str, gold: Any) -> float:
        if gold is None or (check is not None and not check(text, reasoning_tag, answer_tag)):
            return 0.0
        return 2.0 if is_correct(text, gold, answer_tag) else 0.0

    return [_safe(lambda text, gold=gold: score(text, gold), completion, "correctness_reward_func")
            for completion, gold in zip(completions, golds)]


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


@register("strict_format")
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


@register("soft_format")
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


def _xmlcount(text: str, reasoning_tag: str, answer_tag: str, trailing_penalty: float = 0.001) -> float:
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
        score -= trailing_penalty * len(text[end + len(closing):].strip())
    return max(score, 0.0)


@register("xmlcount")
def xmlcount_reward_func(
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    *,
    reasoning_tag: str = "sebep",
    answer_tag: str = "cevap",
    trailing_penalty: float = 0.001,
    **kwargs: Any,
) -> list[float]:
    """+0.125 per well-placed tag occurring once, minus `trailing_penalty` per character after the last `</cevap>`.

    The penalty applies only when the closing tag exists; the result is floored at 0.

    >>> xmlcount_reward_func(["<sebep>\\nx\\n</sebep>\\n<cevap>\\n5\\n</cevap>", "<sebep>\\nx\\n</sebep>\\n<cevap>\\n5" + "y" * 500])
    [0.5, 0.375]
    """
    return [
        _safe(lambda text: _xmlcount(text, reasoning_tag, answer_tag, trailing_penalty), c, "xmlcount_reward_func")
        for c in completions
    ]


def get_reward(name: str) -> RewardFunc:
    """Look a reward up by its registry name (or its function name)."""
    key = name.removesuffix("_reward_func")
    if key not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARDS)}")
    return REWARDS[key]


def parameters(func: RewardFunc) -> dict[str, inspect.Parameter]:
    """A reward's parameters: its keyword-only arguments other than the tags."""
    return {name: p for name, p in inspect.signature(func).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in TAGS}


def _checked(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against a parameter's annotation (float, int, bool, str or Literal choices)."""
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise UserError(f"recipe key {where!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(annotation, type) and (not isinstance(value, annotation) or
                                         (annotation is not bool and isinstance(value, bool))):
        raise UserError(f"recipe key {where!r} must be {annotation.__name__}, got {value!r}")
    return value


def reward_spec(name: str, entry: Any) -> tuple[RewardFunc, float, dict[str, Any]]:
    """One entry of the recipe's `rewards` section → (function, weight, parameters), checked.

    An entry is a weight (`correctness: 1.0`) or a mapping of `weight`
    (default 1.0) and the reward's parameters.

    >>> func, weight, params = reward_spec("correctness", {"weight": 2, "requires_format": "strict"})
    >>> func.__name__, weight, params
    ('correctness_reward_func', 2.0, {'requires_format': 'strict'})
    """
    try:
        func = get_reward(name)
    except KeyError:
        raise UserError(f"unknown reward {name!r} in recipe key 'rewards'; valid rewards: {', '.join(REWARDS)}") from None
    values = dict(entry) if isinstance(entry, dict) else {"weight": entry}
    weight = _checked(values.pop("weight", 1.0), float, f"rewards.{name}.weight")
    if not math.isfinite(weight):  # YAML's .inf or .nan: every advantage would be NaN
        raise UserError(f"recipe key 'rewards.{name}' must be a finite weight, got {weight}")
    allowed = parameters(func)
    hints = typing.get_type_hints(func)
    params = {}
    for key, value in values.items():
        if key not in allowed:
            valid = ", ".join(["weight", *allowed])
            hint = " (tags come from the 'prompt' section)" if key in TAGS else ""
            raise UserError(f"unknown parameter 'rewards.{name}.{key}'{hint}; valid keys of {name!r}: {valid}")
        params[key] = _checked(value, hints.get(key, Any), f"rewards.{name}.{key}")
    return func, weight, params


def reward_weights(rewards: dict[str, Any]) -> list[float]:
    """The weights of the recipe's `rewards` section, in its order."""
    return [reward_spec(name, entry)[1] for name, entry in rewards.items()]


def build_rewards(
    rewards: dict[str, Any], reasoning_tag: str = "sebep", answer_tag: str = "cevap"
) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions bound to the recipe's tags and parameters, and their weights, in recipe order.

    >>> funcs, ws = build_rewards({"correctness": 1.0, "xmlcount": {"weight": 0.5, "trailing_penalty": 0.01}})
    >>> [f.__name__ for f in funcs], ws
    (['correctness_reward_func', 'xmlcount_reward_func'], [1.0, 0.5])
    """
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    for name, entry in rewards.items():
        base, weight, params = reward_spec(name, entry)
        tags = {key: value for key, value in (("reasoning_tag", reasoning_tag), ("answer_tag", answer_tag))
                if key in inspect.signature(base).parameters}
        # TRL names each logged reward after `__name__`, so keep the original's.
        funcs.append(functools.update_wrapper(functools.partial(base, **tags, **params), base))
        weights.append(weight)
    # TRL refuses a GRPO without rewards only when the stage builds its trainer (in a pipeline, after SFT), and
    # trains on weights that are all 0 or below: advantages all 0 (nothing learned), or a push towards wrong answers.
    if not any(weight > 0 for weight in weights):
        given = ", ".join(f"{name}: {weight:g}" for name, weight in zip(rewards, weights)) or "none"
        raise UserError(f"recipe section 'rewards' needs a reward with a positive weight for GRPO to learn from (it "
                        f"has {given}); e.g. correctness: 1.0 (rewards: {', '.join(REWARDS)})")
    return funcs, weights
