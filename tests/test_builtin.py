"""The built-in models' training text: no test questions, no tags in answers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gsm8k_tr import builtin
from gsm8k_tr.data.prepare import split_position


def test_pretraining_never_sees_a_question_a_test_split_can_hold() -> None:
    texts = builtin.pretraining_texts(400, seed=0)
    answers = [t.split("### Asistan:\n", 1)[1] for t in texts]  # the instruction names the tags; answers never use them
    assert answers and all("<sebep>" not in a and "<cevap>" not in a for a in answers)
    from gsm8k_tr.data import synth

    for row in synth.make_problems(400, 1):  # the same draw pretraining_texts makes
        if split_position(row["question"]) < builtin.HELD_OUT_BAND:
            assert not any(row["question"] in t for t in texts)


def test_a_build_holds_a_lock_and_a_waiting_process_finds_the_model_built(tmp_path: Path, monkeypatch: Any) -> None:
    import fcntl

    monkeypatch.setenv("GSM8K_TR_CACHE", str(tmp_path))
    _, target = builtin._cached_folder("builtin:tiny-gpt2")
    with builtin._build_lock(target):  # while one process builds, another cannot take the lock
        with open(tmp_path / f".{target.name}.lock", "w") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        target.mkdir()  # ... and finishes the build
        (target / "config.json").write_text("{}")

    def build_again(*args: object) -> None:
        raise AssertionError("built twice")

    monkeypatch.setattr(builtin, "build", build_again)
    assert builtin.resolve("builtin:tiny-gpt2") == target
    shutil.rmtree(target)

    @contextmanager
    def another_process_builds_meanwhile(folder: Path) -> Iterator[None]:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        yield

    monkeypatch.setattr(builtin, "_build_lock", another_process_builds_meanwhile)
    assert builtin.resolve("builtin:tiny-gpt2") == target  # looked again once it held the lock
