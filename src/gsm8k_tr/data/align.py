"""Matching translated questions to their English GSM8K originals.

A translation keeps the numbers and the names and changes almost every other
word. Each question becomes a bag of features: its numbers (digits and number
words, read in both languages' conventions), its capitalised names, concepts
from a small bilingual lexicon, and the numbers of its worked solution (the
intermediate results of a Turkish solution mostly reappear in the English
one). Features are weighted by rarity (idf) and compared with a weighted Dice
score. When the Turkish solution's final number equals a candidate's official
answer, that candidate gets a small bonus. A match is accepted only when its
score clears a threshold and beats the runner-up by a margin.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from gsm8k_tr.data.lexicon import english_concepts, turkish_concepts
from gsm8k_tr.grading.answers import Readings, canonical, digit_numbers, preferred
from gsm8k_tr.grading.numwords import english_numbers, turkish_numbers

_NAME = re.compile(r"[A-ZÇĞİÖŞÜ][a-zçğıöşü]+")
_EN_MULTIPLES = {
    "twice": Fraction(2), "double": Fraction(2), "triple": Fraction(3), "thrice": Fraction(3),
    "dozen": Fraction(12), "quarter": Fraction(1, 4),
}
_EN_MULTIPLE_RE = re.compile(r"\b(" + "|".join(_EN_MULTIPLES) + r")\b", re.IGNORECASE)
_SOLUTION_WEIGHT = 0.5  # solutions are noisier than questions
_GOLD_BONUS = 0.2
_CANDIDATES = 50
_COMMON = 3000  # features in more reference rows than this only rescore, never nominate


def _numbers(text: str, words: Callable[[str], list[Fraction]], english: bool) -> Counter:
    # Numbers are read as gold answers are: grouping wins ("1.250" is 1250).
    found: Counter = Counter(canonical(preferred(r)) for r in digit_numbers(text))
    # "bir"/"one" doubles as an article, so spelled 0 and 1 are noise.
    found.update(canonical(v) for v in words(text) if v not in (0, 1))
    if english:
        found.update(canonical(_EN_MULTIPLES[m.lower()]) for m in _EN_MULTIPLE_RE.findall(text))
    return found


def features(question: str, solution: str, english: bool) -> tuple[Counter, Counter]:
    """(question features, solution features) of one problem."""
    words = english_numbers if english else turkish_numbers
    concepts = english_concepts if english else turkish_concepts
    q = Counter({f"n:{k}": v for k, v in _numbers(question, words, english).items()})
    q.update({f"w:{name}": 1 for name in set(_NAME.findall(question))})
    q.update({f"c:{c}": 1 for c in concepts(question)})
    s = Counter({f"s:{k}": 1 for k in _numbers(solution, words, english)})
    return q, s


@dataclass
class Reference:
    split: str
    index: int
    question: str
    gold: Fraction


@dataclass
class Match:
    reference: Reference
    score: float
    margin: float


class Aligner:
    """An index over English reference problems that finds a translation's original."""

    def __init__(self, references: list[Reference], solutions: list[str]) -> None:
        self.references = references
        self.features = [features(r.question, s, english=True) for r, s in zip(references, solutions)]
        frequency: Counter = Counter()
        for q, s in self.features:
            frequency.update(q.keys() | s.keys())
        total = len(references)
        self.idf = {k: math.log((total + 1) / v) for k, v in frequency.items()}
        self.postings: dict[str, list[int]] = defaultdict(list)
        for j, (q, s) in enumerate(self.features):
            for key in q.keys() | s.keys():
                self.postings[key].append(j)

    def _dice(self, a: Counter, b: Counter) -> float:
        idf = self.idf
        shared = sum(min(v, b[k]) * idf[k] for k, v in a.items() if k in b)
        total = sum(v * idf.get(k, 0.0) for k, v in a.items()) + sum(v * idf[k] for k, v in b.items())
        return 2 * shared / total if total else 0.0

    def best(self, question: str, solution: str, solution_answer: Readings | None) -> Match | None:
        """The most likely original of a translated problem, with its score and margin."""
        q, s = features(question, solution, english=False)
        votes: Counter = Counter()
        for key in q.keys() | s.keys():
            postings = self.postings.get(key)
            if postings and len(postings) <= _COMMON:
                weight = self.idf[key]
                for j in postings:
                    votes[j] += weight
        if not votes:
            return None
        scored = []
        for j, _ in votes.most_common(_CANDIDATES):
            ref_q, ref_s = self.features[j]
            score = self._dice(q, ref_q) + _SOLUTION_WEIGHT * self._dice(s, ref_s)
            if solution_answer and self.references[j].gold in solution_answer:
                score += _GOLD_BONUS
            scored.append((score, j))
        scored.sort(key=lambda item: (-item[0], item[1]))
        top_score, top = scored[0]
        runner_up = scored[1][0] if len(scored) > 1 else 0.0
        # GSM8K repeats a few questions verbatim; identical twins are no ambiguity.
        if len(scored) > 1 and self.references[scored[1][1]].question == self.references[top].question:
            runner_up = scored[2][0] if len(scored) > 2 else 0.0
        return Match(self.references[top], top_score, top_score - runner_up)
