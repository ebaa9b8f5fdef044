"""Numbers written with digits in model text, each as the set of values it can mean.

Turkish and English swap the roles of "." and ",": `1.250` is 1250 in Turkish
and 1.25 in English, so a number is kept as every reading that a convention
allows (`body_readings`). Around the final number, what Turkish writes with it
is read too: its sign ("-5", "eksi 5", "-$5"), a fraction or a fraction sign
("3/4", "2½"), "buçuk", a scale word after it ("6 milyon") or pairs before it
("2 bin 500"), thousands grouped by spaces ("10 000"), and a decimal point
spoken between digits ("3 virgül 5").

Everything here is linear in the length of the text and never raises on
arbitrary input: completions are untrusted model output.
"""

from __future__ import annotations

import re
from fractions import Fraction

from gsm8k_tr.grading.numwords import leading_turkish_number, turkish_lower

Readings = frozenset[Fraction]

# Longer digit runs are never answers; the cap also keeps int() far below
# Python's 4300-digit conversion limit, which would raise.
_MAX_NUMBER_CHARS = 60

# A run of digits with "." and "," inside. A single-class repeat is the
# fastest thing `re` does; signs, fractions and grouping are read in Python
# from the few runs near the end of the text.
_RUN = re.compile(r"[0-9][0-9.,]*")
_SIGNS = "-−–"
# "eksi 5", "minus 5": a sign in a word, within `_SIGN_WINDOW` characters before the digits with what precedes it.
_SIGN_WORDS, _LAST_WORD, _SIGN_WINDOW = ("eksi", "minus"), re.compile(r"[^\W\d_]+$"), 40
_BETWEEN = tuple("$₺€£%(")  # a currency, percent sign or bracket between the sign and the digits: "-$5", "-%5", "-(5)"
_BETWEEN_SPACED = tuple(sign + space for sign in _BETWEEN for space in " \u00a0")  # "eksi ₺ 5", "-€ 5"
_WINDOW = 4096  # characters read per step when looking for the last number
_VULGAR = {
    "½": Fraction(1, 2), "¼": Fraction(1, 4), "¾": Fraction(3, 4),
    "⅓": Fraction(1, 3), "⅔": Fraction(2, 3),
}
# LaTeX forms rewritten to plain text before scanning.
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{([^{}]{0,64})\}\{([^{}]{0,64})\}")
_LATEX_DECIMAL = re.compile(r"\{([.,])\}")
# "3 virgül 5": the decimal point spoken between digits, rewritten as Turkish writes it, with the decimals padded to
# four digits ("3,5000"), which read only as decimals ("5 virgül 250" as "5,250" would read 5,250 too). Plain digits
# on both sides: "1.000 virgül 5" is left as it is.
_SPOKEN_POINT = re.compile(r"(?<![0-9.,])([0-9]{1,20})[ \t\u00a0]{1,4}virgül[ \t\u00a0]{1,4}([0-9]{1,20})"
                           r"(?![0-9]|[.,][0-9])", re.IGNORECASE)
# A scale word right after the final number: "6 milyon kişi", "1,5 milyar", "5 bin TL", "2 million". "bin" takes
# only its case endings: "5 bina" (buildings) and "5 binici" (riders) are not thousands.
_SCALE_AFTER = re.compile(r"\s+(?:(?P<thousand>bin(?:e|i|in|de|den|le|lik|lık|ler|lerce)?\b|thousands?\b)"
                          r"|(?P<million>milyon\w*|millions?\b)|(?P<billion>milyar\w*|billions?\b)"
                          r"|(?P<trillion>trilyon\w*|trillions?\b))", re.IGNORECASE)
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# "2 buçuk saat": two and a half, as "iki buçuk" is in words.
_HALF_AFTER = re.compile(r"\s+buçuk\b", re.IGNORECASE)
# A number and a bare scale word right before the final number: "2 bin 500" is 2,500 and "2 milyon 500 bin"
# 2,500,000, as Turkish writes amounts. Only the bare word: "5 bine 3" is not a compound.
# On one line: "5 bin\n500" is two lines' numbers.
_SCALE_BEFORE = re.compile(r"(?<![0-9.,/])([0-9][0-9.,]*)[ \t\u00a0]+(bin|milyon|milyar|trilyon|thousand|million|billion"
                           r"|trillion)[ \t\u00a0]+$", re.IGNORECASE)
_SCALE_WORDS = {"bin": 10**3, "thousand": 10**3, "milyon": 10**6, "million": 10**6, "milyar": 10**9,
                "billion": 10**9, "trilyon": 10**12, "trillion": 10**12}
_COMPOUND_WINDOW = 200  # characters before the final number looked at for "2 milyon 500 bin 300"
# Thousands grouped by spaces, as print and typesetting write them: "10 000", "1 250 000", also with a no-break or a
# thin space. A head of one to three digits, then groups of exactly three, one space apart.
_GROUP_SPACE = " \u00a0\u202f\u2009"
_SPACED_HEAD = re.compile(rf"(?<![0-9.,/])([0-9]{{1,3}}(?:[{_GROUP_SPACE}][0-9]{{3}})*)[{_GROUP_SPACE}]$")
_SPACED_GROUP = re.compile(r"[0-9]{3}(?:[.,][0-9]+)?")


def _grouped(groups: list[str]) -> bool:
    """Whether digit groups form a valid thousands grouping (1-3, then 3s)."""
    if len(groups) == 1:
        return True
    head, rest = groups[0], groups[1:]
    return 1 <= len(head) <= 3 and head[0] != "0" and all(len(g) == 3 for g in rest)


def body_readings(body: str) -> Readings:
    """Every valid numeric reading of a digit string with "." and "," in it.

    >>> sorted(str(r) for r in body_readings("1.250"))
    ['1250', '5/4']
    >>> sorted(str(r) for r in body_readings("1.250,5"))
    ['2501/2']
    >>> sorted(str(r) for r in body_readings("1,25"))
    ['5/4']
    """
    if len(body) > _MAX_NUMBER_CHARS:
        return frozenset()
    groups = re.split(r"[.,]", body)
    seps = [c for c in body if c in ".,"]
    if "" in groups:  # "1,,2": no convention allows it; keep what came last
        return frozenset({Fraction(int(groups[-1]))}) if groups[-1] else frozenset()
    if not seps:
        return frozenset({Fraction(int(body))})
    found: set[Fraction] = set()
    last = seps[-1]
    # The last separator is a decimal point; earlier ones group thousands
    # with the other character ("1.250,5", "1,250.5", "12,5").
    if all(s != last for s in seps[:-1]) and _grouped(groups[:-1]):
        frac = groups[-1]
        found.add(int("".join(groups[:-1])) + Fraction(int(frac), 10 ** len(frac)))
    # Every separator groups thousands ("1.000.000", "1,250").
    if len(set(seps)) == 1 and _grouped(groups):
        found.add(Fraction(int("".join(groups))))
    if not found:
        # Not a number in any convention (a date, a version): like a spray of
        # numbers, its last group is what was written last.
        found.add(Fraction(int(groups[-1])))
    return frozenset(found)


def _normalise(text: str) -> str:
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    text = _LATEX_DECIMAL.sub(r"\1", text)
    # "virgül", "VİRGÜL": tested for first, as the regex over every text took 12% longer on the sample's texts
    if "irg" in text or "IRG" in text or "İRG" in text:
        text = _SPOKEN_POINT.sub(lambda m: f"{m[1]},{m[2].ljust(4, '0')}", text)
    return text.replace("\\,", "").replace("\\!", "")


def _scan(text: str, start: int, end: int) -> list[Readings]:
    """Numbers whose first digit lies in text[start:end], in order.

    A run cut by `start` is skipped: the caller reads it whole in its next,
    earlier window.
    """
    runs: list[tuple[int, int, str]] = []
    # Past `end` only a denominator is needed; a run cut by this limit is
    # longer than any readable number, so cutting it changes nothing.
    limit = min(len(text), end + 3 * _MAX_NUMBER_CHARS)
    for match in _RUN.finditer(text, start, limit):
        at = match.start()
        if at == start and at > 0 and text[at - 1] in "0123456789.,":
            continue
        body = match.group().rstrip(".,")  # "18." ends a sentence
        runs.append((at, at + len(body), body))
        if at >= end:  # one run past the window, for a fraction's denominator
            break
    numbers: list[tuple[int, int, Readings]] = []
    i = 0
    while i < len(runs):
        first, stop, body = runs[i]
        i += 1
        readings = body_readings(body)
        is_fraction = False
        if i < len(runs) and text[stop:stop + 1] == "/" and runs[i][0] == stop + 1:
            dens = [d for d in body_readings(runs[i][2]) if d != 0]
            readings = frozenset(n / d for n in readings for d in dens)
            stop = runs[i][1]
            i += 1
            is_fraction = True
        if text[stop:stop + 1] in _VULGAR:
            readings = frozenset(r + _VULGAR[text[stop]] for r in readings)
            stop += 1
        before = text[first - 1] if first else ""
        if before and (before in _SIGNS or before.isspace() or before in _BETWEEN) \
                and _sign_before(text[max(0, first - _SIGN_WINDOW):first]):  # it says yes only after these
            readings = frozenset(-r for r in readings)
        elif is_fraction and numbers and numbers[-1][1] == first - 1 and before == " ":
            # "2 1/2" is a mixed number: a whole number, one space, a proper fraction.
            whole = numbers[-1][2]
            if all(0 < r < 1 for r in readings) and all(w.denominator == 1 for w in whole):
                first = numbers.pop()[0]
                readings = frozenset(w + r if w >= 0 else w - r for w in whole for r in readings)  # "-2 1/2": -5/2
        if readings and first < end:
            numbers.append((first, stop, readings))
    return [readings for _, _, readings in numbers]


def digit_numbers(text: str) -> list[Readings]:
    """Numbers written with digits, in order, each as its set of readings.

    >>> [sorted(str(r) for r in n) for n in digit_numbers("%25 indirim, 3/4 ve 2½; −7, 10-3")]
    [['25'], ['3/4'], ['5/2'], ['-7'], ['10'], ['3']]
    """
    text = _normalise(text)
    return _scan(text, 0, len(text))


def _last_digit_number(text: str) -> Readings | None:
    """The final digit number of already normalised text, reading only its tail.

    `rfind` finds the last digit; only a window before it is tokenised, and
    the window moves back while it holds nothing that reads as a number.
    Both searches look at one window at a time: an `rfind` over the whole
    prefix, repeated per window, made a 10 MB run like "1,1,1,…" quadratic.
    """
    stop = len(text)
    while stop > 0:
        low = max(0, stop - _WINDOW)
        last = max(text.rfind(digit, low, stop) for digit in "0123456789")
        if last < 0:
            stop = low
            continue
        start = max(0, last - _WINDOW)
        numbers = _scan(text, start, last + 1)
        if numbers:
            return numbers[-1]
        stop = start
    return None


def final_digit_number(text: str) -> Readings | None:
    """Readings of the final number written with digits in `text`, with the words, groups and signs around it that
    belong to it; a fraction sign alone after the last digits ("3 elmanın ½'si") is that number. None without digits.

    >>> sorted(str(r) for r in final_digit_number("Cevap: 72 73 2 bin 500 TL"))
    ['2500']
    """
    text = _normalise(text)
    digits = _last_digit_number(text)
    if digits is None:
        return None
    end = max(text.rfind(digit) for digit in "0123456789") + 1
    lone = max(text.rfind(v) for v in _VULGAR)
    if lone > end + 1:
        return frozenset({_VULGAR[text[lone]]})
    return _compounded(_scaled(_spaced(digits, text, end), text, end), text, end)


def fraction_sign(text: str) -> Readings | None:
    """The last fraction sign in `text` ("½", "¾"), for text with no digits; None without one."""
    lone = max(text.rfind(v) for v in _VULGAR)
    return frozenset({_VULGAR[text[lone]]}) if lone >= 0 else None


def _word(word: str) -> str:
    """A scale word as `_SCALE_WORDS` spells it, in whatever case it was written ("BİN", "MILYON", "Million")."""
    return turkish_lower(word).replace("ı", "i")


def _run_start(text: str, end: int) -> int:
    """Where the run of digits, "." and "," that ends at `end` begins."""
    start = end
    while start > 0 and text[start - 1] in "0123456789.,":
        start -= 1
    return start


def _sign_before(head: str) -> bool:
    """Whether `head`, the text before a number's digits, ends in its sign ("-5", "eksi 5"), not in subtraction: a
    minus right after a word, digit or bracket ("10-3", "x-3"), "eksi" or "minus" after a number ("10 eksi 3")."""
    head = head[:-1] if head.endswith(_BETWEEN) else head[:-2] if head.endswith(_BETWEEN_SPACED) else head
    if head[-1:] in tuple(_SIGNS):
        return not (len(head) > 1 and (head[-2].isalnum() or head[-2] in ")_"))
    tail = head.rstrip(" \t\u00a0")
    word = _LAST_WORD.search(tail) if tail != head and _word(tail[-5:]).endswith(_SIGN_WORDS) else None
    if word is None or _word(word.group()) not in _SIGN_WORDS:  # mostly no word, cheaply; "teksi 5": no sign
        return False
    before = tail[:word.start()].rstrip()
    last_word = _LAST_WORD.search(before)
    return not (before[-1:].isdigit() or before.endswith((")", "_"))
                or (last_word is not None and leading_turkish_number(" " + last_word.group()) is not None))


def _spaced(readings: Readings, text: str, end: int) -> Readings:
    """The final number (its digits end at `end`) with the groups of thousands written before it one space apart:
    "10 000" reads 10,000 as well as 0, "1 250,5" 1,250.5 as well as 250.5. Both stay readings: "2 100 liralık"
    (two hundred-lira notes) is written the same way."""
    start = _run_start(text, end)
    if not _SPACED_GROUP.fullmatch(text, start, end):
        return readings
    head = _SPACED_HEAD.search(text, max(0, start - _COMPOUND_WINDOW), start)
    if head is None:
        return readings
    groups = re.split(f"[{_GROUP_SPACE}]", head.group(1))
    if groups[0].startswith("0"):
        return readings
    whole = int("".join(groups)) * 1000
    joined = frozenset(whole + r for r in readings if 0 <= r < 1000)
    if _sign_before(text[max(0, head.start() - _SIGN_WINDOW):head.start()]):
        joined = frozenset(-r for r in joined)
    return readings | joined


def _scaled(readings: Readings, text: str, after: int) -> Readings:
    """The final number's readings (its digits end at `after`) with what follows them: a fraction sign ("2½",
    "2 ½"), "buçuk" ("2 buçuk": 2.5) and a scale word ("6 milyon": 6,000,000; "2 buçuk milyon": 2,500,000)."""
    if text[after:after + 1] in _VULGAR:  # "2½ milyon"; a full stop after the digits ends the sentence instead
        after += 1
    elif text[after:after + 1] == " " and text[after + 1:after + 2] in _VULGAR:
        readings = frozenset(r + _VULGAR[text[after + 1]] for r in readings if r >= 0 and r.denominator == 1) \
            or readings
        after += 2
    else:
        half = _HALF_AFTER.match(text, after)
        if half:
            readings = frozenset(r + Fraction(1, 2) for r in readings if r >= 0 and r.denominator == 1) or readings
            after = half.end()
    scale = _SCALE_AFTER.match(text, after)
    if scale is None:
        return readings
    size = _SCALES[scale.lastgroup]
    readings = frozenset(r * size for r in readings)
    # "2 bin beş yüz": the rest of the amount in words, smaller than the scale, after the bare scale word only ("3
    # bine beş" is not 3,005). A lone "bir" after it may be the article ("5 bin bir sepette") as well as 5,001, so
    # it adds a reading instead of replacing one.
    if _word(scale.group(scale.lastgroup)) not in _SCALE_WORDS:
        return readings
    rest = leading_turkish_number(text[scale.end():scale.end() + _COMPOUND_WINDOW])
    if rest is None or not 0 < rest < size or not all(r.denominator == 1 for r in readings):
        return readings
    joined = frozenset(r + rest if r >= 0 else r - rest for r in readings)
    return readings | joined if rest == 1 else joined


def _compounded(readings: Readings, text: str, end: int) -> Readings:
    """The final number (its digits end at `end`) with the number-and-scale pairs written before it: "2 bin 500" is
    2,500, "1 milyon 200 bin 300" 1,200,300. A pair counts only over a smaller remainder ("5 bin 1.500" stays 1,500)."""
    start = _run_start(text, end)
    head = text[max(0, start - _COMPOUND_WINDOW):start]
    while True:
        pair = _SCALE_BEFORE.search(head)
        if pair is None:
            return readings
        scale = _SCALE_WORDS.get(_word(pair.group(2)))  # None: a letter only re's case folding matches ("ſ" for s)
        if scale is None or not all(0 <= r < scale for r in readings):  # "5 bin 1.500": 1,500 is no remainder
            return readings
        readings = frozenset(b * scale + r for b in body_readings(pair.group(1).rstrip(".,")) for r in readings)
        head = head[:pair.start()]
        if _sign_before(head):  # "-2 bin 500" is -2,500
            return frozenset(-r for r in readings)
