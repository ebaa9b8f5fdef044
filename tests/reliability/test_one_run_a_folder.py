"""A run folder is written by one run at a time: a second run into it stops with one line, and nothing of the first is
read half-way, written beside or deleted under it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE

from gsm8k_tr.errors import UserError
from gsm8k_tr.outputs import atomic_directory, check_writable, run_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

# A process that enters one of the outputs context managers on the folder in argv[1], says so, and holds it until its
# standard input closes.
HOLD = """
import sys
from pathlib import Path
from gsm8k_tr.outputs import atomic_directory, run_lock
with {manager}(Path(sys.argv[1]){extra}) as inside:
    print(inside, flush=True)
    sys.stdin.read()
"""


def _hold(folder: Path, manager: str = "run_lock", extra: str = "") -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", HOLD.format(manager=manager, extra=extra), str(folder)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return process, process.stdout.readline().strip()


def _release(process: subprocess.Popen) -> int:
    process.stdin.close()
    return process.wait(timeout=60)


def test_a_folder_held_by_another_process_is_refused_with_its_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder, _ = _hold(run)
    try:
        with pytest.raises(UserError, match=rf"run is in use by another run \(process {holder.pid}: .*python"):
            with run_lock(run):
                pass
    finally:
        assert _release(holder) == 0
    with run_lock(run):  # the holder ended: the folder is free again
        pass


def test_the_hold_is_reentrant_in_a_process_and_released_after_the_outermost(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run):
        with run_lock(run):  # the pipeline holds the run while its stages ask for it again
            pass
        other = subprocess.run([sys.executable, "-c", HOLD.format(manager="run_lock", extra=""), str(run)],
                               input="", capture_output=True, text=True, cwd=ROOT)
        assert other.returncode != 0 and "is in use by another run" in other.stderr  # still held after the inner one
    holder, _ = _hold(run)  # released after the outer one
    assert _release(holder) == 0
    assert not run.exists()  # made for the hold and left empty: gone again


def test_a_folder_the_run_wrote_to_stays(tmp_path: Path) -> None:
    run = tmp_path / "new" / "run"
    with run_lock(run):
        (run / "log.txt").write_text("x")
    assert (run / "log.txt").is_file()
    with run_lock(tmp_path / "other" / "run"):  # a recipe error before any work: nothing left behind
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_a_folder_that_cannot_be_made_is_one_line_naming_the_file_in_its_way(tmp_path: Path) -> None:
    # it said "cannot write to .../file/run: Not a directory" (or "File exists"), naming no file
    file = tmp_path / "file"
    file.write_text("x")
    for folder in (file, file / "run", file / "run" / "deeper"):
        with pytest.raises(UserError, match=re.escape(f"{file} exists and is not a folder; choose another output_dir")):
            with run_lock(folder):
                pass
    with pytest.raises(UserError, match=re.escape(f"output '{file / 'eval'}': '{file}' exists and is not a folder")):
        check_writable(file / "eval", overwrite=False)  # evaluate's and prepare's --output


def test_a_writer_at_work_keeps_its_temporary_folder_and_a_killed_ones_is_cleared(tmp_path: Path) -> None:
    output = tmp_path / "eval"
    killed = tmp_path / ".eval.tmp-killed"  # what a writer killed mid-write leaves
    killed.mkdir()
    (killed / "metrics.json").write_text("{")
    writer, working = _hold(output, "atomic_directory", ", overwrite=True")
    try:
        assert Path(working).parent == tmp_path and Path(working).is_dir()
        with atomic_directory(output, overwrite=True) as tmp:
            (tmp / "metrics.json").write_text("{}")
        assert not killed.exists()
        assert Path(working).is_dir()  # the other writer's work in progress is left alone
    finally:
        assert _release(writer) == 0  # and it still lands: the last writer's folder is the output
    assert not Path(working).exists() and output.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


@pytest.mark.slow
def test_a_second_run_into_a_training_runs_folder_stops_before_touching_it(tmp_path: Path,
                                                                            tiny_model_dir: Path) -> None:
    """Without the hold, `sft --resume` trained beside the first run and `sft --overwrite` deleted its folder, so the
    first died mid-save with a traceback (measured before the fix)."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "gsm8k_tr", "sft", "--config", str(TINY_RECIPE), f"output_dir={run}",
            "sft.max_steps=100000", "sft.save_steps=10", "eval.every_steps=0"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        checkpoints = run / "sft" / "checkpoints"
        deadline = time.time() + 300
        while not list(checkpoints.glob("checkpoint-*")) and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before the second could start"
        for command in (["sft", "--overwrite"], ["grpo"], ["pipeline", "--resume"]):
            second = subprocess.run([sys.executable, "-m", "gsm8k_tr", command[0], "--config", str(TINY_RECIPE),
                                     f"output_dir={run}", *command[1:]], capture_output=True, text=True, cwd=ROOT,
                                    timeout=300)
            assert second.returncode == 2, second.stderr[-2000:]
            lines = second.stderr.strip().splitlines()
            assert lines[-1].startswith(f"gsm8k-tr {command[0]}: error: {run} is in use by another run (process "
                                        f"{first.pid}: gsm8k-tr sft --config {TINY_RECIPE} output_dir={run} ")
            assert lines[-1].endswith("); wait for it to end or stop it, or choose another output_dir")
            assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run trains on, its checkpoints in place
        assert list(checkpoints.glob("checkpoint-*")) and not (run / "data").is_symlink()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    with run_lock(run):  # the OS frees the hold of a killed run: --resume can go on
        pass
