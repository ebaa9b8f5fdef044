"""benchmarks/gpu_check.py: its own code on the CPU with the tiny model, so that it works the first time a GPU is
there, and the pieces it measures with (the plan at the largest batch run, the ways' recipe keys, a card's bandwidth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PLAN_SETTINGS as SETTINGS
from conftest import ROOT, load_benchmark, needs_compiler

from gsm8k_tr.config import load_recipe
from gsm8k_tr.train import fitting, memory


def test_gpu_check_help_and_one_line_without_a_gpu() -> None:
    import torch

    script = ROOT / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "--steps" in done.stdout
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU answer is not what it gives")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no CUDA GPU" in done.stderr


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    # The GPU check's own code, on the CPU with the tiny model, so it works the first time a GPU is there; with
    # compiled decoding too (what auto chooses on a GPU) where a C++ compiler lets torch.compile build for the CPU.
    script = ROOT / "benchmarks" / "gpu_check.py"
    compiled = not needs_compiler.args[0]
    done = subprocess.run([sys.executable, str(script), "--cpu", "--steps", "3", "--sft-steps", "3", "--questions",
                           "4", "--keep", str(tmp_path), "--also-generation-batches", "128", "--held-out", "4",
                           *(["--both-decodings", "--also-decodings", "compiled-step", "compiled-step-per-row"]
                             if compiled else [])],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["sft"]["tokens_per_s"] > 0
    assert result["sft"]["micro_batch"]["per_device_train_batch_size"] == fitting.CPU_SFT_ROWS  # a CPU's auto
    assert result["sft"]["steps"] == 3 and result["sft"]["tokens_per_step"] > 0
    for part in ("sft", "grpo"):  # the largest batch each training part ran, for the plan's like-for-like figure
        seen = result[part]["longest_batch"]
        assert seen["rows"] >= 1 and seen["tokens"] > 8 and "plan_at_longest_batch_gib" in result[part]
    assert 0 < result["grpo"]["longest_batch"]["completion"] < result["grpo"]["longest_batch"]["tokens"]
    assert result["grpo"]["generated_tokens_per_s"] > 0 and result["grpo"]["rollouts"]["merge_lora"]
    times = result["grpo"]["step_times_s"]  # the steps after the first, each, and their mean
    assert len(times) == 2 and abs(sum(times) / 2 - result["grpo"]["step_s"]) < 0.02
    assert result["decode"]["identical_greedy_tokens"] == result["decode"]["sequences"]
    assert result["eval"]["generated_tokens_per_s"] > 0
    assert "SFT:" in done.stdout and "% of the matmul rate" in done.stdout
    # Two steps' completions in one call: steps 2 and 3 after the first, one call between them, of 128 rows.
    reused = result["grpo-rows-128"]
    assert (result["grpo"]["rollout_calls"], reused["rollout_calls"]) == (2, 1)
    assert reused["generated_tokens_per_s"] > 0
    # GRPO with its held-out check after each of 2 steps: one check a step, each an accuracy
    checks = result["grpo-held-out"]["held_out"]
    assert list(checks) == ["1", "2"] and all(0 <= a <= 1 for a in checks.values()), checks
    # the 128 are scored in chunks of the micro-batch, the largest batch the plan is compared at
    assert reused["longest_batch"]["rows"] <= reused["micro_batch"]["per_device_train_batch_size"] < 128
    assert "128 completions a call: GRPO" in done.stdout
    assert not (tmp_path / "rows-128" / "data").exists()  # it read the data SFT's run prepared
    if compiled:
        assert result["grpo-compiled"]["rollouts"]["decoding"] == "compiled" and result["decode"]["compiled_ratio"] > 0
        compiled_eval = result["eval-compiled"]
        assert compiled_eval["decoding"] == "compiled" and compiled_eval["same_completions"] == "4/4"
        assert "compiled: GRPO" in done.stdout and "GRPO (eager)" in done.stdout
        assert result["grpo-compiled-step"]["rollouts"]["decoding"] == "compiled-step"
        step_eval = result["eval-compiled-step"]
        assert step_eval["decoding"] == "compiled-step" and step_eval["same_completions"] == "4/4"
        assert "compiled-step: GRPO" in done.stdout
        # the same decoding with grouped attention off, which placement turns on for it
        assert result["grpo-compiled-step"]["rollouts"]["grouped_attention"] is True
        assert result["grpo-compiled-step-per-row"]["rollouts"] == {
            **result["grpo-compiled-step"]["rollouts"], "grouped_attention": False}
        assert result["eval-compiled-step-per-row"]["same_completions"] == "4/4"
        assert "compiled-step-per-row: GRPO" in done.stdout


@pytest.mark.slow
def test_gpu_check_runs_only_the_parts_asked_for(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--sft-steps", "2",
                           "--parts", "sft", "--keep", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["sft"]["steps"] == 2 and not {"grpo", "decode", "eval"} & set(result)


def test_gpu_check_runs_each_way_by_its_recipe_keys() -> None:
    gpu_check = load_benchmark("gpu_check")
    assert gpu_check.way_overrides("compiled-step-per-row") == ["decoding=compiled-step"]
    assert gpu_check.way_overrides("compiled") == ["decoding=compiled"]
    engine = gpu_check.way_overrides("continuous-batching")
    recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml", engine)
    assert recipe.grpo["use_transformers_continuous_batching"] is True and recipe.decoding == "auto"


def test_gpu_check_plans_at_the_largest_batch_run(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    gpu_check = load_benchmark("gpu_check")
    manifest = {"memory_plan": {"settings": SETTINGS}}  # the stage's own plan: 8 rows of 1024 tokens
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"model.name_or_path={tiny_model_dir}"])
    shape = memory.Shape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    expected = memory.estimate(shape, "sft", {**SETTINGS, "micro_batch": 4, "length": 300}, on_gpu=True).peak_gib
    at = gpu_check.plan_at(recipe, manifest, "sft", {"rows": 4, "tokens": 300})
    assert at == pytest.approx(expected, abs=0.01)
    assert gpu_check.plan_at(recipe, {}, "sft", {"rows": 4, "tokens": 300}) is None  # no plan off a GPU
    # GRPO with each prompt kept once: the largest scored batch's own split of prompt and completion.
    # 4,096 rollouts, so that the tiny model's cache tells the two splits apart at the plan's 0.01 GiB.
    grouped = {**SETTINGS, "dropout": False, "decoding": "compiled-step", "prompt_length": 512, "num_generations": 8,
               "generation_batch": 4096}
    at = gpu_check.plan_at(recipe, {"memory_plan": {"settings": grouped}}, "grpo",
                           {"rows": 4, "tokens": 300, "completion": 200})
    split = {**grouped, "micro_batch": 4, "length": 300, "prompt_length": 100}
    assert at == pytest.approx(memory.estimate(shape, "grpo", split, on_gpu=True).peak_gib, abs=0.01)
    planned_split = memory.estimate(shape, "grpo", {**split, "prompt_length": 512}, on_gpu=True).peak_gib
    assert at > planned_split + 0.1  # the planned 512-token prompt, cut to the row, would count 8 x 300 positions


def test_gpu_check_reads_a_cards_bandwidth_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    gpu_check = load_benchmark("gpu_check")
    assert gpu_check.bandwidth(torch.device("cpu")) is None
    for name, expected in (("NVIDIA H200", 4.8e12), ("NVIDIA H100 PCIe", 2.0e12), ("NVIDIA B300", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert gpu_check.bandwidth(torch.device("cuda")) == expected, name


def test_gpu_check_runs_other_ways_on_the_data_the_first_run_prepared(tmp_path: Path) -> None:
    # Each way preparing its own folder aligned the same real rows again: 15 s a way on 2 CPU cores.
    gpu_check = load_benchmark("gpu_check")
    common = ["data.dataset=synthetic:600", "data.reference=none"]
    before = gpu_check.also_recipe(common, tmp_path, "compiled", "decoding=compiled")  # nothing prepared yet
    assert before.data.dataset == "synthetic:600" and before.output_dir == str(tmp_path / "compiled")
    for name in ("train.jsonl", "test.jsonl", "prepare_report.json"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / name).write_text("{}\n")
    after = gpu_check.also_recipe(common, tmp_path, "rows-128", "grpo.generation_batch_size=128")
    assert after.data.dataset == str(tmp_path / "data") and after.grpo["generation_batch_size"] == 128
    assert after.model.sft_output == str(tmp_path / "sft")
