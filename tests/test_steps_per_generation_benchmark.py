"""`benchmarks/steps_per_generation.py`'s summary: each factor against x1 on the same seeds, question by question."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_benchmark


def _evaluation(folder: Path, correct: list[bool]) -> str:
    folder.mkdir(parents=True)
    rows = [{"question": f"q{i}", "gold": str(i), "correct": c, "tokens": 5} for i, c in enumerate(correct)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(folder)


def test_each_factor_is_paired_with_x1_on_its_own_seed(tmp_path: Path) -> None:
    bench = load_benchmark("steps_per_generation")
    grades = {(42, 1): [True, False, False, True], (42, 2): [True, True, False, True],
              (43, 1): [False, False, True, True], (43, 2): [False, True, True, False]}
    runs = [{"seed": seed, "factor": factor, "seconds": 10.0 * factor, "test_accuracy": sum(g) / len(g),
             "eval": _evaluation(tmp_path / f"{seed}-{factor}", g)} for (seed, factor), g in grades.items()]
    found = bench.summary(runs)
    assert found["x1"]["accuracy_mean"] == 0.5 and "against_x1" not in found["x1"]
    assert found["x2"]["minus_x1"] == [0.25, 0.0] and found["x2"]["seconds_mean"] == 20.0
    # q1 better on both seeds counts once; q3 worse on seed 43 only
    pooled = found["x2"]["against_x1"]
    assert (pooled["runs"], pooled["gained"], pooled["lost"]) == (2, 1, 1)
