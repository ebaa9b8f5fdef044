"""The hard rows of the real data, made from the 300 real GSM8K-TR rows of the shared sample.

The sample's own alignment is the baseline (every one of its 300 rows aligns,
and the 20 least certain were checked by hand). Each case below rewrites the
rows the way real translations and machine-written solutions go wrong, runs
`prepare` on the result, and checks where the rows land:

- a wrong solution whose final number is another problem's official answer
  (the solution of another GSM8K problem, numbers and all) must not pull a
  row away from its original;
- a translation that changed one, two or all of the question's numbers must
  keep its original and be flagged, or stay out of training: never carry
  another problem's gold into train or validation;
- a translated test question with changed numbers must never reach train or
  validation.
Skips when ../shared/data is absent.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest

from gsm8k_tr.config import load_recipe
from gsm8k_tr.data import prepare

pytestmark = pytest.mark.slow


def _prepare(rows: list[dict[str, str]], folder: Path, reference: Path) -> dict[str, list[dict]]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "rows.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    recipe = load_recipe(None, [f"data.dataset={folder / 'rows.csv'}", f"data.reference={reference}"])
    result = prepare.prepare(recipe)
    return {**result["splits"], "excluded": result["excluded"]}


def _placed(result: dict[str, list[dict]]) -> dict[str, tuple[str, tuple | None]]:
    """question → (where it landed, its original)."""
    return {r["question"]: (where, (r["reference_split"], r["reference_index"]) if r.get("aligned") else None)
            for where, records in result.items() for r in records}


def _change_numbers(question: str, count: int, rng: random.Random) -> str | None:
    found = list(re.finditer(r"\d+", question))
    if not found:
        return None
    for match in sorted(rng.sample(found, min(count, len(found))), key=lambda m: -m.start()):
        question = question[:match.start()] + str(int(match.group()) * 3 + 7) + question[match.end():]
    return question


@pytest.fixture(scope="module")
def baseline(shared_sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    sample, reference = shared_sample
    rows = list(csv.DictReader(open(sample, encoding="utf-8")))
    placed = _placed(_prepare(rows, tmp_path_factory.mktemp("base"), reference))
    assert all(original is not None for _, original in placed.values())  # all 300 align
    return rows, placed, reference


def test_a_wrong_solution_with_another_problems_answer_does_not_pull_the_row(baseline: tuple, tmp_path: Path) -> None:
    rows, placed, reference = baseline
    english = [json.loads(line) for line in (reference / "train.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    # Each solution replaced by another problem's worked solution: its numbers and its final answer.
    wrong = [{"question": r["question"], "answer": rng.choice(english)["answer"].split("####")[0]} for r in rows]
    moved = {q: (before, after) for q, after in _placed(_prepare(wrong, tmp_path, reference)).items()
             if (before := placed[q.strip()])[1] != after[1]}
    assert not moved, list(moved.items())[:3]


@pytest.mark.parametrize("count", [1, 2, 99])
def test_changed_numbers_never_carry_another_problems_gold_into_training(count: int, baseline: tuple,
                                                                        tmp_path: Path) -> None:
    rows, placed, reference = baseline
    rng = random.Random(count)
    changed, edited = {}, []
    for r in rows:
        question = _change_numbers(r["question"].strip(), count, rng)
        if question is not None:  # the machine-written solution still follows the original numbers
            changed[question] = placed[r["question"].strip()]
            edited.append({"question": question, "answer": r["answer"]})
    result = _placed(_prepare(edited, tmp_path, reference))
    for question, (where, original) in result.items():
        was_where, was_original = changed[question]
        if where in ("train", "validation"):
            assert was_where not in ("test",) and was_original[0] != "test", question  # no test question in training
            assert original is None or original == was_original, question  # never another problem's gold
