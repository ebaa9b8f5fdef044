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
              "zero_batch", "steps_per_generation_with_auto"}


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
    # a rate that is no number stopped in a traceback inside the plot
    ("eval/sft/metrics.json", '{"split": "test", "n": 1, "accuracy": "high"}', "'accuracy' is 'high', not a number"),
    ("eval/grpo/metrics.json", '{"split": "test", "n": true, "accuracy": 0.5}', "'n' is True, not a number"),
    # the report's row was left blank and its stage-to-stage comparisons dropped
    ("eval/sft/metrics.json", '{"x": 1}', "no 'split', 'n', 'accuracy', which evaluate writes"),
    ("eval/sft/metrics.json", '{"split": 3, "n": 1, "accuracy": 0.5}', "'split' is 3, not a split's name"),
    ("eval/grpo/predictions.jsonl", '{"question": "q", "correct": true, "tokens": 12}\n{"tokens": 3',
     "predictions.jsonl:2"),                                                         # a line cut short
    ("eval/grpo/predictions.jsonl", '{"question": "q", "correct": true}\n', "not a prediction as evaluate"),
    ("report.json", "{", "not valid JSON"),
    ("report.json", "[]", "not a JSON object, as it was written"),  # an AttributeError where its stages were read
    ("sft_vs_grpo.json", "[1, 2]", "not a JSON object, as it was written"),
    ("grpo/manifest.json", "\x00\x00", "not valid JSON"),                             # a crash's zeroed block
    # edited by hand: each stopped in a traceback where a command read it (report, pipeline, evaluate, --resume)
    ("grpo/manifest.json", "[]", "not an object, as a stage writes its manifest"),
    ("grpo/manifest.json", '{"global_step": 2, "finished_at": []}', "'finished_at' is [], not str as a stage"),
    ("grpo/manifest.json", '{"global_step": 2, "stop_token": 5}', "'stop_token' is 5, not str or NoneType"),
    ("grpo/manifest.json", '{"finished_at": "x"}', "no 'global_step', which a stage writes"),
]


@pytest.mark.parametrize("where, content, message", DAMAGED_RUN_FILES,
                         ids=[f"{w}:{m}" for w, _, m in DAMAGED_RUN_FILES])
def test_a_damaged_run_file_is_one_line_naming_it(where: str, content: str, message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    for name in ("sft/log_history.json", "grpo/log_history.json"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(json.dumps([{"step": 1, "loss": 1.0}]))
    for stage in ("sft", "grpo"):
        (run / "eval" / stage).mkdir(parents=True)
        (run / "eval" / stage / "metrics.json").write_text(json.dumps({"split": "test", "n": 1, "accuracy": 0.5}))
        (run / "eval" / stage / "predictions.jsonl").write_text(
            json.dumps({"question": "q", "gold": "1", "correct": True, "tokens": 10}) + "\n")
    (run / where).parent.mkdir(parents=True, exist_ok=True)
    (run / where).write_text(content, encoding="utf-8")
    err = _one_line_error(capsys, ["report", str(run)])
    assert str(run / where) in err and message in err, err


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


def _weights_cut_short(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


# A model folder damaged or incomplete: (what is done to it, what the line says). Without tokenizer files transformers
# builds an empty tokenizer from config.json without a word; safetensors' error on a file cut short was a traceback.
DAMAGED_MODELS = [(_no_tokenizer, "has no tokenizer files"), (_weights_cut_short, "a weights file is damaged")]


@pytest.mark.parametrize("damage, message", DAMAGED_MODELS, ids=[m for _, m in DAMAGED_MODELS])
def test_a_damaged_model_folder_is_one_line(damage, message: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            tiny_model_dir: Path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    damage(folder)
    err = _one_line_error(capsys, ["generate", "--config", str(TINY_RECIPE), "--model", str(folder), "2 + 3 kaçtır?"])
    assert message in err and str(folder) in err, err


def test_a_damaged_adapter_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # the header whole, the tensor data cut short
    err = _one_line_error(capsys, ["generate", "--config", str(TINY_RECIPE), "--model", str(adapter),
                                   "2 + 3 kaçtır?"])
    assert "a weights file is damaged" in err and str(adapter) in err, err


@pytest.mark.parametrize("output", [".", "./", "..", "/"])
def test_an_output_that_holds_the_current_folder_is_one_line_before_any_work(output: str, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              tiny_model_dir: Path) -> None:
    # Before, `--output .` into an empty current folder answered every question (or prepared every row) and then
    # stopped in a ValueError from pathlib, "PosixPath('.') has an empty name", writing nothing.
    from gsm8k_tr.data import prepare
    from gsm8k_tr.infer import evaluate

    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("prepared before the output was checked"))
    monkeypatch.setattr(evaluate, "load_split", lambda *a, **k: pytest.fail("read before the output was checked"))
    common = ["--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}"]
    for command, example in (["prepare", "data"], ["evaluate", "eval"]):
        model = ["--model", str(tiny_model_dir)] if command == "evaluate" else []
        err = _one_line_error(capsys, [command, *common, *model, "--output", output])
        assert err.endswith(f"is the current folder or holds it, and an output folder is replaced whole when written; "
                            f"give a folder for it to be, such as {str(Path(output) / example)!r}"), err
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("model, message", [
    ("builtin:nope", "unknown built-in model 'builtin:nope'; valid: builtin:tiny-gpt2"),
    ("./no-such-folder", "no-such-folder"),
])
def test_a_model_that_cannot_be_is_one_line_before_the_data_is_prepared(model: str, message: str, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, `evaluate --model builtin:nope` without prepared data prepared them first (minutes for GSM8K-TR; offline,
    # a line about the dataset's Hub id) and only then named the model.
    from gsm8k_tr.infer import evaluate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluate, "load_split", lambda *a, **k: pytest.fail("data read before the model was checked"))
    err = _one_line_error(capsys, ["evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}",
                                   "--model", model])
    assert message in err, err
