"""The four rewards, with the original project's bugs pinned as fixed."""

import re

import pytest
from conftest import scan_seconds

from gsm8k_tr.grading.rewards import (
    REWARDS,
    build_rewards,
    correctness_reward_func,
    get_reward,
    soft_format_reward_func,
    strict_format_reward_func,
    xmlcount_reward_func,
)

GOOD = "<sebep>\nİlk adım.\nİkinci adım: 9 x 2 = 18\n</sebep>\n<cevap>\n18\n</cevap>"

STRICT = [
    # (completion, expected, what it checks)
    (GOOD, 0.5, "multi-line reasoning (the original regex without DOTALL gave 0)"),
    (GOOD + "\n\n  ", 0.5, "trailing whitespace is allowed"),
    ("<sebep>\ntek satır\n</sebep>\n<cevap>\n18\n</cevap>", 0.5, "single-line reasoning"),
    (" " + GOOD, 0.0, "leading text is not allowed"),
    (GOOD + "\nek", 0.0, "trailing text is not allowed"),
    ("<sebep>x</sebep>\n<cevap>\n18\n</cevap>", 0.0, "tags need their own lines"),
    (GOOD.replace("<cevap>", "<cevap>\n<cevap>", 1), 0.0, "a tag appearing twice"),
    (GOOD + "<sebep>", 0.0, "an extra opening tag at the end"),
    ("<sebep>\n</sebep>\n<cevap>\n18\n</cevap>", 0.0, "newlines must not be shared between tags"),
    ("<cevap>\n18\n</cevap>", 0.0, "no reasoning block"),
]

SOFT = [
    (GOOD, 0.5, "multi-line reasoning"),
    ("önce <sebep>a\nb</sebep>   \n\n<cevap>5</cevap> sonra", 0.5, "blocks anywhere, newlines free"),
    ("<sebep>a</sebep><cevap>5</cevap>", 0.5, "no whitespace needed"),
    ("<sebep>a</sebep> x <cevap>5</cevap>", 0.0, "text between the blocks"),
    ("<cevap>5</cevap><sebep>a</sebep>", 0.0, "blocks in the wrong order"),
    ("<sebep>a</sebep>\n<cevap>5", 0.0, "unclosed answer block"),
    ("</sebep><cevap>5</cevap>", 0.0, "no opening reasoning tag"),
]

XMLCOUNT = [
    (GOOD, 0.5, "all four pieces once"),
    (GOOD + "\nfazladan", 0.5 - 0.001 * len("fazladan"), "penalty per character after </cevap>, whitespace stripped"),
    ("<sebep>\nx\n</sebep>\n<cevap>\n18" + "y" * 300, 0.375, "no closing tag: no penalty (the original charged the whole text)"),
    ("<sebep>\nx\n</sebep>\n<cevap>\n18\n</cevap>" + "z" * 1000, 0.0, "floored at zero"),
    ("<sebep>\n<sebep>\nx\n</sebep>\n<cevap>\n18\n</cevap>", 0.375, "a piece occurring twice earns nothing"),
    ("düz metin", 0.0, "no tags"),
]


@pytest.mark.parametrize("completion,expected,why", STRICT, ids=[c[2] for c in STRICT])
def test_strict_format(completion: str, expected: float, why: str) -> None:
    assert strict_format_reward_func([completion]) == [expected], why


@pytest.mark.parametrize("completion,expected,why", SOFT, ids=[c[2] for c in SOFT])
def test_soft_format(completion: str, expected: float, why: str) -> None:
    assert soft_format_reward_func([completion]) == [expected], why


@pytest.mark.parametrize("completion,expected,why", XMLCOUNT, ids=[c[2] for c in XMLCOUNT])
def test_xmlcount(completion: str, expected: float, why: str) -> None:
    assert xmlcount_reward_func([completion]) == [pytest.approx(expected)], why


def test_soft_format_matches_a_dotall_regex() -> None:
    # The linear scan must agree with the regex the original meant to write.
    pattern = re.compile(r"<sebep>.*?</sebep>\s*<cevap>.*?</cevap>", re.DOTALL)
    for completion, _, _ in SOFT + STRICT + XMLCOUNT:
        expected = 0.5 if pattern.search(completion) else 0.0
        assert soft_format_reward_func([completion]) == [expected], completion


def test_correctness() -> None:
    completions = [GOOD, GOOD.replace("18\n</cevap>", "17\n</cevap>"), "18"]
    assert correctness_reward_func(completions, answer=["18", "18", "18"]) == [2.0, 0.0, 0.0]
    assert correctness_reward_func(completions) == [0.0, 0.0, 0.0]  # no gold: nothing to reward
    assert correctness_reward_func([GOOD], answer="18") == [2.0]


def test_conversational_completions() -> None:
    convo = [[{"role": "assistant", "content": GOOD}]]
    assert correctness_reward_func(convo, answer=["18"]) == [2.0]
    assert strict_format_reward_func(convo) == [0.5]
    assert soft_format_reward_func(convo) == [0.5]
    assert xmlcount_reward_func(convo) == [0.5]


@pytest.mark.parametrize("name", list(REWARDS))
def test_rewards_never_raise_on_junk(name: str) -> None:
    junk = [None, 5, [{"role": "assistant", "content": None}], [{"no": "content"}], {"content": 3}, b"bytes"]
    assert REWARDS[name](junk, answer=["1"] * len(junk)) == [0.0] * len(junk)


def test_configurable_tags() -> None:
    funcs, weights = build_rewards({"strict_format": 2.0, "correctness": 1.0}, reasoning_tag="dusunce", answer_tag="yanit")
    text = "<dusunce>\na\nb\n</dusunce>\n<yanit>\n4\n</yanit>"
    assert funcs[0]([text]) == [0.5] and funcs[1]([text], answer=["4"]) == [2.0]
    assert weights == [2.0, 1.0]
    assert [f.__name__ for f in funcs] == ["strict_format_reward_func", "correctness_reward_func"]


def test_registry_rejects_unknown_names() -> None:
    assert get_reward("xmlcount_reward_func") is xmlcount_reward_func
    with pytest.raises(KeyError, match="valid rewards: correctness, strict_format"):
        get_reward("format")


@pytest.mark.parametrize("name", list(REWARDS))
def test_one_megabyte_completion_is_fast(name: str) -> None:
    # A guard against super-linear scans, not a benchmark: the budget is 50 ms,
    # the bound here is loose enough for a busy CI machine (`scan_seconds`).
    worst = [
        "<sebep>\n" + "1,2." * 250_000 + "\n</sebep>\n<cevap>\n" + "9" * 1_000_000 + "\n</cevap>",
        "<cevap>" + "<sebep></sebep> " * 70_000,
        "</sebep>" + " " * 1_000_000 + "<cevap>",
        "<cevap>\n" + "1/" * 500_000,
        "<cevap>" + "yüz " * 250_000,
    ]
    for text in worst:
        assert scan_seconds(lambda: REWARDS[name]([text], answer=["5"])) < 0.5, text[:40]


PARAMETERS = [
    # (rewards section, completion, gold, expected score per reward, what it checks)
    ({"correctness": 1.0}, "<cevap>18</cevap>", "18", [2.0], "a right answer without the reasoning block counts"),
    ({"correctness": {"requires_format": "soft"}}, "<cevap>18</cevap>", "18", [0.0],
     "with requires_format it counts only in the format"),
    ({"correctness": {"requires_format": "strict"}}, GOOD, "18", [2.0], "strict format and right: counts"),
    ({"correctness": {"requires_format": "strict"}}, "ön söz " + GOOD, "18", [0.0], "right but not strict: nothing"),
    ({"xmlcount": {"trailing_penalty": 0.01}}, GOOD + "abc", "18", [0.5 - 0.03], "the penalty per trailing character"),
]


@pytest.mark.parametrize("section,completion,gold,expected,why", PARAMETERS, ids=[p[4] for p in PARAMETERS])
def test_reward_parameters_from_the_recipe_change_the_score(section, completion, gold, expected, why) -> None:
    from gsm8k_tr.config import load_recipe

    recipe = load_recipe(None, [f"rewards={section}"])  # the way a recipe file sets them
    funcs, _ = build_rewards({k: recipe.rewards[k] for k in section})
    assert [f([completion], answer=[gold])[0] for f in funcs] == pytest.approx(expected), why


def test_weights_read_from_both_forms_and_parameters_bind() -> None:
    funcs, weights = build_rewards({"correctness": {"weight": 2, "requires_format": "strict"}, "xmlcount": 0.5})
    assert weights == [2.0, 0.5]
    assert funcs[0].keywords["requires_format"] == "strict" and funcs[0].__name__ == "correctness_reward_func"


@pytest.mark.parametrize(("rewards", "message"), [
    ({}, "needs a reward with a positive weight for GRPO to learn from (it has none)"),  # TRL refused it at the stage
    ({"correctness": 0, "xmlcount": 0.0}, "(it has correctness: 0, xmlcount: 0)"),  # trained: every advantage 0
    ({"correctness": -1}, "(it has correctness: -1)"),  # trained towards wrong answers
    ({"correctness": float("inf")}, "recipe key 'rewards.correctness' must be a finite weight, got inf"),
])
def test_rewards_that_give_grpo_nothing_to_learn_from_are_refused(rewards: dict, message: str) -> None:
    from gsm8k_tr.errors import UserError

    with pytest.raises(UserError) as error:
        build_rewards(rewards)
    assert message in str(error.value)
    # a negative weight beside a positive one is a penalty, and stays allowed
    assert build_rewards({"correctness": 1.0, "xmlcount": -0.5})[1] == [1.0, -0.5]


def test_a_new_reward_is_one_registered_function() -> None:
    from gsm8k_tr.grading import rewards

    @rewards.register("length_test")
    def length_test_reward_func(completions, answer=None, *, limit: int = 3, **kwargs):
        return [1.0 if len(rewards.completion_text(c)) <= limit else 0.0 for c in completions]

    try:
        funcs, weights = build_rewards({"length_test": {"weight": 0.5, "limit": 5}})
        assert funcs[0](["kısa", "çok uzun metin"]) == [1.0, 0.0] and weights == [0.5]
    finally:
        del rewards.REWARDS["length_test"]
