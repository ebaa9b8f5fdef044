"""Matching translated questions to their English GSM8K originals.

A translation keeps the numbers and the names and changes almost every other
word. Each question becomes a bag of features: its numbers (digits and number
words, read in both languages' conventions, percentages apart), its names, and
concepts from a small bilingual lexicon. Features are weighted by rarity (idf)
and compared with a weighted Dice score.

The question decides. Candidates are ranked by question evidence alone; the
numbers of the machine-written solution, and whether its final number equals a
candidate's official answer, only break near-ties between candidates whose
question evidence is close. A wrong solution whose answer happens to be
another problem's gold therefore cannot pull a row away from its original. A
candidate whose question numbers largely disagree with the Turkish question's
is no match, whatever the solution says; one whose numbers differ in part is a
match with `numbers_changed` (a translation that converted units or rephrased
a quantity), so its official gold does not fit the Turkish question.

Each row also learns the English *test* question nearest to it by question
evidence, whether its numbers fit or not, so that a paraphrased test question
with other numbers is kept out of training even when it aligns elsewhere or
not at all (`Alignment.near_test`).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from gsm8k_tr.data.lexicon import WEEKDAYS_AND_MONTHS, english_concepts, turkish_concepts
from gsm8k_tr.grading.answers import canonical, preferred
from gsm8k_tr.grading.digits import Readings, body_readings, digit_numbers
from gsm8k_tr.grading.numwords import english_numbers, turkish_lower, turkish_numbers

_NAME = re.compile(r"[A-ZÇĞİÖŞÜ][a-zçğıöşü]+")
_LOWER_WORD = re.compile(r"(?<![^\W\d_])[a-zçğıöşü]+")  # a word written in lower case
_SENTENCE_END = re.compile(r"(?:^|[.!?:;…]|\n)[\s\"'“‘(]*$")
_EN_MULTIPLES = {
    "twice": Fraction(2), "double": Fraction(2), "doubles": Fraction(2), "doubled": Fraction(2),
    "triple": Fraction(3), "triples": Fraction(3), "tripled": Fraction(3), "thrice": Fraction(3),
    "quadruple": Fraction(4), "quadrupled": Fraction(4), "dozen": Fraction(12), "dozens": Fraction(12),
}
_EN_MULTIPLE_RE = re.compile(r"\b(" + "|".join(_EN_MULTIPLES) + r")\b", re.IGNORECASE)
# "a fifth", "two-thirds", "three quarters"; a bare "third" is as often an ordinal ("the third day").
_EN_PARTS = {"third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4, "fourths": 4, "fifth": 5,
             "fifths": 5, "sixth": 6, "sixths": 6, "eighth": 8, "eighths": 8, "tenth": 10, "tenths": 10}
_EN_COUNTS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "seven": 7, "nine": 9}
_EN_FRACTION = re.compile(r"\b(" + "|".join(_EN_COUNTS) + r")[- ](" + "|".join(_EN_PARTS) + r")\b", re.IGNORECASE)
# Turkish words for parts and multiples that numwords leaves to the grader's context: "yarısı" (half),
# "çeyreği" (a quarter), "düzine" (a dozen), "dörtte üçü" (three quarters).
_TR_PART = re.compile(r"\b(yarı(?=sı|ya\b|yı\b|da\b|dan\b|\b)|yarım|çeyrek|çeyreğ|düzine)\w*", re.IGNORECASE)
_TR_PART_VALUE = {"yarı": Fraction(1, 2), "yarım": Fraction(1, 2), "çeyrek": Fraction(1, 4),
                  "çeyreğ": Fraction(1, 4), "düzine": Fraction(12)}
_TR_SMALL = {"bir": 1, "iki": 2, "üç": 3, "dört": 4, "beş": 5, "altı": 6, "yedi": 7, "sekiz": 8, "dokuz": 9, "on": 10}
_TR_FRACTION = re.compile(r"\b(iki|üç|dört|beş|altı|yedi|sekiz|dokuz|on)(?:de|da|te|ta)\s+(bir|iki|üç|dört|beş|altı|"
                          r"yedi|sekiz|dokuz)\w*", re.IGNORECASE)
# "yedi" is seven, and also "ate": at the end of a clause (Turkish verbs come last) it is the verb.
_TR_ATE = re.compile(r"\byedi(?=\s*(?:[.,;:!?]|$|\s+ve\b))", re.IGNORECASE)
_TR_PERCENT = re.compile(r"(?:%|\byüzde\s*)\s*([0-9][0-9.,]*)", re.IGNORECASE)
_EN_PERCENT = re.compile(r"([0-9][0-9.,]*)\s*(?:%|percent\b)", re.IGNORECASE)
# Ordinary Turkish words that open sentences capitalised; a corpus of rows teaches more (see `Aligner`).
_TR_COMMON = set("bir bu şu o her kaç ne daha geri sonra eğer toplam ayrıca ancak fakat ama ve ilk son bunun bunu "
                 "bunlar böylece dolayısıyla yani şimdi bugün yarın dün tüm bütün hangi nasıl neden kalan geriye "
                 "ardından sonunda önce ise bazı birkaç çoğu hepsi kendi onun onlar bunlardan haftada günde ayda "
                 "yılda saatte başlangıçta".split())
_EN_COMMON = set("a an the if how what when after each every there this that then she he they it in on at one two "
                 "three four five six seven eight nine ten some all".split())

_SOLUTION_WEIGHT = 0.5  # within near-ties: solutions are noisier than questions
_GOLD_BONUS = 0.2  # within near-ties: the solution's answer is a candidate's official answer
NEAR_TIE = 0.05  # question evidence this close to the best is a near-tie
MIN_NUMBER_AGREEMENT = 0.5  # below this, a candidate's question numbers largely disagree: no match
# Decontamination is conservative: a train match only this far ahead of a test question, or no match while a
# test question is this close to the nearest one, keeps the row out of training. Measured on the shared sample:
# 4 of 256 true train matches are dropped; changed-number test paraphrases: none reached training.
NEAR_TEST_GAP = 0.1
NEAR_TEST_GAP_UNALIGNED = 0.2
_CANDIDATES = 50
_COMMON = 3000  # features in more reference rows than this only rescore, never nominate


def _is_sentence_start(text: str, at: int) -> bool:
    return _SENTENCE_END.search(text[max(0, at - 8):at]) is not None


def names(text: str, common: Callable[[str], bool], english: bool, known: Callable[[str], bool] = lambda w: False) -> set[str]:
    """Capitalised words that are names, not ordinary words that start a sentence ("Bir", "Kaç", "How").

    A sentence-initial word is a name when an apostrophe follows it
    ("Janet'in": Turkish spelling puts one only after proper nouns), or when
    its lower-case form is not a common word and, in Turkish, the word comes
    back in the text or is `known` as a name (one the English originals
    use): a sentence-initial "Tankta" ("in the tank") is an inflected
    ordinary word, while "Tom" or "Ayla" is a name.

    >>> sorted(names("Bir uzaylı gelir. Kaç kişi? Janet'in 3 elması var, Ali'ye 1 verir. Tankta su var.",
    ...              lambda w: w in {"bir", "kaç"}, False))
    ['Ali', 'Janet']
    """
    found = set()
    lower = str.lower if english else turkish_lower
    for match in _NAME.finditer(text):
        word, at = match.group(), match.start()
        if at and (text[at - 1].isalnum() or text[at - 1] in "'’"):
            continue  # inside a word, or a suffix after an apostrophe
        if lower(word) in WEEKDAYS_AND_MONTHS:
            continue  # capitalised in both languages, but concepts, not names
        if _is_sentence_start(text, at):
            apostrophe = not english and text[match.end():match.end() + 1] in ("'", "’")
            recurs = english or known(word) or len(re.findall(rf"(?<![^\W\d_]){re.escape(word)}(?![^\W\d_])", text)) > 1
            if not apostrophe and (common(lower(word)) or not recurs):
                continue
        found.add(word)
    return found


def _replace_percentages(found: Counter, text: str, pattern: re.Pattern[str]) -> None:
    # "50%" and "50 kilo" are not the same quantity: a percentage is its own feature.
    for match in pattern.finditer(text):
        readings = body_readings(match.group(1).rstrip(".,"))
        if not readings:
            continue
        value = canonical(preferred(readings))
        if found[value] > 0:
            found[value] -= 1
            if not found[value]:
                del found[value]
        found[f"{value}%"] += 1


def numbers(text: str, english: bool) -> Counter:
    """The numbers of a question as canonical strings ("12", "1/2", "80%"), with their counts."""
    found: Counter = Counter(canonical(preferred(r)) for r in digit_numbers(text))
    words = english_numbers(text) if english else turkish_numbers(text, fractions=False)
    if not english:
        ate = len(_TR_ATE.findall(text))
        words = [v for v in words if not (v == 7 and (ate := ate - 1) >= 0)]
    # "bir"/"one" doubles as an article, so spelled 0 and 1 are noise.
    found.update(canonical(v) for v in words if v not in (0, 1))
    if english:
        found.update(canonical(_EN_MULTIPLES[m.lower()]) for m in _EN_MULTIPLE_RE.findall(text))
        found.update(canonical(Fraction(_EN_COUNTS[count.lower()], _EN_PARTS[part.lower()]))
                     for count, part in _EN_FRACTION.findall(text))
        _replace_percentages(found, text, _EN_PERCENT)
    else:
        for match in _TR_PART.finditer(text):
            found[canonical(_TR_PART_VALUE[turkish_lower(match.group(1))])] += 1
        for whole, part in _TR_FRACTION.findall(text):
            found[canonical(Fraction(_TR_SMALL[turkish_lower(part)], _TR_SMALL[turkish_lower(whole)]))] += 1
        _replace_percentages(found, text, _TR_PERCENT)
    return found


def number_agreement(ours: Iterable[str], theirs: Iterable[str]) -> float:
    """How far two questions' number sets agree: 2|A∩B| / (|A|+|B|), 1.0 when neither has numbers.

    >>> number_agreement({"200", "80%", "10"}, {"200", "80%", "10", "2"}), number_agreement({"3"}, {"6"})
    (0.8571428571428571, 0.0)
    """
    a, b = set(ours), set(theirs)
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


def changed_numbers(ours: Counter, theirs: Counter, question: str, original: str) -> bool:
    """Whether the translation's numbers differ from the original's.

    A number written with digits on one side that the other side lacks (in
    digits or words) is a change: "6 inches" became "15 cm", "50% more"
    became "50 kilo", "He pays $5." was left out. A spelled-out or implied
    number that one side lacks is most often a reading gap ("doubled" is
    read, "iki katına" not) and counts only when both sides have one.
    """
    def digits(text: str) -> set[str]:
        return {canonical(preferred(r)) for r in digit_numbers(text)}

    # 0 and 1 are never read from words ("bir" is also "a"), so a digit 1 may stand for a spelled one.
    ours_only, theirs_only = set(ours) - set(theirs) - {"0", "1"}, set(theirs) - set(ours) - {"0", "1"}
    written = [(ours_only, digits(question)), (theirs_only, digits(original))]
    return any(n.rstrip("%") in found for only, found in written for n in only) or bool(ours_only and theirs_only)


@dataclass
class Reference:
    split: str
    index: int
    question: str
    gold: Fraction


@dataclass
class Match:
    reference: Reference
    score: float  # question evidence: weighted Dice of numbers, names and concepts, scaled by number agreement
    margin: float  # over the runner-up: question evidence, or within a near-tie the tie-breaking evidence
    number_agreement: float
    numbers_changed: bool
    tie_broken: bool  # solution evidence chose among near-ties


@dataclass
class Alignment:
    """What the aligner found for one row; the caller applies the recipe's thresholds."""

    match: Match | None  # the best candidate whose numbers fit, before the score and margin thresholds
    nearest_test: Reference | None  # the English test question with the most question evidence, numbers or not
    nearest_test_score: float  # its weighted Dice
    nearest_score: float  # the best weighted Dice of any candidate

    def near_test(self, accepted: Match | None) -> bool:
        """Whether the row is close enough to a test question that training must not see it.

        An accepted match to a train question is near a test question that
        comes within NEAR_TEST_GAP of it; a row without a match, when a test
        question is within NEAR_TEST_GAP_UNALIGNED of the nearest question.
        """
        if self.nearest_test is None or (accepted is not None and accepted.reference.split == "test"):
            return False
        if accepted is not None:
            return self.nearest_test_score >= accepted.score - NEAR_TEST_GAP
        return self.nearest_test_score >= self.nearest_score - NEAR_TEST_GAP_UNALIGNED


@dataclass
class Candidate:
    index: int
    score: float
    agreement: float
    support: float = 0.0  # solution numbers and the gold bonus: for near-ties only


# The English side of the last Aligner built in this process, by its references' contents: a process that prepares
# again with the same reference (the tests, a notebook) reuses it instead of indexing English GSM8K's 8,792 problems
# again (7 s on 2 cores). Nothing changes it after it is built.
_last_english: tuple[tuple, dict[str, Any]] | None = None


class Aligner:
    """An index over English reference problems that finds a translation's original."""

    def __init__(self, references: list[Reference], solutions: list[str],
                 turkish_texts: Iterable[str] = ()) -> None:
        global _last_english
        self.references = references
        self.turkish_common = _TR_COMMON | {w for t in turkish_texts for w in _LOWER_WORD.findall(t)}
        key = (tuple((r.split, r.index, r.question, r.gold) for r in references), tuple(solutions))
        if _last_english is None or _last_english[0] != key:
            _last_english = key, self._english_index(references, solutions)
        vars(self).update(_last_english[1])

    def _english_index(self, references: list[Reference], solutions: list[str]) -> dict[str, Any]:
        """The attributes that depend on the English references alone."""
        # Words the corpora write in lower case somewhere are ordinary words, whatever opens a sentence.
        self.english_common = _EN_COMMON | {w for r in references for w in _LOWER_WORD.findall(r.question)}
        # Names the English originals use: a Turkish sentence that opens with one names someone.
        self.english_names = {name for r in references for name in names(r.question, self.english_common.__contains__, True)}
        features = [self.question_features(r.question, english=True) for r in references]
        solution_features = [self.solution_numbers(s, english=True) for s in solutions]
        frequency: Counter = Counter()
        for q, s in zip(features, solution_features):
            frequency.update(q.keys() | s.keys())
        total = len(references)
        idf = {k: math.log((total + 1) / v) for k, v in frequency.items()}
        postings: dict[str, list[int]] = defaultdict(list)
        for j, q in enumerate(features):
            for key in q:
                postings[key].append(j)
        weights = np.array([sum(v * idf[k] for k, v in q.items()) for q in features], dtype=np.float64)
        return {"english_common": self.english_common, "english_names": self.english_names, "features": features,
                "solution_features": solution_features, "idf": idf, "weights": weights,
                "postings": {k: np.array(v, dtype=np.int64) for k, v in postings.items()}}

    def question_features(self, question: str, english: bool) -> Counter:
        """Numbers (`n:`), names (`w:`) and concepts (`c:`) of a question."""
        common = self.english_common if english else self.turkish_common
        found = Counter({f"n:{k}": v for k, v in numbers(question, english).items()})
        # Sorted: a set's order follows the string hash seed, and scores summed in that order differed in their
        # last bits from one process to the next.
        found.update({f"w:{name}": 1 for name in sorted(names(question, common.__contains__, english,
                                                               self.english_names.__contains__))})
        found.update({f"c:{c}": 1 for c in sorted((english_concepts if english else turkish_concepts)(question))})
        return found

    @staticmethod
    def solution_numbers(solution: str, english: bool) -> Counter:
        return Counter({f"s:{k}": 1 for k in numbers(solution, english)})

    def _dice(self, a: Counter, b: Counter) -> float:
        idf = self.idf
        shared = sum(min(v, b[k]) * idf[k] for k, v in a.items() if k in b)
        total = sum(v * idf.get(k, 0.0) for k, v in a.items()) + sum(v * idf[k] for k, v in b.items())
        return 2 * shared / total if total else 0.0

    def _nominate(self, q: Counter) -> list[int]:
        """The references that share the most weight with `q` for their size (an estimate of the Dice score).

        Ranking by shared weight alone would favour long questions full of
        common numbers, and could leave a short original out of the list.
        """
        # In arrays, as a loop over references in Python was most of a row's time: the same float additions in the
        # same order (a posting holds each reference once), so the same ranking.
        votes = np.zeros(len(self.references))
        for key in q:
            postings = self.postings.get(key)
            if postings is not None and len(postings) <= _COMMON:
                votes[postings] += self.idf[key]
        own = sum(v * self.idf.get(k, 0.0) for k, v in q.items())
        voted = np.flatnonzero(votes)  # idf is log((n + 1) / count) > 0: every posting adds
        share = votes[voted] / (own + self.weights[voted])
        return voted[np.lexsort((voted, -share))[:_CANDIDATES]].tolist()  # by share, then index

    def best(self, question: str, solution: str, solution_answer: Readings | None) -> Alignment:
        """The most likely original of a translated problem, and the test question it is nearest to."""
        q = self.question_features(question, english=False)
        ours = {k for k in q if k.startswith("n:")}
        raw: list[tuple[float, int]] = []
        candidates = []
        for j in self._nominate(q):
            theirs = {k for k in self.features[j] if k.startswith("n:")}
            agreement = number_agreement(ours, theirs)
            dice = self._dice(q, self.features[j])
            raw.append((dice, j))
            if agreement >= MIN_NUMBER_AGREEMENT:
                # Numbers that agree are question evidence twice over: shared features, and the same problem.
                candidates.append(Candidate(j, dice * (0.5 + 0.5 * agreement), agreement))
        tests = [(dice, j) for dice, j in raw if self.references[j].split == "test"]
        nearest = max(tests, default=None)
        found = Alignment(None, self.references[nearest[1]] if nearest else None, nearest[0] if nearest else 0.0,
                          max((dice for dice, _ in raw), default=0.0))
        if not candidates:
            return found
        candidates.sort(key=lambda c: (-c.score, c.index))
        near = [c for c in candidates if c.score >= candidates[0].score - NEAR_TIE]
        rest = candidates[len(near)].score if len(candidates) > len(near) else 0.0
        tie_broken = False
        if len(near) > 1:
            s = self.solution_numbers(solution, english=False)
            for c in near:
                c.support = _SOLUTION_WEIGHT * self._dice(s, self.solution_features[c.index])
                if solution_answer and self.references[c.index].gold in solution_answer:
                    c.support += _GOLD_BONUS
            near.sort(key=lambda c: (-(c.score + c.support), c.index))
            # GSM8K repeats a few questions verbatim; identical twins are no ambiguity.
            rivals = [c for c in near[1:] if self.references[c.index].question != self.references[near[0].index].question]
            tie_broken = near[0] is not candidates[0]
            margin = (near[0].score + near[0].support) - (rivals[0].score + rivals[0].support) if rivals else \
                near[0].score - rest
        else:
            margin = near[0].score - rest
        top = near[0]
        theirs_numbers = Counter({k[2:]: v for k, v in self.features[top.index].items() if k.startswith("n:")})
        ours_numbers = Counter({k[2:]: v for k, v in q.items() if k.startswith("n:")})
        found.match = Match(self.references[top.index], top.score, margin, top.agreement,
                            changed_numbers(ours_numbers, theirs_numbers, question, self.references[top.index].question),
                            tie_broken)
        return found
