"""The aligner's index over the English references."""

from __future__ import annotations

from fractions import Fraction

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
