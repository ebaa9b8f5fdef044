"""Every malformed recipe and data file gets one line that names the problem, or a counted skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RECIPE
from corpus import RECIPES, write_data, write_recipes

from gsm8k_tr import cli


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # library progress bars may come before it
    assert last.startswith(f"gsm8k-tr {argv[0]}: error: "), err
    return last


GRPO_CASES = {"zero_generations", "generations_do_not_divide", "completion_past_context", "secret_in_recipe",
              "zero_batch"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_malformed_recipe(name: str, tmp_path: Path, capsys: pytest.CaptureFixture, tiny_model_dir: Path) -> None:
    import yaml

    base = {**yaml.safe_load(TINY_RECIPE.read_text()), "output_dir": str(tmp_path / "run")}
    path = write_recipes(tmp_path / "recipes", base)[name]
    stage = "grpo" if name in GRPO_CASES else "sft"
    extra = ["model.sft_output=none"] if stage == "grpo" else []  # GRPO from the base model: no SFT run needed
    err = _one_line_error(capsys, [stage, "--config", str(path), *extra])
    assert RECIPES[name][1] in err, err
    assert not (tmp_path / "run" / stage / "manifest.json").exists()


def test_malformed_data(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = {}
    for name, (path, message, skipped) in write_data(tmp_path / "data").items():
        out = tmp_path / "out" / name
        argv = ["prepare", "--dataset", str(path), "--reference", "none", "--output", str(out)]
        if message:
            err = _one_line_error(capsys, argv)
            assert message in err, (name, err)
            assert not out.exists(), name  # nothing half-written
            results[name] = "error"
        if skipped is not None:
            flags = ["data.skip_invalid_rows=true"] if message else []
            code = cli.main([*argv, "--overwrite", *flags])
            capsys.readouterr()
            assert code == 0, name
            report = json.loads((out / "prepare_report.json").read_text())
            assert report["dropped"] == skipped, (name, report["dropped"])
            assert sum(report["written"].values()) == 1  # the one good row
            results[name] = results.get(name, "") + "counted skip"
    assert len(results) == len(write_data(tmp_path / "again"))


# A run folder's own files, damaged (cut short by a full disk, edited by hand): (file, content, what the line says).
DAMAGED_RUN_FILES = [
    ("sft/log_history.json", '[{"step": 1, "loss": 2.0}', "not valid JSON"),        # cut short
    ("grpo/log_history.json", '{"step": 1}', "not a list of log entries"),          # an object, not the list
    ("eval/sft/metrics.json", "", "not valid JSON"),                                  # empty
    ("eval/sft/metrics.json", "[0.5]", "not an object of metrics"),
    ("eval/grpo/predictions.jsonl", '{"tokens": 12}\n{"tokens": 3', "predictions.jsonl:2"),  # a line cut short
    ("eval/grpo/predictions.jsonl", '{"correct": true}\n', "without its 'tokens' count"),
    ("report.json", "{", "not valid JSON"),
    ("grpo/manifest.json", "\x00\x00", "not valid JSON"),                             # a crash's zeroed block
]


@pytest.mark.parametrize("where, content, message", DAMAGED_RUN_FILES, ids=[f"{w}:{m}" for w, _, m in DAMAGED_RUN_FILES])
def test_a_damaged_run_file_is_one_line_naming_it(where: str, content: str, message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    for name in ("sft/log_history.json", "grpo/log_history.json"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(json.dumps([{"step": 1, "loss": 1.0}]))
    for stage in ("sft", "grpo"):
        (run / "eval" / stage).mkdir(parents=True)
        (run / "eval" / stage / "metrics.json").write_text(json.dumps({"split": "test", "n": 1, "accuracy": 0.5}))
        (run / "eval" / stage / "predictions.jsonl").write_text(json.dumps({"tokens": 10}) + "\n")
    (run / where).parent.mkdir(parents=True, exist_ok=True)
    (run / where).write_text(content, encoding="utf-8")
    err = _one_line_error(capsys, ["report", str(run)])
    assert str(run / where) in err and message in err, err
