"""Two evaluations of the same questions, compared question by question: did the later stage pay, beyond chance?

Accuracy alone hides how much of a change is noise: on 400 questions a few
points move with the seed. Paired on the same questions, the questions
whose grade changed tell it apart: an exact two-sided sign test on those
that went wrong → right against right → wrong (McNemar's exact test), and a
95% interval for the change in accuracy from the per-question differences.
With several samples a question, its score is the share of samples graded
correct.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Paired:
    before: str
    after: str
    questions: int  # those both evaluations answered
    accuracy_before: float
    accuracy_after: float
    gained: int  # questions graded better after (wrong → right with one sample each)
    lost: int  # and worse
    change: float
    change_low: float  # the 95% interval of the change
    change_high: float
    p_value: float  # exact two-sided sign test, gained against lost

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def sentence(self) -> str:
        """One line, e.g. "sft → grpo: +4.7 points (95% interval +1.0 to +8.4) on 403 questions, ...". """
        return (f"{self.before} → {self.after}: {100 * self.change:+.1f} points (95% interval "
                f"{100 * self.change_low:+.1f} to {100 * self.change_high:+.1f}) on {self.questions} questions; "
                f"{self.gained} better, {self.lost} worse, exact sign test p = {self.p_value:.2g}")


def sign_test(gained: int, lost: int) -> float:
    """The exact two-sided p-value of `gained` against `lost` when either is as likely (ties left out).

    >>> sign_test(42, 23) < 0.05 < sign_test(45, 30), sign_test(0, 0), sign_test(3, 3)
    (True, 1.0, 1.0)
    """
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def read_predictions(path: Path, remedy: str) -> list[dict[str, Any]]:
    """An evaluation's predictions.jsonl, each record checked for what pairing and the report read; a bad line is
    one line naming it and `remedy`."""
    from gsm8k_tr.data.sources import json_rows  # one reader for JSON lines, with one-line errors

    records = []
    for number, record in json_rows(path):
        answers = record.get("samples", [record])
        if "question" not in record or not isinstance(answers, list) or not answers or not all(
                isinstance(a, dict) and isinstance(a.get("tokens"), int) and "correct" in a for a in answers):
            raise UserError(f"{path}:{number}: not a prediction as evaluate writes it (question, correct, tokens); "
                            f"{remedy}")
        records.append(record)
    return records


def scores(records: list[dict[str, Any]], key: str = "correct") -> dict[tuple[str, str], float]:
    """Each question's score in an evaluation's predictions: the share of its samples graded correct (`key`:
    "correct", the answer tag's number, or "flexible_correct", the last number anywhere)."""
    return {(r["question"], str(r.get("gold"))): sum(bool(s.get(key)) for s in r.get("samples", [r]))
            / len(r.get("samples", [r])) for r in records}


def compare(before: str, before_scores: dict[tuple[str, str], float], after: str,
            after_scores: dict[tuple[str, str], float]) -> Paired | None:
    """The later evaluation against the earlier on the questions both answered; None when they share none.

    >>> paired = compare("sft", {("a", "1"): 0.0, ("b", "2"): 1.0, ("c", "3"): 0.0},
    ...                  "grpo", {("a", "1"): 1.0, ("b", "2"): 1.0, ("c", "3"): 1.0, ("d", "4"): 1.0})
    >>> paired.questions, paired.gained, paired.lost, round(paired.change, 3)
    (3, 2, 0, 0.667)
    """
    shared = sorted(before_scores.keys() & after_scores.keys())
    if not shared:
        return None
    differences = [after_scores[q] - before_scores[q] for q in shared]
    n = len(shared)
    change = sum(differences) / n
    spread = math.sqrt(sum((d - change) ** 2 for d in differences) / (n - 1)) if n > 1 else 0.0
    half = Z95 * spread / math.sqrt(n)
    gained, lost = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    return Paired(before, after, n, sum(before_scores[q] for q in shared) / n, sum(after_scores[q] for q in shared) / n,
                  gained, lost, change, change - half, change + half, sign_test(gained, lost))


def compare_folders(before: str, after: str, key: str = "correct") -> Paired:
    """Two evaluations' folders (or their predictions.jsonl), compared on `key` (see `scores`); one line when they
    cannot be."""
    found = []
    for given in (before, after):
        path = Path(given) / "predictions.jsonl" if Path(given).is_dir() else Path(given)
        if not path.is_file():
            raise UserError(f"{given}: no predictions.jsonl there; give the folder `gsm8k-tr evaluate` wrote")
        found.append(scores(read_predictions(path, "evaluate again into that folder"), key))
    paired = compare(str(before), found[0], str(after), found[1])
    if paired is None:
        raise UserError(f"{before} and {after} answered no question in common; evaluate both on the same split")
    return paired
