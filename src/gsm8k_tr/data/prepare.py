"""`gsm8k-tr prepare`: GSM8K-TR rows with verified gold answers and the official split.

Linear: read rows → validate → align with English GSM8K → choose gold and
split → keep out rows whose numbers changed in translation and rows close to
an English test question → take validation from train → write train.jsonl,
validation.jsonl, test.jsonl, excluded.jsonl (each with its reason) and
prepare_report.json atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from gsm8k_tr.config import DataConfig, Recipe, save_recipe
from gsm8k_tr.data.align import Aligner, Match, Reference, numbers
from gsm8k_tr.data.sources import no_test_split, read_rows
from gsm8k_tr.errors import UserError
from gsm8k_tr.grading.answers import canonical, last_number, parse_gold, preferred, shown
from gsm8k_tr.grading.answers import matches as matches_gold
from gsm8k_tr.outputs import atomic_directory, check_writable

logger = logging.getLogger(__name__)

_CALCULATOR = re.compile(r"<<[^<>]{0,200}>>")  # GSM8K's "<<2*3=6>>" annotations
_SAMPLES = 5
_DOUBTFUL = 20  # the lowest-agreement alignments the report shows first, for a person to check
_MIN_VALIDATION = 64
REPORT = "prepare_report.json"  # the prepare statistics (before 0.2: report.json)


# A sign between two numbers, or an equals sign: the solution computes something.
_ARITHMETIC = re.compile(r"\d\s*[-+×x*/÷]\s*\d|=")


def shows_work(solution: str) -> bool:
    """Whether a solution shows how its answer was reached: an arithmetic step, or three numbers or more.

    About one GSM8K-TR answer in six (47 and 9 of the 300 sample rows) is a sentence that only states the result;
    as an SFT target it teaches the model to answer without reasoning. Such rows are answers only, as for GRPO.

    >>> shows_work("Tom 7 yaşındadır."), shows_work("Jim 90 günde 1050 mil koştu.")
    (False, False)
    >>> shows_work("10 / 2 = 5 portakal."), shows_work("13 bilet lazım; 5 bileti var, 8 bilet daha almalı.")
    (True, True)
    """
    return bool(_ARITHMETIC.search(solution)) or sum(numbers(solution, english=False).values()) >= 3


# The `data` keys read when SFT chooses its rows (`sft_leaves_out`), not by `prepare`: one prepared folder serves any
# of their values, so changing one needs no new preparation.
SFT_ROW_KEYS = ("solution_fraction", "sft_keep_no_work", "sft_keep_disagreeing")


def sft_leaves_out(row: dict[str, Any], data: DataConfig) -> str | None:
    """Why SFT leaves out a prepared row's solution ("no_solution", "no_work", "disagreeing"), or None to train on it.

    A row without a worked solution (an answer only, or outside
    `data.solution_fraction`) has nothing to imitate; one whose solution only
    states the result (`shows_work`) would teach answering without reasoning,
    unless `data.sft_keep_no_work`; one whose own final number contradicts the
    verified gold would teach the wrong answer, unless `data.sft_keep_disagreeing`.

    >>> data = DataConfig()
    >>> [sft_leaves_out({"question": "q", "solution": s, "solution_agrees": a}, data)
    ...  for s, a in [("", True), ("Tom 7 yaşındadır.", True), ("1+1=3", False), ("1+1=2", True)]]
    ['no_solution', 'no_work', 'disagreeing', None]
    """
    solution = str(row.get("solution") or "").strip()
    if not solution or (data.solution_fraction < 1.0
                        and split_position(row["question"], "solution") >= data.solution_fraction):
        return "no_solution"
    if not (data.sft_keep_no_work or shows_work(solution)):
        return "no_work"
    if not (data.sft_keep_disagreeing or row.get("solution_agrees", True)):
        return "disagreeing"
    return None


def split_answer(text: str) -> tuple[str, str | None]:
    """Split a dataset answer into (solution text, `#### N` label or None).

    >>> split_answer("2*3=<<2*3=6>>6 elma\\n#### 6")
    ('2*3=6 elma', '6')
    >>> split_answer("Toplam 6 elma vardır.")
    ('Toplam 6 elma vardır.', None)
    """
    solution, sep, label = text.rpartition("####")
    if not sep:
        return _CALCULATOR.sub("", text).strip(), None
    return _CALCULATOR.sub("", solution).strip(), label.strip()


def load_references(recipe: Recipe) -> tuple[list[Reference], list[str]] | None:
    """English GSM8K problems with their official answers, or None for `reference: none`."""
    spec = recipe.data.reference
    if spec.lower() == "none":
        return None
    rows = read_rows(spec, recipe.data.reference_config, ["question", "answer"])
    references, solutions = [], []
    position: Counter = Counter()  # index within the split, as the Hub numbers rows
    missing = 0
    for row in rows:
        index = position[row.split]
        position[row.split] += 1
        solution, label = split_answer(row.values["answer"])
        try:
            gold = parse_gold(label or "")
        except ValueError:
            missing += 1
            continue
        references.append(Reference(row.split, index, row.values["question"], gold))
        solutions.append(solution)
    if not references:
        raise UserError(f"reference {spec!r} has no rows with a '#### N' answer; give English GSM8K or 'none'")
    if not any(r.split == "test" for r in references):
        # Without it every translated test question would be trained on, and the official test split would be empty.
        raise UserError(f"reference {no_test_split(spec, set(position))}")
    if missing:
        logger.warning("reference %s: %d rows without a '#### N' answer were left out", spec, missing)
    return references, solutions


def split_position(question: str, salt: str = "") -> float:
    """Where a question falls in [0, 1): below `data.test_fraction` it is held out for testing.

    A `salt` gives an independent draw for another split (validation).
    """
    digest = hashlib.sha256((salt + question.strip()).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_size(train_rows: int, fraction: float) -> int:
    """How many train rows validation takes: the fraction, and at least 64 when train can spare them.

    >>> validation_size(7000, 0.05), validation_size(300, 0.05), validation_size(100, 0.05), validation_size(100, 0.0)
    (350, 64, 25, 0)
    """
    if fraction <= 0 or train_rows < 2:
        return 0
    return max(round(fraction * train_rows), min(_MIN_VALIDATION, train_rows // 4))


def take_validation(train: list[dict[str, Any]], fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation): validation is the rows whose questions hash lowest, so it is stable across runs."""
    size = validation_size(len(train), fraction)
    chosen = set(sorted(range(len(train)), key=lambda i: split_position(train[i]["question"], "validation"))[:size])
    return [r for i, r in enumerate(train) if i not in chosen], [r for i, r in enumerate(train) if i in chosen]


def _sample(record: dict[str, Any], match: Match, why: str) -> dict[str, Any]:
    ref = match.reference
    return {"why": why, "question": record["question"], "reference_question": ref.question,
            "reference_split": ref.split, "reference_index": ref.index, "answer": canonical(ref.gold),
            "score": round(match.score, 3), "number_agreement": round(match.number_agreement, 3),
            "numbers_changed": match.numbers_changed}


def prepare(recipe: Recipe) -> dict[str, Any]:
    """Build the prepared rows and the report; writes nothing."""
    data = recipe.data
    rows = read_rows(data.dataset, data.dataset_config, [data.question_column, data.answer_column], data.limit,
                     {data.question_column: "data.question_column", data.answer_column: "data.answer_column"})
    loaded = load_references(recipe)
    texts = [f"{row.values[data.question_column]} {row.values[data.answer_column]}" for row in rows]
    aligner = Aligner(*loaded, turkish_texts=texts) if loaded else None
    # A source with its own test split (a "test" file or Hub split) beside others keeps it: a hash, an unaligned
    # row's `data.unaligned_split` or a match with an English training question would move the user's test questions
    # into training. With a reference the test split is the union of both; without one the source's alone; a lone
    # file (one named test.csv too) has no split of its own, so `data.test_fraction` of it by hash.
    sources = {row.split for row in rows}
    own_test = "test" in sources and len(sources) > 1
    if own_test:
        logger.info("%s has its own test split, which stays in the test split%s", data.dataset,
                    ", with the reference's test questions" if aligner else " (data.test_fraction is not used)")
    dropped: Counter = Counter()
    out: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    excluded: list[dict[str, Any]] = []
    seen_questions: set[str] = set()
    used_references: dict[tuple[str, int], str] = {}
    counts: Counter = Counter()
    matches: list[tuple[dict[str, Any], Match]] = []

    def invalid(row_origin: str, reason: str, message: str) -> None:
        if not data.skip_invalid_rows:
            raise UserError(f"{row_origin}: {message}; fix the row, or set data.skip_invalid_rows=true to skip and count such rows")
        dropped[reason] += 1

    for row in rows:
        if row.problem:
            invalid(row.origin, row.reason, row.problem)
            continue
        question = row.values[data.question_column].strip()
        solution, label = split_answer(row.values[data.answer_column])
        if not question:
            invalid(row.origin, "empty_question", f"empty question in column {data.question_column!r}")
            continue
        if not solution and label is None:
            invalid(row.origin, "empty_answer", f"empty answer in column {data.answer_column!r}")
            continue
        solution_answer = last_number(solution)
        if solution_answer is None and label is None and last_number(question) is None:
            invalid(row.origin, "no_number", "no number in the question or the answer")
            continue
        key = " ".join(question.split()).casefold()
        if key in seen_questions:
            dropped["duplicate_question"] += 1
            continue
        seen_questions.add(key)

        found = aligner.best(question, solution, solution_answer) if aligner else None
        candidate = found.match if found else None
        match = candidate
        if match and (match.score < data.min_align_score or match.margin < data.min_align_margin):
            match = None
        record: dict[str, Any] = {"question": question, "solution": solution}
        own_gold = _own_gold(label, solution_answer)
        if match:
            ref = match.reference
            ident = (ref.split, ref.index)
            if ident in used_references:
                dropped["duplicate_reference"] += 1  # two rows translate the same original
                continue
            used_references[ident] = row.origin
            gold, split = ref.gold, ref.split
            record.update(gold_source="reference", aligned=True, reference_split=ref.split,
                          reference_index=ref.index, align_score=round(match.score, 4),
                          number_agreement=round(match.number_agreement, 4), numbers_changed=match.numbers_changed)
            counts["aligned"] += 1
            counts[f"aligned_{ref.split}"] += 1
            matches.append((record, match))
        else:
            gold = own_gold
            if gold is None:
                invalid(row.origin, "no_gold", "the answer has no number to use as gold")
                continue
            if aligner:
                counts["unaligned"] += 1
                if not data.keep_unaligned:
                    dropped["unaligned"] += 1
                    continue
                split = data.unaligned_split
            elif own_test:
                split = "test" if row.split == "test" else "train"
            else:
                split = "test" if split_position(question) < data.test_fraction else "train"
            record.update(gold_source="solution", aligned=False, reference_split=None, reference_index=None,
                          align_score=round(candidate.score, 4) if candidate else None, number_agreement=None,
                          numbers_changed=False)
        record["source"] = row.origin
        kept_from_training = own_test and row.split == "test" and split != "test"
        if kept_from_training:
            split = "test"
        if match and match.numbers_changed:
            counts["numbers_changed"] += 1
            # The official answer belongs to the English numbers, not to these: never shown as this row's gold.
            record["reference_answer"] = canonical(match.reference.gold)
            if not data.keep_numbers_changed or own_gold is None:
                excluded.append({**record, "reason": "numbers_changed", "solution_answer": shown(solution_answer)})
                continue
            gold = own_gold
            record["gold_source"] = "solution"
        if split != "test" and found is not None and found.near_test(match):
            # A translated test question, by its names, concepts and wording: training must not see it.
            reason = "near_test_question" if match else "near_test_question_unaligned"
            excluded.append({**record, "reason": reason, "nearest_test_index": found.nearest_test.index,
                             "nearest_test_score": round(found.nearest_test_score, 4)})
            continue
        agrees = matches_gold(solution_answer, gold)
        counts["source_test_kept"] += kept_from_training
        counts["without_solution"] += not solution  # an answer only: GRPO can train on it, SFT cannot
        counts["solution_shows_no_work"] += bool(solution) and not shows_work(solution)
        counts["solution_disagrees"] += bool(solution) and not agrees
        record.update(answer=canonical(gold), solution_answer=shown(solution_answer, gold), solution_agrees=agrees)
        out[split].append(record)

    reasons = Counter(r["reason"] for r in excluded)
    if not out["train"] and not out["test"]:  # every row dropped or excluded: nothing to train or test on
        raise UserError(f"data source {data.dataset!r}: none of its {len(rows)} rows is left to write ("
                        + ", ".join(f"{reason}: {count}" for reason, count in sorted((dropped + reasons).items()))
                        + "; prepare_report.json's names); fix those rows or the data keys that drop them")
    train, validation = take_validation(out["train"], data.validation_fraction)
    splits = {"train": train, "validation": validation, "test": out["test"]}
    doubtful = sorted(matches, key=lambda rm: (rm[1].number_agreement, rm[1].score))[:_DOUBTFUL]
    samples = [_sample(r, m, "lowest number agreement") for r, m in doubtful]
    samples += [_sample(r, m, "first rows") for r, m in matches[:_SAMPLES] if (r, m) not in doubtful]
    report = {
        "dataset": data.dataset,
        "reference": data.reference,
        "rows_read": len(rows),
        "aligned": counts["aligned"],
        "unaligned": counts["unaligned"],
        "aligned_rate": round(counts["aligned"] / max(1, counts["aligned"] + counts["unaligned"]), 4) if aligner else None,
        "test_rows_found": counts["aligned_test"],
        # where the test split came from; with a reference and a test split of the source's own, both
        "test_split": (("reference+source" if own_test else "reference") if aligner
                       else "source" if own_test else "hash"),
        # the source's test rows that the reference alone would have put in training (a match with an English
        # training question, or unaligned): kept in the test split
        "source_test_kept": counts["source_test_kept"],
        "numbers_changed": counts["numbers_changed"],
        "dropped": dict(sorted(dropped.items())),
        "excluded": dict(sorted(reasons.items())),
        "decontamination": {"near_test_question": reasons["near_test_question"],
                            "near_test_question_unaligned": reasons["near_test_question_unaligned"]},
        "solution_gold_disagreements": counts["solution_disagrees"],
        "without_solution": counts["without_solution"],
        "solution_shows_no_work": counts["solution_shows_no_work"],  # a stated result: SFT leaves it out by default
        "written": {split: len(records) for split, records in splits.items()},
        # by this recipe's SFT_ROW_KEYS, before SFT's length limit (which needs the tokenizer)
        "sft_usable_train_rows": sum(sft_leaves_out(r, data) is None for r in train),
        "thresholds": {"min_align_score": data.min_align_score, "min_align_margin": data.min_align_margin},
        "samples": samples,
    }
    return {"splits": splits, "excluded": excluded, "report": report}


def _own_gold(label: str | None, solution_answer: Any) -> Any:
    """The row's own gold: its `#### N` label, else its solution's last number."""
    try:
        gold = parse_gold(label) if label is not None else None
    except ValueError:
        gold = None
    if gold is None and solution_answer is not None:
        gold = preferred(solution_answer)
    return gold


def write_prepared(result: dict[str, Any], recipe: Recipe, output: Path, overwrite: bool) -> Path:
    """Write splits, report and recipe into `output` atomically."""
    with atomic_directory(output, overwrite) as tmp:
        for name, records in [*result["splits"].items(), ("excluded", result["excluded"])]:
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        (tmp / REPORT).write_text(json.dumps(result["report"], ensure_ascii=False, indent=2), encoding="utf-8")
        save_recipe(recipe, tmp)
    return output


def main(recipe: Recipe, output: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Prepare the recipe's data into `output` (default: the recipe's output_dir)."""
    target = Path(output or recipe.output_dir)
    check_writable(target, overwrite, "data")  # before the work, not after it
    result = prepare(recipe)
    write_prepared(result, recipe, target, overwrite)
    return result["report"]
