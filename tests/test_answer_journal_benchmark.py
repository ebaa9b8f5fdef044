"""`benchmarks/answer_journal.py` compares what it says: the same answers with the journal kept and without, the
kept way writing a journal line a batch."""

from __future__ import annotations

import sys
from unittest.mock import patch

import pytest
from conftest import TINY_RECIPE, load_benchmark

pytest.importorskip("torch")


def test_both_ways_answer_alike_and_only_one_keeps_the_batches(capsys) -> None:
    from gsm8k_tr.infer import answer_journal

    bench = load_benchmark("answer_journal")
    added = []
    add = answer_journal.Journal.add
    argv = ["answer_journal.py", "--config", str(TINY_RECIPE), "--model", "builtin:tiny-gpt2", "--limit", "8",
            "--rounds", "2", "eval.batch_size=4", "eval.max_new_tokens=8"]
    with patch.object(sys, "argv", argv), \
            patch.object(answer_journal.Journal, "add", lambda self, *a: added.append(a[0]) or add(self, *a)):
        assert bench.main() == 0
    out = capsys.readouterr().out
    assert "8 questions x 1, 2 batches of 4" in out and "same completions: True" in out and "ratio b / a: " in out
    assert added == [0, 1, 0, 1]  # two batches in each of the two kept runs, none in the others
