"""`benchmarks/process_exit.py` launches CPU processes that leave their process group to the interpreter's exit,
destroy it, or close it as the CLI does, and counts the launches that failed each way."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
from conftest import load_benchmark

pytest.importorskip("torch")


def test_the_p_value_is_fishers_one_sided_exact_test() -> None:
    fisher = load_benchmark("process_exit").fisher_one_sided
    assert fisher(0, 0, 60) == 1
    assert fisher(1, 0, 2) == pytest.approx(0.5)  # one failure of four launches, in way B's two with chance 1/2
    assert fisher(2, 0, 2) == pytest.approx(1 / 6)  # both in way A's two: 1 of C(4, 2) placements
    assert fisher(8, 0, 60) == pytest.approx(math.comb(60, 8) / math.comb(120, 8))
    assert fisher(0, 8, 60) == pytest.approx(1)  # B failing more is no evidence that closing helps


@pytest.mark.slow
def test_one_launch_each_way_runs_and_is_counted(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    bench = load_benchmark("process_exit")
    with patch.object(sys, "argv", ["process_exit.py", "--launches", "1", "--processes", "2"]):
        assert bench.main() == 0
    out = capsys.readouterr().out
    assert "a launch failed otherwise" not in out, out  # the launches themselves work
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("2 processes a launch, 1 launches each way: left to exit ") and "closed 0 (p = " in last
    if Path("/proc/self/task").exists():  # what the aborts come from: gloo's threads still running at the exit
        threads = json.loads(out.split("most gloo threads a rank still ran at its exit: ")[1].splitlines()[0])
        assert threads["left to exit"] > 0 and threads["closed"] == 0, threads
