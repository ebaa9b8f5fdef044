"""The aligner's index over the English references."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import pytest

from gsm8k_tr.data import align
from gsm8k_tr.data.align import Aligner, Reference


def test_an_aligner_reuses_the_english_index_only_for_the_same_references() -> None:
    references = [Reference("train", 0, "Ali has 3 apples and buys 4 more. How many apples does he have?", Fraction(7)),
                  Reference("test", 0, "Ayse reads 12 pages a day. How many pages in 5 days?", Fraction(60))]
    solutions = ["3+4=7", "12*5=60"]
    first = Aligner(references, solutions)
    again = Aligner(list(references), list(solutions), turkish_texts=["Ali'nin 3 elması var."])
    assert again.features is first.features and again.postings is first.postings  # the same contents: reused
    assert "elması" in again.turkish_common and "elması" not in first.turkish_common  # each its own rows' words
    # Each next build differs from the one before it in one thing only.
    other_solution = Aligner(references, ["3+4=8", "12*5=60"])
    assert other_solution.solution_features[0] != first.solution_features[0]
    assert Aligner(references, solutions).features == first.features  # built again, as it was
    other_question = [Reference("train", 0, references[0].question.replace("3", "5"), Fraction(7)), references[1]]
    changed = Aligner(other_question, solutions)
    assert changed.features[0] != first.features[0] and changed.features[1] == first.features[1]


# Names and concepts are found as sets, whose order follows the process's string hash seed; summed in that order,
# a question's scores differed in their last bits from one run of `prepare` to the next.
_FEATURES_IN_A_PROCESS = """
import json
from fractions import Fraction
from gsm8k_tr.data.align import Aligner, Reference
english = "Ali, Veli, Ayse, Mehmet, Zeynep and Can buy 3 apples, 4 pears and 5 eggs each week. How many in 2 weeks?"
turkish = ("Ali, Veli, Ayşe, Mehmet, Zeynep ve Can her hafta 3 elma, 4 armut ve 5 yumurta alır. "
           "2 haftada kaç tane alırlar?")
aligner = Aligner([Reference("train", 0, english, Fraction(24)), Reference("test", 0, "Bob has 2 cats.", Fraction(2))],
                  ["3+4+5=12, 12*2=24", "2"])
ours, theirs = aligner.question_features(turkish, english=False), aligner.features[0]
print(json.dumps([list(ours.items()), list(theirs.items()), repr(aligner._dice(ours, theirs)),
                  repr(aligner.best(turkish, "24", None))]))
"""


def test_a_questions_features_and_scores_do_not_depend_on_the_hash_seed() -> None:
    runs = [subprocess.run([sys.executable, "-c", _FEATURES_IN_A_PROCESS], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)]
    features = json.loads(runs[0])[0]
    assert {"w:Ali", "w:Zeynep", "n:3"} <= {k for k, _ in features}, features  # the names are read
    assert runs[1] == runs[0] and runs[2] == runs[0]


def _nominated_in_python(aligner: Aligner, q: Counter) -> list[int]:
    """`Aligner._nominate` as a loop over references: share of weight for its size, ties by index."""
    votes: Counter = Counter()
    for key in q:
        postings = aligner.postings.get(key, [])
        if len(postings) > align._COMMON:
            continue  # a common feature only rescores
        for j in postings:
            votes[int(j)] += aligner.idf[key]
    own = sum(v * aligner.idf.get(k, 0.0) for k, v in q.items())
    return sorted(votes, key=lambda j: (-votes[j] / (own + float(aligner.weights[j])), j))[:align._CANDIDATES]


@pytest.mark.parametrize("common", [align._COMMON, 40])  # 40: features in more questions than that only rescore
def test_the_candidates_are_those_of_the_plain_ranking_ties_by_index(common: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(align, "_COMMON", common)
    chance = random.Random(0)
    people = ["Ali", "Tom", "Mary", "Ayla", "John", "Sara"]
    things = ["apples", "pears", "eggs", "books", "cats"]

    def question() -> str:
        parts = [f"{chance.choice(people)} has {chance.randint(2, 40)} {chance.choice(things)}."
                 for _ in range(chance.randint(1, 6))]
        return " ".join(parts) + " How many are there?"

    texts = [question() for _ in range(150)]
    texts += texts[:30]  # repeated questions: equal shares, which the index decides
    references = [Reference("train" if j % 4 else "test", j, text, Fraction(j)) for j, text in enumerate(texts)]
    aligner = Aligner(references, [str(j) for j in range(len(references))])
    for _ in range(40):
        q = aligner.question_features(question(), english=True)
        assert aligner._nominate(q) == _nominated_in_python(aligner, q)
