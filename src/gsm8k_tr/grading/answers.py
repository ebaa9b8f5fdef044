"""Reading numbers out of model text and grading them against a gold answer.

This is the one grader of the project: the correctness reward, `evaluate` and
the data preparation all call it, so the training signal and the reported
accuracy cannot drift apart.

Numbers are kept as sets of `Fraction` readings because Turkish and English
swap the roles of "." and ",": `1.250` is 1250 in Turkish and 1.25 in English.
A prediction is correct when any valid reading of its final number equals the
gold. Gold answers themselves are read once, preferring digit grouping, which
is the GSM8K convention (all its answers are written with grouping commas).

Everything here is linear in the length of the text and never raises on
arbitrary input: completions are untrusted model output.
"""

from __future__ import annotations

from fractions import Fraction

from gsm8k_tr.grading.digits import Readings, final_digit_number, fraction_sign
from gsm8k_tr.grading.numwords import turkish_numbers

# Spelled-out numbers are looked for only in this many final characters: an
# answer that spells its number ends with it, and the cap keeps the scan cheap.
_WORD_WINDOW = 4096


def last_number(text: str) -> Readings | None:
    """Readings of the final number in `text`: digits first, else Turkish words.

    Digits win over words because "bir" is also the Turkish article: in
    "5 elma bir sepette" the answer is 5, not 1. Words are read only in the
    last few thousand characters.

    >>> sorted(str(r) for r in last_number("Cevap: 72 73 74"))
    ['74']
    >>> sorted(str(r) for r in last_number("yetmiş iki"))
    ['72']
    >>> last_number("sayı yok") is None
    True
    """
    digits = final_digit_number(text)
    if digits is not None:
        return digits
    words = turkish_numbers(text[-_WORD_WINDOW:])
    if words:
        return frozenset({words[-1]})
    return fraction_sign(text)


def answer_block(text: str, tag: str = "cevap") -> str | None:
    """Content of the last `<tag>…</tag>` block; an unclosed one runs to the end.

    >>> answer_block("<cevap>1</cevap> <cevap>2</cevap>")
    '2'
    >>> answer_block("<cevap>\\n3 elma")
    '\\n3 elma'
    >>> answer_block("cevap 3") is None
    True
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.rfind(opening)
    if start < 0:
        return None
    start += len(opening)
    end = text.find(closing, start)
    return text[start:] if end < 0 else text[start:end]


def preferred(readings: Readings) -> Fraction:
    """The one reading to keep of an ambiguous number: the grouping one.

    Grouping drops the decimal point, so it is always the reading of largest
    magnitude ("1,000" is 1000, not 1), as GSM8K writes its answers.

    >>> preferred(frozenset({Fraction(1), Fraction(1000)}))
    Fraction(1000, 1)
    """
    return max(readings, key=abs)


def parse_gold(text: str) -> Fraction:
    """Read a gold answer such as "18", "1,250", "-3" or "0.5" into one value.

    Raises ValueError when `text` holds no number. Of several readings the
    grouping one wins ("1,250" is 1250, "1,000" is 1000): see `preferred`.

    >>> parse_gold("#### 1,250"), parse_gold("1,000")
    (Fraction(1250, 1), Fraction(1000, 1))
    """
    readings = last_number(text)
    if not readings:
        raise ValueError(f"no number in gold answer {text[:80]!r}")
    return preferred(readings)


def canonical(value: Fraction) -> str:
    """A plain string for a number: "1250", "-3", "12.5", or "1/3" if it repeats.

    >>> canonical(Fraction(25, 2)), canonical(Fraction(1, 3)), canonical(Fraction(-4))
    ('12.5', '1/3', '-4')
    """
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    digits = str(abs(value.numerator * 10**places // value.denominator)).rjust(places + 1, "0")
    return f"{'-' if value < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def _gold_value(gold: str | int | float | Fraction) -> Fraction | None:
    if isinstance(gold, Fraction):
        return gold
    if isinstance(gold, int):
        return None if isinstance(gold, bool) else Fraction(gold)
    if isinstance(gold, float):
        return Fraction(str(gold)) if gold == gold and abs(gold) != float("inf") else None
    try:
        return parse_gold(str(gold))
    except ValueError:
        return None


def matches(readings: Readings | None, gold: str | int | float | Fraction) -> bool:
    """Whether any reading equals the gold answer."""
    value = _gold_value(gold)
    return bool(readings) and value is not None and value in readings


def extract_answer(completion: str, answer_tag: str = "cevap") -> Readings | None:
    """Readings of the final number inside the last answer block, if any."""
    block = answer_block(completion, answer_tag)
    return None if block is None else last_number(block)


def is_correct(completion: str, gold: str | int | float | Fraction, answer_tag: str = "cevap") -> bool:
    """Grade a completion: the final number of its last answer block vs the gold.

    >>> is_correct("<sebep>\\n...\\n</sebep>\\n<cevap>\\n1.250 TL'dir\\n</cevap>", "1250")
    True
    >>> is_correct("<cevap>7.2</cevap>", "72"), is_correct("72", "72")
    (False, False)
    """
    return matches(extract_answer(completion, answer_tag), gold)


def is_correct_flexible(completion: str, gold: str | int | float | Fraction) -> bool:
    """Grade the last number anywhere in the text, as lm-evaluation-harness's flexible extract does.

    >>> is_correct_flexible("Toplam 18 dolar.", 18)
    True
    """
    return matches(last_number(completion), gold)


def shown(readings: Readings | None, gold: str | int | float | Fraction | None = None) -> str | None:
    """The reading to show for a prediction: the one equal to the gold if any."""
    if not readings:
        return None
    value = _gold_value(gold) if gold is not None else None
    if value is not None and value in readings:
        return canonical(value)
    return canonical(preferred(readings))
