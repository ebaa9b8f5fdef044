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
