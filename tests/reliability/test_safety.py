"""Untrusted files and text let nothing in; secrets stay out of outputs; bad runs stop before harm."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE, run_cli

from gsm8k_tr import modeling
from gsm8k_tr.config import ModelConfig, load_recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.run_folder import stage_dir
from gsm8k_tr.train import disk
from gsm8k_tr.train.trl_configs import trl_config

SRC = ROOT / "src" / "gsm8k_tr"


def _error_line(stderr: str) -> str:
    """The CLI's one-line error (a progress bar may share its terminal line)."""
    return next(line[line.index("gsm8k-tr sft: error: "):] for line in stderr.splitlines() if "gsm8k-tr sft: error: " in line)


def _calls(name: str) -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.append((path.name, node.lineno, node))
    return found


def test_no_eval_exec_or_pickle_in_the_package() -> None:
    # The builtins eval/exec (not torch's model.eval()): model output is only ever parsed as text.
    bare = [(n, line) for name in ("eval", "exec", "compile") for n, line, call in _calls(name) if isinstance(call.func, ast.Name)]
    assert not bare, bare
    for name, line, call in _calls("load"):
        if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "torch":
            assert any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in call.keywords), \
                f"{name}:{line}: torch.load without weights_only=True"
    assert not any("import pickle" in p.read_text() for p in SRC.rglob("*.py"))
    # YAML is read with the safe loader, or a loader built on it: no Python objects from a recipe file
    import yaml

    from gsm8k_tr import config

    for name, line, call in _calls("load"):
        if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "yaml":
            loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
            assert isinstance(loader, ast.Name) and issubclass(getattr(config, loader.id), yaml.SafeLoader), \
                f"{name}:{line}: yaml.load without a safe loader"


def test_trust_remote_code_is_off_unless_the_recipe_turns_it_on() -> None:
    assert ModelConfig().trust_remote_code is False
    source, kwargs = modeling.load_source(ModelConfig(name_or_path="someone/model"), None)
    assert kwargs.get("trust_remote_code", False) is False
    _, kwargs = modeling.load_source(ModelConfig(name_or_path="someone/model", trust_remote_code=True), None)
    assert kwargs["trust_remote_code"] is True


def test_a_model_with_its_own_code_is_refused_with_the_key_that_allows_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A folder whose config maps the model to Python files beside it: transformers would import them. Off by default,
    # and the one line names the recipe key (transformers' own advice is on a second line).
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-gpt", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                     "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    ran = tmp_path / "ran"
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(f"open({str(ran)!r}, 'w').close()\n")
    with pytest.raises(UserError, match="contains custom code.*set model.trust_remote_code=true only for code you"):
        modeling.load_model(ModelConfig(name_or_path=str(folder)))
    done = run_cli("check", "--config", str(TINY_RECIPE), f"model.name_or_path={folder}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "set model.trust_remote_code=true only for code you trust" in done.stderr.strip().splitlines()[-1]
    assert not ran.exists()


def test_pickle_weights_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")  # never opened
    with pytest.raises(UserError, match="only as pickle .*pytorch_model.bin.*safetensors only"):
        modeling.load_model(ModelConfig(name_or_path=str(folder)))
    # Evaluation and generate name the pickle too, rather than calling the folder no model.
    done = run_cli("generate", "--model", str(folder), "Ali'nin 3 elması var. Kaç elması var?")
    assert done.returncode == 2 and "only as pickle (pytorch_model.bin)" in done.stderr


def test_pickle_adapter_weights_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    # PEFT unpickles adapter_model.bin when an adapter folder has no safetensors file; a LoRA adapter is weights too.
    from gsm8k_tr.train import artifacts

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir),
                                                             "peft_type": "LORA", "r": 2}))
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04not really")  # never opened
    done = run_cli("generate", "--model", str(adapter), "Ali'nin 3 elması var. Kaç elması var?")
    assert done.returncode == 2 and "only as pickle (adapter_model.bin)" in done.stderr
    with pytest.raises(UserError, match="only as pickle .*adapter_model.bin"):
        artifacts.merge_adapter(load_recipe(TINY_RECIPE), str(tiny_model_dir), adapter, "<|stop|>")


@pytest.mark.slow
def test_secrets_come_from_the_environment_and_never_reach_outputs(tmp_path: Path, tiny_model_dir: Path) -> None:
    import trl

    with pytest.raises(UserError, match="'grpo.hub_token' is a secret.*HF_TOKEN"):
        trl_config(trl.GRPOConfig, "grpo", {"hub_token": "hf_x"}, {"output_dir": str(tmp_path)}, {})
    sentinel = "sk-test-7f3a9c1e-do-not-log"
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_API_KEY": sentinel, "HF_TOKEN": sentinel}
    done = subprocess.run([sys.executable, "-m", "gsm8k_tr", "sft", "--config", str(TINY_RECIPE), f"output_dir={run}",
                           "sft.max_steps=2", "sft.save_steps=1"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sentinel not in done.stdout + done.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    # A learning rate this large sends the weights to infinity within a few steps.
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=30", "sft.save_steps=1",
                   "sft.learning_rate=1e30", "sft.max_grad_norm=0", "sft.lr_scheduler_type=constant", "sft.warmup_steps=0")
    assert done.returncode == 2, done.stderr[-2000:]
    last = _error_line(done.stderr)
    assert "the training loss became" in last and "--resume" in last and "Traceback" not in done.stderr
    assert "last good checkpoint is" in last
    assert not (run / "sft" / "manifest.json").exists()  # no NaN model published as finished


def test_outputs_that_cannot_be_written_or_do_not_fit(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={blocker / 'run'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _error_line(done.stderr).endswith(f"{blocker} exists and is not a folder; choose another output_dir")

    from collections import namedtuple

    model = modeling.load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    need = disk.estimated_bytes(model, 2)
    assert need > 4 * sum(p.numel() for p in model.parameters())  # at least the merged model
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(UserError, match=r"has 0 MiB free but this stage needs about \d+ MiB"):
        disk.check_disk_space(tmp_path, model, 2)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_a_gpu_that_runs_out_of_memory_mid_run_says_what_to_change_and_where_resume_goes_on(
        stage: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys) -> None:
    # torch's OutOfMemoryError, raised by the training step after the checkpoint at step 2 (no GPU needed to raise it):
    # before, its traceback said where the card ran out, not what to change.
    import torch

    from gsm8k_tr import cli
    from gsm8k_tr.train import guard

    run = tmp_path / "run"
    common = ["--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=4", "sft.save_steps=2",
              "grpo.max_steps=4", "grpo.save_steps=2", "eval.every_steps=0"]
    if stage == "grpo":
        assert cli.main(["sft", *common]) == 0
    step = guard.GuardNonFinite.training_step

    def runs_out(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                         "of 14.74 GiB of which 1.02 GiB is free.")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(guard.GuardNonFinite, "training_step", runs_out)
    capsys.readouterr()
    assert cli.main([stage, *common]) == 2
    err = capsys.readouterr().err
    micro = {"sft": 8, "grpo": 4}[stage]  # tiny.yaml's micro-batches, with one micro-batch a step
    length = "sft.max_length" if stage == "sft" else "grpo.max_completion_length"
    assert "Traceback" not in err
    assert err[err.index(f"gsm8k-tr {stage}: error: "):].strip() == (  # a progress bar may share its terminal line
        f"gsm8k-tr {stage}: error: {stage}: the GPU ran out of memory in step 3 (CUDA out of memory. Tried to allocate "
        f"2.00 GiB. GPU 0 has a total capacity of 14.74 GiB of which 1.02 GiB is free.); set "
        f"{stage}.per_device_train_batch_size={micro // 2} {stage}.gradient_accumulation_steps=2 or "
        f"{stage}.activation_checkpointing=true or lower {length}, then run the same command with --resume: it goes "
        f"on from {run / stage / 'checkpoints' / 'checkpoint-2'}; gsm8k-tr plan shows where the memory goes")


def test_a_gpu_that_runs_out_of_memory_answering_names_the_eval_keys(tmp_path: Path, tiny_model_dir: Path,
                                                                     monkeypatch, capsys) -> None:
    # The same error from generation, in `evaluate` (and in a stage's held-out check, which answers the same way):
    # its traceback named no key; the batch size is eval.batch_size, not the training micro-batch
    import torch

    from gsm8k_tr import cli
    from gsm8k_tr.infer import generation

    def runs_out(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB.")

    monkeypatch.setattr(generation, "generate", runs_out)
    assert cli.main(["evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model",
                     str(tiny_model_dir), "eval.batch_size=8"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "eval").exists()
    assert ("error: the GPU ran out of memory answering 8 questions at a time with up to 64 new tokens (CUDA out of "
            "memory. Tried to allocate 3.00 GiB.); set eval.batch_size=4 or lower eval.max_new_tokens") in err


def test_recipe_paths_are_resolved_and_checked(tmp_path: Path, tiny_model_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from gsm8k_tr import cli, modeling

    code = cli.main(["prepare", "--dataset", str(tmp_path / "nowhere" / "data.csv"), "--reference", "none",
                     "--output", str(tmp_path / "o")])
    assert code == 2
    recipe = load_recipe(str(TINY_RECIPE), ["output_dir=~/runs/x"])
    assert stage_dir(recipe, "sft") == Path.home() / "runs" / "x" / "sft"
    # A model in the home folder loads as the check found it (transformers took "~/m" for a malformed Hub id).
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    recipe = load_recipe(str(TINY_RECIPE), ["model.name_or_path=~/m", "model.sft_output=~/runs/x/sft"])
    assert recipe.model.sft_output == str(tmp_path / "runs" / "x" / "sft")
    assert modeling.load_model(recipe.model).config.n_positions == 512
    with pytest.raises(UserError, match="'output_dir' is empty"):
        load_recipe(str(TINY_RECIPE), ["output_dir="])
