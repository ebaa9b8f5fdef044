"""Hypothesis: the grader and the rewards take any text without raising, quickly."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gsm8k_tr.answers import digit_numbers, is_correct, is_correct_flexible, last_number
from gsm8k_tr.rewards import REWARDS

# Text built from the pieces that matter (tags, digits, separators, signs,
# number words) mixed with arbitrary Unicode.
PIECES = st.sampled_from(
    ["<sebep>", "</sebep>", "<cevap>", "</cevap>", "\n", " ", "1", "25", ".", ",", "/", "-", "−", "%", "½",
     "yüz", "bin", "iki", "buçuk", "eksi", "\\frac{", "}{", "}", "'dir", "**"]
)
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=TEXT, gold=st.one_of(st.text(max_size=10), st.integers(), st.floats(allow_nan=True)))
def test_grader_never_raises(text: str, gold: object) -> None:
    assert is_correct(text, gold) in (True, False)  # type: ignore[arg-type]
    assert is_correct_flexible(text, gold) in (True, False)  # type: ignore[arg-type]
    assert last_number(text) is None or len(last_number(text)) >= 1


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=4))
def test_rewards_never_raise_and_stay_in_range(texts: list[str]) -> None:
    for name, reward in REWARDS.items():
        scores = reward(texts, answer=["1"] * len(texts))
        assert len(scores) == len(texts)
        assert all(0.0 <= s <= 2.0 for s in scores), name


@settings(max_examples=30, deadline=None)
@given(unit=TEXT.filter(bool))
def test_long_inputs_stay_fast(unit: str) -> None:
    text = (unit * (1_000_000 // len(unit) + 1))[:1_000_000]
    start = time.perf_counter()
    for reward in REWARDS.values():
        reward([text], answer=["1"])
    last_number(text)
    assert time.perf_counter() - start < 2.0  # five linear scans of 1 MB; quadratic would take minutes


def test_last_number_agrees_with_the_full_scan() -> None:
    # The tail-window search must find what a scan of the whole text finds.
    for text in ["a 1,5 b 2.250 c", "x 9" + " y" * 5000, "7 " + "9" * 100 + " z", "3 1/2", "—" * 9000 + "-4"]:
        numbers = digit_numbers(text)
        assert last_number(text) == (numbers[-1] if numbers else None), text[:30]
