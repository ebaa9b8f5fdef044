"""Prompts and SFT targets as plain text, and the context-length budget.

The instruct model has no chat template: it is prompted with
`### Kullanıcı:` / `### Asistan:`. The format instruction goes inside the user
text, because a system message would have been dropped by such a template.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gsm8k_tr.config import PromptConfig


def build_prompt(question: str, prompt: PromptConfig) -> str:
    """The full prompt text for one question.

    >>> print(build_prompt("2+2 kaçtır?", PromptConfig(instruction="<{answer_tag}> kullan.")))
    ### Kullanıcı:
    <cevap> kullan.
    <BLANKLINE>
    2+2 kaçtır?
    ### Asistan:
    <BLANKLINE>
    """
    tags = {"reasoning_tag": prompt.reasoning_tag, "answer_tag": prompt.answer_tag}
    instruction = prompt.instruction.format(**tags)
    return prompt.template.format(question=question.strip(), instruction=instruction, **tags)


def build_target(solution: str, answer: str, prompt: PromptConfig, stop_token: str = "") -> str:
    """The SFT completion: reasoning and answer in tags, then the model's stop token.

    >>> build_target("2+2=4", "4", PromptConfig(), "<|stop|>")
    '<sebep>\\n2+2=4\\n</sebep>\\n<cevap>\\n4\\n</cevap><|stop|>'
    """
    r, a = prompt.reasoning_tag, prompt.answer_tag
    return f"<{r}>\n{solution.strip()}\n</{r}>\n<{a}>\n{answer}\n</{a}>{stop_token}"


def fit_context(
    rows: Iterable[dict[str, Any]],
    count_tokens: Callable[[str], int],
    max_completion_tokens: int,
    max_context: int,
    text: Callable[[dict[str, Any]], str],
) -> tuple[list[dict[str, Any]], int]:
    """Rows whose prompt (`text(row)`) plus the completion budget fit the context; and how many did not.

    >>> kept, dropped = fit_context([{"p": "a b"}, {"p": "a b c d e"}], lambda s: len(s.split()), 3, 6, lambda r: r["p"])
    >>> len(kept), dropped
    (1, 1)
    """
    kept: list[dict[str, Any]] = []
    dropped = 0
    for row in rows:
        if count_tokens(text(row)) + max_completion_tokens <= max_context:
            kept.append(row)
        else:
            dropped += 1
    return kept, dropped
