"""A disk that fills up while a command writes: one line that names the folder and says what to do, and nothing
half-written left behind."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from conftest import TINY_RECIPE

from gsm8k_tr import outputs
from gsm8k_tr.train import disk


def _error_line(stderr: str, command: str) -> str:
    """The CLI's one-line error (a progress bar may share its terminal line)."""
    marker = f"gsm8k-tr {command}: error: "
    return next(line[line.index(marker):] for line in stderr.splitlines() if marker in line)


class SafetensorError(Exception):  # safetensors' Rust error type, by the name it carries
    pass


# (what the write raised, bytes left on the disk, whether it is told as a full disk)
FULL_DISK = [
    (OSError(errno.ENOSPC, "No space left on device"), 10**10, True),  # Python's own files say so
    (OSError(getattr(errno, "EDQUOT", errno.ENOSPC), "Disk quota exceeded"), 10**10, True),  # a quota, full
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), 10**10, True),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), 1000, True),  # torch.save
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), 10**10, False),  # room left
    (ValueError("expected a tensor"), 0, False),  # not a write: told as it is
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 0, False),  # the GPU's memory, not the disk's
]


@pytest.mark.parametrize(("error", "free", "full"), FULL_DISK)
def test_a_disk_that_fills_up_during_a_stage_is_told_as_one(error: Exception, free: int, full: bool,
                                                          tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))
    said = outputs.filled_up(error, tmp_path, disk.RESUME)
    assert (said is not None) is full
    if full:
        assert str(said).startswith(f"the disk holding {tmp_path} filled up while it was written to (")
        assert str(said).endswith("free some space, then run the same command with --resume: it goes on from the "
                                  "newest complete checkpoint")


@pytest.mark.parametrize(("point", "folder"), [("kill-during-save", "sft/checkpoints"), ("kill-during-merge", "sft")])
def test_a_checkpoint_or_final_save_that_finds_the_disk_full_stops_with_one_line_and_resume_finishes(
        point: str, folder: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys) -> None:
    # Measured before the fix on a 64 MiB tmpfs filled mid-run: a 40-line traceback from PEFT's model card, exit 1.
    from gsm8k_tr import cli
    from gsm8k_tr.train import artifacts, checkpoints

    def full(at: str) -> None:
        if at == point:  # a checkpoint, or the merged model, written into its staging folder, not yet in place
            raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    command = ["sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=4", "sft.save_steps=2"]
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "inject_fault", full)
        patch.setattr(artifacts, "inject_fault", full)
        code = cli.main(command)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    said = _error_line(err, "sft")
    assert said.startswith(f"gsm8k-tr sft: error: the disk holding {run / folder} filled up")
    assert said.endswith(disk.RESUME)  # the stage's checkpoints are kept: --resume, not a fresh run
    assert not (run / "sft" / "manifest.json").exists()
    assert cli.main([*command, "--resume"]) == 0  # with room again
    assert (run / "sft" / "manifest.json").exists()


class FillsUp:
    """The json module, for one module's writer, with `dumps` failing as a write to a full disk does once `rows`
    rows are written."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __getattr__(self, name: str):
        return getattr(json, name)

    def dumps(self, *args, **kwargs) -> str:
        self.rows -= 1
        if self.rows < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return json.dumps(*args, **kwargs)


def _half_a_png(figure, target, **kwargs) -> None:
    Path(target).write_bytes(b"\x89PNG\r\n")  # a plot cut short where the disk filled up
    raise OSError(errno.ENOSPC, "No space left on device")


AGAIN = "nothing half-written was kept: free some space, then run the same command again"


def test_prepare_evaluate_and_report_into_a_full_disk_stop_with_one_line_and_leave_nothing_half_written(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys) -> None:
    # Measured before the fix on a 64 KiB tmpfs: prepare and evaluate ended in a traceback from their writer, exit 1.
    import matplotlib.figure

    from gsm8k_tr import cli
    from gsm8k_tr.data import prepare
    from gsm8k_tr.infer import evaluate

    run, out = tmp_path / "run", tmp_path / "out"
    common = ["--config", str(TINY_RECIPE), f"output_dir={run}"]
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "json", FillsUp(rows=20))
        assert cli.main(["prepare", *common, "--output", str(out / "data")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    said = f"gsm8k-tr prepare: error: the disk holding {out} filled up while it was written to ("
    assert re.fullmatch(re.escape(said) + r"[0-9.]+ MiB free at the failed write; \[Errno 28\] No space left on "
                        r"device\); " + re.escape(AGAIN), _error_line(err, "prepare"))
    assert list(out.iterdir()) == []  # neither the folder nor its temporary sibling
    assert cli.main(["prepare", *common]) == 0  # with room again, the same command writes the folder

    evaluation = ["evaluate", *common, "--model", str(tiny_model_dir), "--limit", "4", "eval.max_new_tokens=8"]
    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "json", FillsUp(rows=3))  # metrics.json and two predictions
        assert cli.main([*evaluation, "--output", str(out / "eval")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _error_line(err, "evaluate").startswith(f"gsm8k-tr evaluate: error: the disk holding {out} filled up ")
    assert _error_line(err, "evaluate").endswith(AGAIN)
    assert [path.name for path in out.iterdir()] == [".eval.answers.jsonl"]  # the answers, whole (answer_journal)
    assert cli.main([*evaluation, "--output", str(out / "eval")]) == 0  # with room again: none answered again
    assert json.loads((out / "eval" / "metrics.json").read_text())["resumed_questions"] == 4
    assert list(out.iterdir()) == [out / "eval"]
    assert cli.main(evaluation) == 0

    assert cli.main(["report", str(run)]) == 0
    written = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert "report.md" in written and "lengths.png" in written
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "savefig", _half_a_png)
        assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _error_line(err, "report").startswith(f"gsm8k-tr report: error: the disk holding {run} filled up ")
    # the last report and its plots stay whole, and no temporary file is left
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == written


def test_a_full_disk_that_no_writer_names_a_folder_for_is_still_one_line(monkeypatch, capsys) -> None:
    from gsm8k_tr import cli

    def full(args) -> int:
        raise OSError(errno.EDQUOT, "Disk quota exceeded", "/home/me/.cache/huggingface/x.lock")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _runs(parser(), full))
    assert cli.main(["report", "somewhere"]) == 2
    assert capsys.readouterr().err == (f"gsm8k-tr report: error: the disk filled up ([Errno {errno.EDQUOT}] Disk quota "
                                       "exceeded: '/home/me/.cache/huggingface/x.lock'); free some space, then run the "
                                       "same command again\n")

    def broken(args) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cli, "build_parser", lambda: _runs(parser(), broken))
    with pytest.raises(OSError, match="Input/output error"):  # another OSError is not told as a full disk
        cli.main(["report", "somewhere"])


def _runs(parser, run):
    """`parser`, with every command running `run`."""
    for action in parser._subparsers._group_actions:
        for command in action.choices.values():
            command.set_defaults(run=run)
    return parser
