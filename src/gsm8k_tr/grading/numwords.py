"""Numbers written as words: Turkish for grading, English for aligning with GSM8K.

Simplifications, said plainly: only cardinal numbers and the distributives
of units and tens ("üçer": 3 each) are read ("üçüncü" is not 3), a word
carries a suffix only in its copula forms ("ikidir", "üçtür")
because wider suffix stripping turns pronouns such as "onu"/"ona" into 10,
and of the fraction words only "buçuk", "yarım", "half" and Turkish's
"üçte bir" form are read ("dörtte üçü" is 3/4; "onda bir" is left alone,
since "onda" is also "at him", and "yüzde elli" stays 50, as GSM8K writes a
percentage).
Number words run together ("onbeş", "ikiyüzelli") are read as if spaced, and
"virgül" between two numbers is the decimal point ("üç virgül beş" is 3.5).
Every function here runs in time linear in its input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

_TR_UNITS = {
    "sıfır": 0, "bir": 1, "iki": 2, "üç": 3, "dört": 4,
    "beş": 5, "altı": 6, "yedi": 7, "sekiz": 8, "dokuz": 9,
}
_TR_TENS = {
    "on": 10, "yirmi": 20, "otuz": 30, "kırk": 40, "elli": 50,
    "altmış": 60, "yetmiş": 70, "seksen": 80, "doksan": 90,
}
_TR_SCALES = {"bin": 1000, "milyon": 10**6, "milyar": 10**9}
_TR_WORDS = {**_TR_UNITS, **_TR_TENS, "yüz": 100, **_TR_SCALES}

_EN_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_EN_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_EN_SCALES = {"thousand": 1000, "million": 10**6, "billion": 10**9}
_EN_WORDS = {**_EN_UNITS, **_EN_TENS, "hundred": 100, **_EN_SCALES}

# Copula endings after vowel harmony and consonant assimilation ("beştir",
# "yediydi"). The bare word or one of these is accepted, nothing else.
_TR_COPULAS = tuple(
    sorted(
        {
            f"{y}{d}{v}{r}"
            for y in ("", "y")
            for d in ("d", "t")
            for v in ("i", "ı", "u", "ü")
            for r in ("r", "")
        },
        key=len,
        reverse=True,
    )
)

# A denominator is a number word in the locative ("üçte", "yirmide"); its numerator follows, bare or with the
# possessive and a case ending ("üçte bir", "dörtte üçünü", "beşte birine"). Only units and tens from two: "birde"
# is no fraction, "onda" is also "at him", and "yüzde"/"binde" are percentages, read as the number after them.
_TR_DENOMINATORS = {word: value for word, value in {**_TR_UNITS, **_TR_TENS}.items() if value >= 2 and word != "on"}
_TR_NUMERATORS = {**_TR_UNITS, **_TR_TENS, "dörd": 4}  # "dörd": the stem before a vowel ("dördü")


def _alternatives(words: dict[str, int]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_TR_LOCATIVE = re.compile(rf"(?P<stem>{_alternatives(_TR_DENOMINATORS)})[dt][ea]")
_TR_POSSESSIVE = re.compile(rf"(?P<stem>{_alternatives(_TR_NUMERATORS)})s?[iıuü](?:n(?:[iıuüea]|d[ae]n?)?|[dt][iıuü]r)?")

# Words are runs of letters; apostrophes end a word so "üç'tür" reads "üç".
_WORD = re.compile(r"[^\W\d_]+")


def turkish_lower(word: str) -> str:
    """Lower case as Turkish writes it: "İKİ" is "iki" and "ALTI" is "altı" (Python's own `lower` gives "i̇ki̇",
    with a combining dot, and "alti")."""
    return word.replace("İ", "i").replace("I", "ı").lower()


# Verbs spelled as a number word with its copula: "bindi" is "got on" ("otobüse beş kişi bindi"), among the 21k most
# common Turkish words in wordfreq 3.1, far more often than "was a thousand".
_TR_VERBS = frozenset({"bindi"})
# Distributives ("üçer elma": three apples each) of the units and tens: the number each one gets. Not "onar", "yüzer"
# and "biner", which are far more often verbs ("repairs", "swims", "rides").
_TR_DISTRIBUTIVES = {
    "birer": 1, "ikişer": 2, "üçer": 3, "dörder": 4, "beşer": 5, "altışar": 6, "yedişer": 7, "sekizer": 8,
    "dokuzar": 9, "yirmişer": 20, "otuzar": 30, "kırkar": 40, "ellişer": 50, "altmışar": 60, "yetmişer": 70,
    "seksener": 80, "doksanar": 90,
}


def _tr_lookup(word: str) -> tuple[str, int | None]:
    """Map one lower-cased Turkish word to (kind, value) of a number word."""
    if word in _TR_WORDS:
        return word, _TR_WORDS[word]
    if word in _TR_VERBS:
        return word, None
    if word in _TR_DISTRIBUTIVES:
        return word, _TR_DISTRIBUTIVES[word]
    for ending in _TR_COPULAS:
        if word.endswith(ending) and word[: -len(ending)] in _TR_WORDS:
            stem = word[: -len(ending)]
            return stem, _TR_WORDS[stem]
    return word, None


def _tr_denominator(word: str) -> int | None:
    """The value of a lower-cased Turkish denominator word ("üçte": 3), else None."""
    match = _TR_LOCATIVE.fullmatch(word)
    return _TR_DENOMINATORS[match.group("stem")] if match else None


def _tr_numerator(word: str) -> int | None:
    """The value of a lower-cased number word with the possessive a fraction's numerator takes ("biri", "üçünü",
    "ikisine"), else None. Read only after a denominator: alone, "onu" is "him"."""
    match = _TR_POSSESSIVE.fullmatch(word)
    return _TR_NUMERATORS[match.group("stem")] if match else None


def _kind(value: int, scales: dict[str, int], word: str) -> str:
    if word in scales:
        return "scale"
    if value == 100:
        return "hundred"
    return "ten" if value >= 10 and value % 10 == 0 and value < 100 else "unit"


class _Builder:
    """Accumulates one spelled-out number; says when a word cannot extend it."""

    def __init__(self) -> None:
        self.total = 0  # completed scale groups (thousands, millions, ...)
        self.small = 0  # the group below 1000 being read
        self.last = ""  # kind of the previous word
        self.last_scale = 10**12
        self.words = 0
        self.half = False  # "buçuk" or "yarım" read last: only a scale word may follow ("bir buçuk milyon")

    def add(self, kind: str, value: int) -> bool:
        """Add a word; False when it must start a new number instead."""
        last = self.last
        if self.half and kind != "scale":
            return False
        if kind == "unit":
            if last in ("unit",) or (last == "ten" and value >= 10):
                return False
            self.small += value
        elif kind == "ten":
            if last in ("unit", "ten"):
                return False
            self.small += value
        elif kind == "hundred":
            if last in ("hundred", "ten") or self.small >= 100:
                return False
            self.small = (self.small or 1) * 100
        else:  # scale
            if value >= self.last_scale:
                return False
            if self.half:  # "bir buçuk milyon": 1,500,000; "yarım milyon": 500,000
                self.total += int((self.small + Fraction(1, 2)) * value)
                self.half = False
            else:
                self.total += (self.small or 1) * value
            self.small = 0
            self.last_scale = value
        self.last = kind
        self.words += 1
        return True

    def value(self) -> Fraction:
        return self.total + self.small + (Fraction(1, 2) if self.half else 0)


_TR_STEM = re.compile(_alternatives(_TR_WORDS))  # no stem begins another, so at most one matches at a place
_MAX_JOINED = 12  # stems in one word: "dokuzyüzdoksandokuzbindokuzyüzdoksandokuz" has 10
_MAX_ZEROS = 12  # zeros after a decimal point read as its leading decimals; more start numbers of their own


def _tr_split(word: str) -> list[str]:
    """A lower-cased Turkish word as the number words written in it: "onbeş" is ["on", "beş"], "ikiyüzellidir"
    ["iki", "yüz", "ellidir"], as informal Turkish runs them together. Any other word is itself: one with more than
    a copula after its stems ("yüzbinlerce", "yüzyıl"), and one whose stems make no single number ("beşon"). Of the
    63,345 words in wordfreq 3.1's list of common Turkish words, 6 split, each a number ("oniki", "binbir")."""
    if word in _TR_WORDS or not _TR_STEM.match(word):  # cheaply, most words
        return [word]
    parts: list[str] = []
    at = 0
    while len(parts) < _MAX_JOINED and (stem := _TR_STEM.match(word, at)):
        parts.append(stem.group())
        at = stem.end()
    rest = word[at:]
    if len(parts) < 2 or (rest and rest not in _TR_COPULAS):
        return [word]
    builder = _Builder()
    if not all(builder.add(_kind(_TR_WORDS[part], _TR_SCALES, part), _TR_WORDS[part]) for part in parts):
        return [word]
    parts[-1] += rest
    return parts


def _decimal(whole: Fraction, zeros: int, digits: int | Fraction | None) -> Fraction:
    """`whole` with the decimals read after its point: "üç virgül sıfır beş" is 3 + 5/100 (one zero, then 5)."""
    if digits is None:
        return whole
    digits = Fraction(digits)
    return whole + digits / 10 ** (zeros + len(str(digits.numerator)))


def _spelled_numbers(
    text: str,
    scales: dict[str, int],
    lookup: Callable[[str], tuple[str, int | None]],
    halves: dict[str, Fraction],
    lower: Callable[[str], str] = str.lower,
    fractions: tuple[Callable[[str], int | None], Callable[[str], int | None]] | None = None,
    split: Callable[[str], list[str]] = lambda word: [word],
    point: str | None = None,
) -> list[Fraction]:
    """All spelled-out numbers in `text`, in order of appearance; `lower` is the language's lower case. `fractions`
    reads a denominator word and a numerator word that ends a number (Turkish's "dörtte" and "üçü"); `split` parts
    a word into the number words run together in it ("onbeş"); `point` is the decimal point's word ("virgül"),
    after which the zeros and then one number are the decimals ("iki virgül sıfır yirmi beş" is 2.025)."""
    found: list[Fraction] = []
    builder: _Builder | None = None
    negative = False
    pending_negative = False
    over: int | Fraction | None = None  # the denominator of the number being read
    waiting: int | Fraction | None = None  # a denominator just read: the number that starts next is over it
    whole: Fraction | None = None  # the number before a decimal point, while its decimals are read
    zeros = 0  # the decimals' leading zeros read so far
    denominator, numerator = fractions or (lambda _: None, lambda _: None)

    def close() -> None:
        nonlocal builder, negative, over, whole, zeros
        value = Fraction(builder.value()) / (over or 1) if builder is not None and builder.words else None
        if whole is not None:
            value = _decimal(whole, zeros, value)
        if value is not None:
            found.append(-value if negative else value)
        builder = None
        negative = False
        over = whole = None
        zeros = 0

    for raw in (part for match in _WORD.finditer(text) for part in split(lower(match.group(0)))):
        after, waiting = waiting, None
        if raw == point:
            if builder is not None and builder.words and not builder.half and over is None and whole is None:
                whole, builder = Fraction(builder.value()), None  # the sign stays: "eksi üç virgül beş" is -3.5
            else:
                close()
                pending_negative = False
            continue
        if raw in ("eksi", "minus"):
            subtracts = builder is not None and builder.words  # "on eksi beş" is 10 - 5, as "10 - 5" reads
            close()
            pending_negative = not subtracts
            continue
        if raw in halves:
            # The half stays open for a scale word after it: "bir buçuk milyon", "yarım milyon".
            if raw == "buçuk" and builder is not None and builder.words and not builder.half and whole is None:
                builder.half = True
            else:
                close()
                builder = _Builder()
                builder.half, builder.words = True, 1
                negative, pending_negative = pending_negative, False
            continue
        below = denominator(raw)
        if below is not None:
            # "on ikide bir": the words before it may be the denominator's own ("on" + "iki").
            if builder is not None and over is None and whole is None and builder.add(_kind(below, scales, raw), below):
                waiting, pending_negative = builder.value(), negative
                builder, negative = None, False
            else:
                close()
                waiting = below
            continue
        part = numerator(raw) if after is not None or over is not None else None
        stem, value = (raw, part) if part is not None else lookup(raw)
        if value is None:
            close()
            pending_negative = False
            continue
        kind = _kind(value, scales, stem)
        if whole is not None and kind == "scale":  # it scales the whole number: "üç virgül beş milyon" is 3,500,000
            decimals = builder.value() if builder is not None and builder.words else None
            whole, builder = _decimal(whole, zeros, decimals) * value, None
            close()
            continue
        if whole is not None and builder is None:  # the decimals after a point
            if value == 0 and zeros < _MAX_ZEROS:
                zeros += 1
                continue
            builder = _Builder()
        if builder is None or not builder.add(kind, value):
            close()
            builder, over = _Builder(), after
            builder.add(kind, value)
            negative, pending_negative = pending_negative, False
        if part is not None:  # a possessive ends the numerator: "dörtte üçü", "yirmide on üçü"
            close()
    close()
    return found


def turkish_numbers(text: str, fractions: bool = True) -> list[Fraction]:
    """Numbers spelled in Turkish, in order; with `fractions` off, "dörtte üç" is 3, as English's "three quarters"
    reads "three" (the alignment counts fractions itself, in both languages alike).

    >>> [str(n) for n in turkish_numbers("yetmiş iki elma ve bin iki yüz armut")]
    ['72', '1200']
    >>> [str(n) for n in turkish_numbers("iki buçuk saat, cevap üçtür, onbeş ya da ikiyüzelli")]
    ['5/2', '3', '15', '250']
    >>> [str(n) for n in turkish_numbers("dörtte üçünü yedi")], turkish_numbers("dörtte üç", fractions=False)
    (['3/4', '7'], [Fraction(3, 1)])
    >>> turkish_numbers("üç virgül sıfır beş, üç virgül beş milyon")
    [Fraction(61, 20), Fraction(3500000, 1)]
    """
    halves = {"buçuk": Fraction(1, 2), "yarım": Fraction(1, 2)}
    parts = (_tr_denominator, _tr_numerator) if fractions else None
    return _spelled_numbers(text, _TR_SCALES, _tr_lookup, halves, turkish_lower, parts, _tr_split, "virgül")


# One Turkish word after spaces on the same line: the words of "2 bin beş yüz" after its "bin".
_NEXT_WORD = re.compile(r"[ \t\u00a0]+([^\W\d_]+)")
_LEADING_WORDS = 8  # more number words than "dokuz yüz doksan dokuz bin dokuz yüz doksan" never follow one scale word


def leading_turkish_number(text: str) -> Fraction | None:
    """The whole number spelled by the Turkish number words that open `text`, after spaces on its first line.

    >>> leading_turkish_number(" beş yüz TL"), leading_turkish_number(" kişi geldi"), leading_turkish_number(" on, iki")
    (Fraction(500, 1), None, Fraction(10, 1))
    """
    words: list[str] = []
    at = 0
    while len(words) < _LEADING_WORDS:
        match = _NEXT_WORD.match(text, at)
        if match is None or _tr_lookup(_tr_split(turkish_lower(match.group(1)))[0])[1] is None:
            break
        words.append(match.group(1))
        at = match.end()
    numbers = turkish_numbers(" ".join(words))
    return numbers[0] if numbers else None


def english_numbers(text: str) -> list[Fraction]:
    """Numbers spelled in English, in order.

    >>> [str(n) for n in english_numbers("three hundred and twelve apples, half a dozen")]
    ['300', '12', '1/2']
    """
    return _spelled_numbers(
        text, _EN_SCALES, lambda w: (w, _EN_WORDS.get(w)), {"half": Fraction(1, 2)}
    )
