"""The real recipes' model given by its Hub id, read from the Hugging Face cache as on a machine that downloaded it
once: `check` reads its config and tokenizer, `plan` its cached config without asking the Hub, and SFT trains it at
one commit, which the manifest and the adapter record and a resumed run keeps after the branch has moved.

A random GPT-2 with the real model's context, and the tiny model's tokenizer (laid out as the real one, `<|stop|>` a
plain added token), stand in for the weights: the tests have no Hub access.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from gsm8k_tr import modeling

HUB_ID = "ytu-ce-cosmos/turkish-gpt2-medium-350m-instruct-v0.1"
REAL = ROOT / "recipes" / "turkish-gpt2-medium.yaml"
COMMITS = ("a" * 40, "b" * 40)
QUICK = ["data.dataset=synthetic:64", "data.reference=none", "sft.max_steps=2", "sft.save_steps=1",
         "sft.logging_steps=1", "sft.per_device_train_batch_size=4", "sft.gradient_accumulation_steps=1"]


def _snapshot(repo: Path, commit: str, tokenizer_dir: Path, seed: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    snapshot = repo / "snapshots" / commit
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(n_positions=1024, n_embd=64, n_layer=2, n_head=2, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(snapshot)
    tokenizer.model_max_length = 1024
    tokenizer.save_pretrained(snapshot)
    # Hub repos often hold pickle weights beside safetensors: this one would fail to unpickle if it were ever read.
    (snapshot / "pytorch_model.bin").write_bytes(b"not a pickle")
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding HUB_ID at two commits, `main` at the first; the model repo's folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    for seed, commit in enumerate(COMMITS):
        _snapshot(repo, commit, tiny_model_dir, seed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMITS[0])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(modeling, "_COMMITS", {})  # a fresh process
    return repo


def _positions(folder: Path):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")["transformer.wpe.weight"]


def test_check_and_plan_read_the_cached_model(hub_cache: Path, tmp_path: Path, monkeypatch) -> None:
    done = run_cli("check", "--config", str(REAL), f"output_dir={tmp_path / 'run'}")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    assert "not in the local cache" not in done.stderr  # what it says when it has only the published shape

    from transformers import AutoConfig

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import plan

    calls = []
    read = AutoConfig.from_pretrained
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: calls.append(k) or read(*a, **k))
    config = plan.model_config(load_recipe(REAL))
    assert config.n_embd == 64  # the cached config, not the published shape
    assert [call.get("local_files_only") for call in calls] == [True]  # not the Hub first, with its retries


def test_sft_trains_the_hub_model_at_one_commit_and_resumes_at_it(hub_cache: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    done = run_cli("sft", "--config", str(REAL), f"output_dir={run}", *QUICK)
    assert done.returncode == 0, done.stderr
    sft = run / "sft"
    manifest = json.loads((sft / "manifest.json").read_text())
    assert manifest["base_model"] == HUB_ID and manifest["base_model_revision"] == COMMITS[0]
    # The adapter records the commit, so PEFT's AutoPeftModelForCausalLM loads the base it was trained on.
    assert json.loads((sft / "adapter" / "adapter_config.json").read_text())["revision"] == COMMITS[0]
    first = _positions(hub_cache / "snapshots" / COMMITS[0])
    assert _positions(sft / "merged").equal(first)  # LoRA leaves the position embeddings as the base has them

    # `main` moves on the Hub while the stage is unfinished; the resumed run (a new process) merges its adapter into
    # the base it was trained on, not into main's new commit.
    (hub_cache / "refs" / "main").write_text(COMMITS[1])
    (sft / "manifest.json").unlink()
    monkeypatch.setattr(modeling, "_COMMITS", {})
    done = run_cli("sft", "--config", str(REAL), f"output_dir={run}", "--resume", *QUICK)
    assert done.returncode == 0, done.stderr
    assert json.loads((sft / "manifest.json").read_text())["base_model_revision"] == COMMITS[0]
    assert _positions(sft / "merged").equal(first)
    # `evaluate` of the adapter folder alone takes the base at the adapter's commit too.
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer.evaluate import load_for_inference

    monkeypatch.setattr(modeling, "_COMMITS", {})
    model, _, _ = load_for_inference(str(sft / "adapter"), load_recipe(REAL), device="cpu")
    assert model.transformer.wpe.weight.equal(first)

    # A new run takes main as it is now, and says which commit that was.
    monkeypatch.setattr(modeling, "_COMMITS", {})
    done = run_cli("sft", "--config", str(REAL), f"output_dir={run}", "--overwrite", *QUICK)
    assert done.returncode == 0, done.stderr
    assert json.loads((sft / "manifest.json").read_text())["base_model_revision"] == COMMITS[1]
    assert _positions(sft / "merged").equal(_positions(hub_cache / "snapshots" / COMMITS[1]))

    # GRPO trains the SFT output (a folder) and records the commit of the Hub model under it.
    grpo = ["grpo.max_steps=1", "grpo.per_device_train_batch_size=4", "grpo.num_generations=4",
            "grpo.gradient_accumulation_steps=1", "grpo.max_completion_length=16", "eval.every_steps=0"]
    monkeypatch.setattr(modeling, "_COMMITS", {})  # a process of its own, which never loads the Hub model
    done = run_cli("grpo", "--config", str(REAL), f"output_dir={run}", *QUICK[:2], *grpo)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "grpo" / "manifest.json").read_text())["base_model_revision"] == COMMITS[1]


def test_a_branch_that_moves_during_a_run_does_not_change_the_model(hub_cache: Path) -> None:
    # A stage loads its base more than once: to train, then hours later to merge the adapter into.
    from gsm8k_tr.config import ModelConfig

    cfg = ModelConfig(name_or_path=HUB_ID)
    first = modeling.load_model(cfg).transformer.wpe.weight.detach().clone()
    (hub_cache / "refs" / "main").write_text(COMMITS[1])
    assert modeling.load_model(cfg).transformer.wpe.weight.equal(first)
    assert modeling.hub_commit(cfg) == COMMITS[0]
    local = modeling.load_model(cfg, str(hub_cache / "snapshots" / COMMITS[1]))  # a folder is a folder
    assert not local.transformer.wpe.weight.equal(first) and modeling.hub_commit(cfg) == COMMITS[0]


def test_a_hub_model_the_cache_does_not_hold_is_one_line(hub_cache: Path, tmp_path: Path) -> None:
    done = run_cli("sft", "--config", str(REAL), f"output_dir={tmp_path / 'run'}", "model.name_or_path=nobody/nothing",
                   *QUICK)
    assert done.returncode == 2 and "error: cannot load 'nobody/nothing': " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_model_path_that_is_no_hub_id_is_never_asked_of_the_hub(hub_cache: Path, monkeypatch) -> None:
    # The commands name a mistyped path before loading; the loader says so too, whoever calls it
    from gsm8k_tr import hub
    from gsm8k_tr.config import ModelConfig
    from gsm8k_tr.errors import UserError

    monkeypatch.setattr(hub, "before_loading", lambda name: pytest.fail(f"the Hub was asked for {name}"))
    with pytest.raises(UserError, match="cannot load 'runs/x/sft': no such folder"):
        modeling.load_tokenizer(ModelConfig(name_or_path="runs/x/sft"))


@pytest.mark.parametrize("recipe", [REAL, ROOT / "recipes" / "turkish-gpt2-medium-16gb.yaml"], ids=lambda p: p.stem)
def test_the_real_recipe_runs_end_to_end_from_the_hub(recipe: Path, hub_cache: Path, hub_datasets: list,
                                                     tmp_path: Path) -> None:
    # Everything the recipe names comes from the Hub: the model from the cache, GSM8K-TR and English GSM8K from
    # `datasets.load_dataset` (stood in with the tests' rows). Only the steps and the evaluation's size are cut.
    run = tmp_path / "run"
    done = run_cli("pipeline", "--config", str(recipe), f"output_dir={run}", "sft.max_steps=2", "grpo.max_steps=1",
                   "grpo.per_device_train_batch_size=4", "grpo.num_generations=4", "grpo.gradient_accumulation_steps=1",
                   "grpo.max_completion_length=32", "eval.max_new_tokens=32")
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "data" / "prepare_report.json").read_text())["test_rows_found"] == 2
    for stage in ("sft", "grpo"):
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["base_model"] == HUB_ID and manifest["base_model_revision"] == COMMITS[0]
    assert (run / "report.md").is_file()
