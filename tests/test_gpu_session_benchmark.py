"""`benchmarks/gpu_session.sh`: the GPU measurements' script parses, and reports each part's end in its summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_each_part_ends_in_the_summary_and_an_unknown_part_fails(tmp_path: Path) -> None:
    # The parts themselves run in their benchmarks' own tests; here the script's bookkeeping, as a dry run would.
    env = {**os.environ, "CPU": "1", "OUT": str(tmp_path), "PY": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "no-such-part"], capture_output=True, text=True, cwd=ROOT, env=env)
    summary = (tmp_path / "summary.txt").read_text()
    assert "unknown part no-such-part" in done.stdout, done.stdout + done.stderr
    assert "== no-such-part at" in summary and "no-such-part rc=1" in summary and "== end at" in summary
    assert "torch" in summary  # the versions it ran with


def test_a_budget_skips_each_part_that_could_outlast_it(tmp_path: Path) -> None:
    # check may take 290 s a GPU (4x on a CPU): past a 100-second budget; an unknown part takes none and still runs
    env = {**os.environ, "CPU": "1", "OUT": str(tmp_path), "PY": sys.executable, "BUDGET": "100"}
    subprocess.run(["bash", str(SCRIPT), "check", "no-such-part"], capture_output=True, text=True, cwd=ROOT, env=env)
    summary = (tmp_path / "summary.txt").read_text()
    assert "check skipped: it may take 1160 s, and " in summary and "s of BUDGET are left" in summary
    assert "== check at" not in summary and "no-such-part rc=1" in summary
