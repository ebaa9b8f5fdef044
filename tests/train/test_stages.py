"""End-to-end: `gsm8k-tr sft` then `gsm8k-tr grpo` on the tiny recipe, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, as_killed, run_cli, tensors

pytestmark = pytest.mark.slow

REWARDS = ("correctness", "strict_format", "soft_format", "xmlcount")


cli = run_cli  # in this process: see conftest.run_cli


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    for stage in ("sft", "grpo"):
        result = cli(stage, "--config", str(TINY_RECIPE), f"output_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_stage_outputs_exist(run, stage):
    folder = run / stage
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "merged/model.safetensors",
                 "merged/config.json", "merged/tokenizer.json", "recipe.yaml", "manifest.json", "log_history.json",
                 "README.md"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    # Weights are safetensors only (training_args.bin and optimizer.pt are the Trainer's resume state).
    assert not list(folder.rglob("pytorch_model*")) and not list(folder.rglob("adapter_model.bin"))
    assert list((folder / "tensorboard").rglob("events.out.tfevents.*"))
    checkpoints = sorted((folder / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "trainer_state.json").is_file() for c in checkpoints)
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("versions", "git_commit", "seed", "data_fingerprint", "device", "data_counts", "global_step"):
        assert key in manifest, key
    assert manifest["versions"]["trl"] and manifest["seed"] == 0
    assert manifest["precision"] == "fp32"  # CPU
    assert manifest["lm_head_positions"] == "scored"  # train/scoring.py: the loss projects only labelled positions
    assert manifest["pad_to_multiple_of"] is None  # a CPU pads each batch to its own longest row (placement)
    if stage == "grpo":  # the held-out check's device and dtype, and the rollouts' effective sampling settings
        assert manifest["held_out"] == {"device": "cpu", "dtype": "float32", "split": "validation", "questions": 8}
        assert manifest["sampling"]["temperature"] == 1.0 and manifest["sampling"]["repetition_penalty"] == 1.0
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "steps" in card


def test_sft_trained_lora_and_left_the_base_alone(run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tensors(run / "sft" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    # LoRA B starts at zero: non-zero means training changed it. All linear layers are adapted.
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    assert {k.split(".")[-3] for k in adapter} >= {"c_attn", "c_proj", "c_fc"}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    wrapped = PeftModel.from_pretrained(base, run / "sft" / "adapter")
    for name, value in wrapped.base_model.model.state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, original[key]), name
    merged = tensors(run / "sft" / "merged" / "model.safetensors")
    assert not torch.equal(merged["transformer.h.0.attn.c_attn.weight"], original["transformer.h.0.attn.c_attn.weight"])


def test_grpo_started_from_sft_and_changed_only_lora(run):
    import torch

    adapter = tensors(run / "grpo" / "adapter" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    config = json.loads((run / "grpo" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run / "sft" / "merged")
    sft, grpo = tensors(run / "sft" / "merged" / "model.safetensors"), tensors(run / "grpo" / "merged" / "model.safetensors")
    # Embeddings are not LoRA targets: GRPO must leave them as SFT left them.
    assert torch.equal(sft["transformer.wte.weight"], grpo["transformer.wte.weight"])


def test_grpo_logged_every_reward_and_accuracy(run):
    history = json.loads((run / "grpo" / "log_history.json").read_text())
    steps = [entry for entry in history if "reward" in entry]
    assert len(steps) == 4  # logging_steps 1, max_steps 4
    for entry in steps:
        for name in REWARDS:
            assert f"rewards/{name}_reward_func/mean" in entry
        for key in ("accuracy", "completions/clipped_ratio", "completions/mean_length", "time/generation_s", "step_time"):
            assert key in entry, key
    held_out = [entry for entry in history if "eval/accuracy" in entry]
    assert [e["step"] for e in held_out] == [2, 4]  # eval.every_steps 2
    assert all(0 <= e["eval/accuracy"] <= 1 and "eval/strict_format_rate" in e for e in held_out)
    sft_history = json.loads((run / "sft" / "log_history.json").read_text())
    assert [e["loss"] for e in sft_history if "loss" in e]


def test_existing_run_is_refused_without_resume_or_overwrite(run):
    result = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={run}")
    assert result.returncode == 2
    assert "--resume" in result.stderr and "--overwrite" in result.stderr and "Traceback" not in result.stderr


def test_resume_after_an_interruption_finishes_at_the_same_step(run, tmp_path):
    # A copy of the run as a kill after checkpoint-2 would leave it: no final outputs, no checkpoint-4.
    out = tmp_path / "tiny"
    shutil.copytree(run, out)
    as_killed(out / "grpo", "checkpoints/checkpoint-4")
    result = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={out}", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "grpo" / "manifest.json").read_text())
    assert manifest["global_step"] == 4 and manifest["resumed_from"].endswith("checkpoint-2")
    state = json.loads((out / "grpo" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "reward" in e] == [1, 2, 3, 4]
    # A finished stage resumes to a no-op.
    again = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={out}", "--resume")
    assert again.returncode == 0


def test_grpo_resumed_after_its_first_epoch_ends_where_it_would_have(run, tmp_path):
    # The prompt filter keeps 3 of the tiny recipe's prompts, one a step: checkpoint-4 lies inside the second epoch.
    # The resumed run took that epoch in the first epoch's order (TRL's sampler; `batch_order.ReplayedEpochs`).
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        for name in ("data", "sft"):
            shutil.copytree(run / name, out / name)
    settings = ("grpo.max_steps=6", "prompt_filter.samples=2", "eval.every_steps=0")
    result = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={whole}", *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((whole / "grpo" / "manifest.json").read_text())["prompt_filter"]["kept"] == 3
    shutil.copytree(whole / "grpo", resumed / "grpo")
    as_killed(resumed / "grpo", "checkpoints/checkpoint-6")
    result = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={resumed}", "--resume", *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    rewards = [[e["reward"] for e in json.loads((out / "grpo" / "log_history.json").read_text()) if "reward" in e]
               for out in (whole, resumed)]
    assert len(rewards[0]) == 6 and rewards[1] == rewards[0]  # steps 5 and 6 too, as the uninterrupted run took them
    import torch

    saved = [tensors(out / "grpo" / "adapter" / "adapter_model.safetensors") for out in (whole, resumed)]
    assert all(torch.allclose(saved[0][k], saved[1][k], atol=1e-7) for k in saved[0])


def test_grpo_without_sft_output_is_a_clear_error(tmp_path):
    result = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'none'}")
    assert result.returncode == 2
    assert "gsm8k-tr sft" in result.stderr and "Traceback" not in result.stderr


def test_grpo_refuses_an_sft_output_from_another_model(run, tmp_path):
    result = cli("grpo", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'x'}",
                 f"model.sft_output={run / 'sft'}", "model.name_or_path=gpt2")
    assert result.returncode == 2 and "trained from" in result.stderr


def test_sft_logs_each_steps_time(run):
    """SFT's logs carry `step_time` as GRPO's do (TRL logs none for SFT), so tokens/s = tokens / step time."""
    history = json.loads((run / "sft" / "log_history.json").read_text())
    logged = [h for h in history if "loss" in h]
    manifest = json.loads((run / "sft" / "manifest.json").read_text())
    assert logged and all(h["step_time"] > 0 for h in logged)
    interval = logged[0]["step"]  # logging_steps: each entry is the mean over that many steps
    assert sum(h["step_time"] for h in logged) * interval <= manifest["train_seconds"]


@pytest.mark.parametrize("extra", [(), ("sft.max_steps=-1", "sft.num_train_epochs=1")])
def test_sft_with_no_whole_micro_batch_to_keep_is_one_line(extra, tmp_path: Path, tiny_model_dir) -> None:
    # 7 rows, micro-batches of 16 and the last one dropped: "0 steps" and the start model saved as SFT's output, or,
    # training by epochs, a ValueError traceback from the trainer
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "data.dataset=synthetic:12",
                   "sft.per_device_train_batch_size=16", "sft.dataloader_drop_last=true", *extra)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "sft: 7 training rows, and sft.dataloader_drop_last drops a micro-batch of fewer than 16" in done.stderr
    assert not (tmp_path / "sft" / "manifest.json").exists()
