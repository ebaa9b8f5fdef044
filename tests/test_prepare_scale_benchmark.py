"""`benchmarks/prepare_scale.py`: the repeated source it times keeps every question distinct, so none is dropped
as a repeat before it is aligned."""

from __future__ import annotations

import csv

from conftest import load_benchmark

BENCH = load_benchmark("prepare_scale")


def test_the_repeated_source_keeps_every_question_distinct(tmp_path) -> None:
    source = tmp_path / "source.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows([{"question": "Ali 3 elma aldı.", "answer": "3"}, {"question": "Ayşe 5 kalem aldı.",
                                                                            "answer": "5"}])
    with BENCH.repeated(source, 5, tmp_path / "rows.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["question"] for r in rows] == ["Ali 3 elma aldı.", "Ayşe 5 kalem aldı.", "Soru 2: Ali 3 elma aldı.",
                                             "Soru 2: Ayşe 5 kalem aldı.", "Soru 3: Ali 3 elma aldı."]
    assert [r["answer"] for r in rows] == ["3", "5", "3", "5", "3"]
