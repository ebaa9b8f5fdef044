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

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gsm8k_tr.config import changed_keys
from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
# A question as pairing knows it: its text, its gold answer, and which time the data set asks it (0 the first): a
# question asked twice is two questions, paired in the order asked, not one that the later answer replaces.
Question = tuple[str, str, int]


def _rounded(result: Any) -> dict[str, Any]:
    """A result dataclass as a dict, its floats to 4 places (for JSON and the report); a p-value under 0.001 to 3
    significant digits instead, since 2.8e-06 to 4 places would read 0."""
    return {k: float(f"{v:.3g}") if k == "p_value" and v < 1e-3 else round(v, 4) if isinstance(v, float) else v
            for k, v in asdict(result).items()}


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
    only_before: int = 0  # questions only the earlier evaluation answered, left out of the comparison
    only_after: int = 0  # and only the later one

    def as_dict(self) -> dict[str, Any]:
        return _rounded(self)

    def sentence(self) -> str:
        """One line, e.g. "sft → grpo: +4.7 points (95% interval +1.0 to +8.4) on 403 questions, ...". """
        left_out = (f"; left out, as only one of the two answered them: {self.only_before} questions of "
                    f"{self.before}, {self.only_after} of {self.after}") if self.only_before or self.only_after else ""
        return (f"{self.before} → {self.after}: {100 * self.change:+.1f} points (95% interval "
                f"{100 * self.change_low:+.1f} to {100 * self.change_high:+.1f}) on {self.questions} questions; "
                f"{self.gained} better, {self.lost} worse, exact sign test p = {self.p_value:.2g}{left_out}")


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
    for number, record in json_rows(path, empty=f"no predictions in it (empty); {remedy}"):
        answers = record.get("samples", [record])
        if "question" not in record or not isinstance(answers, list) or not answers or not all(
                isinstance(a, dict) and isinstance(a.get("tokens"), int) and "correct" in a for a in answers):
            raise UserError(f"{path}:{number}: not a prediction as evaluate writes it (question, correct, tokens); "
                            f"{remedy}")
        records.append(record)
    return records


def scores(records: list[dict[str, Any]], key: str = "correct") -> dict[Question, float]:
    """Each question's score in an evaluation's predictions: the share of its samples graded correct (`key`:
    "correct", the answer tag's number, or "flexible_correct", the last number anywhere).

    >>> sorted(scores([{"question": "q", "gold": 2, "correct": True, "tokens": 3}] * 2).items())  # asked twice
    [(('q', '2', 0), 1.0), (('q', '2', 1), 1.0)]
    """
    found: dict[Question, float] = {}
    asked: Counter[tuple[str, str]] = Counter()
    for record in records:
        pair, samples = (record["question"], str(record.get("gold"))), record.get("samples", [record])
        found[(*pair, asked[pair])] = sum(bool(s.get(key)) for s in samples) / len(samples)
        asked[pair] += 1
    return found


def compare(before: str, before_scores: dict[Question, float], after: str,
            after_scores: dict[Question, float]) -> Paired | None:
    """The later evaluation against the earlier on the questions both answered; None when they share none.

    >>> paired = compare("sft", {("a", "1"): 0.0, ("b", "2"): 1.0, ("c", "3"): 0.0},
    ...                  "grpo", {("a", "1"): 1.0, ("b", "2"): 1.0, ("c", "3"): 1.0, ("d", "4"): 1.0})
    >>> paired.questions, paired.gained, paired.lost, round(paired.change, 3), paired.only_before, paired.only_after
    (3, 2, 0, 0.667, 0, 1)
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
                  gained, lost, change, change - half, change + half, sign_test(gained, lost),
                  len(before_scores) - n, len(after_scores) - n)


@dataclass(frozen=True)
class Pooled:
    """Several runs' pairs (two seeds, or two recipes, each run twice) over the same questions, question by question.

    The same questions come back in every run, and a question one run gets
    right by luck is likely to flip in another, so the runs' better and worse
    counts are not independent and their sum would overstate the evidence.
    Each question's differences are summed over the runs instead, and the
    exact sign test is on the questions whose sum is above zero against those
    below: one vote per question, whatever the number of runs.
    """

    runs: int
    questions: int  # those answered in at least one pair
    gained: int  # questions better after, summed over the runs
    lost: int
    change: float  # the mean of the runs' changes in accuracy
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return _rounded(self)

    def sentence(self) -> str:
        return (f"over {self.runs} runs, question by question: {100 * self.change:+.1f} points on average; "
                f"{self.gained} of {self.questions} questions better, {self.lost} worse, exact sign test "
                f"p = {self.p_value:.2g}")


def pooled(pairs: list[tuple[dict[Question, float], dict[Question, float]]]) -> Pooled | None:
    """(before, after) scores of several runs, pooled question by question; None when no pair shares a question.

    >>> one = ({("a", "1"): 0.0, ("b", "2"): 1.0}, {("a", "1"): 1.0, ("b", "2"): 1.0})
    >>> two = ({("a", "1"): 1.0, ("b", "2"): 1.0}, {("a", "1"): 0.0, ("b", "2"): 0.0})
    >>> found = pooled([one, one, two])  # "a": +1 +1 -1, "b": 0 0 -1
    >>> found.runs, found.questions, found.gained, found.lost, found.change
    (3, 2, 1, 1, 0.0)
    """
    summed: dict[Question, float] = {}
    changes = []
    for before, after in pairs:
        shared = before.keys() & after.keys()
        if shared:
            changes.append(sum(after[q] - before[q] for q in shared) / len(shared))
        for q in shared:
            summed[q] = summed.get(q, 0.0) + after[q] - before[q]
    if not summed:
        return None
    gained, lost = sum(d > 0 for d in summed.values()), sum(d < 0 for d in summed.values())
    return Pooled(len(changes), len(summed), gained, lost, sum(changes) / len(changes), sign_test(gained, lost))


def folder_scores(given: str, key: str = "correct") -> dict[Question, float]:
    """An evaluation's folder (or its predictions.jsonl) read into `scores`; one line when it cannot be."""
    path = Path(given) / "predictions.jsonl" if Path(given).is_dir() else Path(given)
    if not path.is_file():
        stages = sorted(str(folder.parent) for folder in Path(given, "eval").glob("*/predictions.jsonl"))
        hint = f", such as this run folder's {', '.join(stages)}" if stages else ""
        raise UserError(f"{given}: no predictions.jsonl there; give the folder `gsm8k-tr evaluate` wrote{hint}")
    return scores(read_predictions(path, "evaluate again into that folder"), key)


def compare_folders(before: str, after: str, key: str = "correct") -> Paired:
    """Two evaluations' folders (or their predictions.jsonl), compared on `key` (see `scores`); one line when they
    cannot be."""
    return _shared(str(before), folder_scores(before, key), str(after), folder_scores(after, key))


def _shared(before: str, before_scores: dict[Question, float], after: str,
            after_scores: dict[Question, float]) -> Paired:
    paired = compare(before, before_scores, after, after_scores)
    if paired is None:
        raise UserError(f"{before} and {after} answered no question in common; evaluate both on the same split")
    return paired


def compare_runs(folders: list[str], key: str = "correct") -> tuple[list[Paired], Pooled | None]:
    """Evaluation folders in pairs (A1 B1 A2 B2 ...): each pair compared, and with several pairs, all of them
    pooled question by question (`Pooled`)."""
    if len(folders) < 2 or len(folders) % 2:
        raise UserError(f"give evaluations in pairs, before and after (EVAL_A EVAL_B [EVAL_A2 EVAL_B2 ...]); "
                        f"got {len(folders)}")
    pairs = [(folders[i], folders[i + 1]) for i in range(0, len(folders), 2)]
    read = {f: folder_scores(f, key) for f in dict.fromkeys(folders)}  # each folder once
    compared = [_shared(a, read[a], b, read[b]) for a, b in pairs]
    for before, after in pairs:
        asked = [_how_asked(before), _how_asked(after)]
        shared = asked[0].keys() & asked[1].keys()
        if differences := changed_keys(*({k: how[k] for k in shared} for how in asked)):
            log.warning("%s and %s were evaluated differently (%s): the change mixes the two models with the two "
                        "ways of asking them; evaluate both alike to compare the models", before, after,
                        "; ".join(differences))
    return compared, pooled([(read[a], read[b]) for a, b in pairs]) if len(pairs) > 1 else None


def _how_asked(given: str) -> dict[str, Any]:
    """What an evaluation's metrics.json records of how the questions were put (split, generation settings, dtype,
    and a pipeline's prompt); empty without one, as `compare` needs only the predictions."""
    path = Path(given) / "metrics.json" if Path(given).is_dir() else Path(given).with_name("metrics.json")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(metrics, dict):
        return {}
    how = {key: metrics[key] for key in ("split", "generation", "dtype") if key in metrics}
    if isinstance(metrics.get("evaluated_with"), dict) and "prompt" in metrics["evaluated_with"]:
        how["prompt"] = metrics["evaluated_with"]["prompt"]
    return how
