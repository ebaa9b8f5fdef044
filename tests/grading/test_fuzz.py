"""Hypothesis: the grader and the rewards take any text without raising, quickly."""

import pytest
from conftest import scan_seconds
from hypothesis import given, settings
from hypothesis import strategies as st

from gsm8k_tr.grading.answers import is_correct, is_correct_flexible, last_number
from gsm8k_tr.grading.digits import digit_numbers
from gsm8k_tr.grading.rewards import REWARDS

# Text built from the pieces that matter (tags, digits, separators, signs,
# number words) mixed with arbitrary Unicode.
PIECES = st.sampled_from(
    ["<sebep>", "</sebep>", "<cevap>", "</cevap>", "\n", " ", "1", "25", ".", ",", "/", "-", "−", "%", "½",
     "yüz", "bin", "iki", "buçuk", "eksi", "\\frac{", "}{", "}", "'dir", "**", "000", "\u00a0", "BİN", "MİLYON",
     "İKİ", "milyon", "bir"]
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

    def scans() -> None:
        for reward in REWARDS.values():
            reward([text], answer=["1"])
        last_number(text)

    assert scan_seconds(scans) < 2.0  # five linear scans of 1 MB; quadratic would take minutes


TAGS = st.sampled_from(["<sebep>", "</sebep>", "<cevap>", "</cevap>", "<cevap", "sebep>", "</", "<", ">", "\n", "7"])


@settings(max_examples=40, deadline=None)
@given(tags=st.lists(TAGS, min_size=1000, max_size=5000), nested=st.integers(0, 2000))
def test_thousands_of_nested_and_unbalanced_tags(tags: list[str], nested: int) -> None:
    text = "<sebep>" * nested + "".join(tags) + "</cevap>" * nested
    for name, reward in REWARDS.items():
        (score,) = reward([text], answer=["7"])
        assert 0.0 <= score <= 2.0, name
    assert is_correct(text, "7") in (True, False) and is_correct_flexible(text, "7") in (True, False)


# Text shapes that make naive scanners backtrack or rescan: long runs of one tag, separators between digits
# (one 10 MB "number"), digits only at the start, unclosed blocks, nested blocks.
HOSTILE = ["<sebep>", "</cevap>", "<sebep><cevap>", "<cevap>\n1\n", "1,", "1.2.", "- ", "1/", "½ ", "<<<", "a",
           "<sebep>\nx\n</sebep>\n<cevap>\n", "1 000 ", "5 bin beş yüz "]


def _grade_all(text: str) -> float:
    def grade() -> None:
        for reward in REWARDS.values():
            reward([text], answer=["1"])
        is_correct(text, "1"), is_correct_flexible(text, "1"), last_number(text)

    return scan_seconds(grade)


@pytest.mark.slow
@pytest.mark.parametrize("unit", HOSTILE)
def test_time_grows_linearly_up_to_10_mb(unit: str) -> None:
    def text(size: int) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    small = min(_grade_all(text(1_000_000)) for _ in range(3))
    large = _grade_all(text(10_000_000))
    # Ten times the text: linear is ~10x; a quadratic step (an rfind over the whole prefix per window, as
    # last_number once had for "1,1,1,…") is ~100x. The slack absorbs timer noise on small figures.
    assert large < 30 * small + 0.25, (unit, small, large)


def test_last_number_agrees_with_the_full_scan() -> None:
    # The tail-window search must find what a scan of the whole text finds.
    for text in ["a 1,5 b 2.250 c", "x 9" + " y" * 5000, "7 " + "9" * 100 + " z", "3 1/2", "—" * 9000 + "-4"]:
        numbers = digit_numbers(text)
        assert last_number(text) == (numbers[-1] if numbers else None), text[:30]
