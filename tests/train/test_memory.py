"""The memory plan: it runs on every recipe from the config alone, recipes fit what they claim, a stage that
cannot fit stops before training, and the estimate moves the way memory does."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from conftest import PLAN_SETTINGS as SETTINGS
from conftest import ROOT, TINY_RECIPE, load_benchmark, run_cli

from gsm8k_tr import placement
from gsm8k_tr.config import load_recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.train import fitting, lora_layers, memory, plan

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
GPT2_MEDIUM = memory.Shape("gpt2", layers=24, hidden=1024, heads=16, kv_dim=1024, mlp=4096, vocab=50257,
                           context=1024, parameters=354_823_168,
                           linears=[(f"transformer.h.{n}.{name}", i, o) for n in range(24) for name, i, o in
                                    [("attn.c_attn", 1024, 3072), ("attn.c_proj", 1024, 1024),
                                     ("mlp.c_fc", 1024, 4096), ("mlp.c_proj", 4096, 1024)]], model_type="gpt2",
                           prompts_once=True)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_plan_runs_on_every_recipe_and_it_fits_the_size_it_claims(path: Path) -> None:
    recipe = load_recipe(path)
    shape, plans = plan.plan_recipe(recipe, recipe.sized_for_gib)
    assert shape.parameters > 0 and set(plans) == {"sft", "grpo"}
    for name, stage in plans.items():
        assert stage.peak_gib > 0 and all(value >= 0 for value in stage.parts.values()), name
        if recipe.sized_for_gib is not None:  # "sized for one GPU with N GB" must hold by the plan's own numbers
            assert stage.fits, f"{path.name} claims {recipe.sized_for_gib} GiB but {name} needs {stage.peak_gib:.1f}"


@pytest.mark.parametrize("path", [p for p in RECIPES if "SFT peaks at" in p.read_text()], ids=lambda p: p.name)
def test_the_memory_a_recipe_states_is_its_plan(path: Path) -> None:
    # A recipe's header quotes its plan ("by `gsm8k-tr plan ... --gpu-memory N`: SFT peaks at X GiB ... GRPO at Y
    # GiB"); the figures went stale once when the plan changed, so they are held to it.
    import re

    text = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    size = float(re.search(r"--gpu-memory (\d+)", text).group(1))
    stated = {"sft": float(re.search(r"SFT peaks at ([\d.]+) GiB", text).group(1)),
              "grpo": float(re.search(r"GRPO at ([\d.]+) GiB", text).group(1))}
    _, plans = plan.plan_recipe(load_recipe(path), size)
    assert {name: round(plans[name].peak_gib, 1) for name in stated} == stated


def test_plan_prints_parts_and_json(tmp_path: Path) -> None:
    done = run_cli("plan", "--config", str(TINY_RECIPE), "--gpu-memory", "16", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["memory_gib"] == 16 and printed["planned_for"] == "gpu" and set(printed["stages"]) == {"sft", "grpo"}
    for stage in printed["stages"].values():
        assert stage["fits"] is True and stage["peak_gib"] > 0
        assert {"weights", "lora", "activations", "logits", "kv_cache", "runtime"} <= set(stage["parts"])
        assert any(key.startswith("activations_") for key in stage["parts"])  # the other checkpointing setting
    text = run_cli("plan", "--config", str(TINY_RECIPE), "--gpu-memory", "0.5")
    assert text.returncode == 0 and "NO (0.5 GiB)" in text.stdout and "activation checkpointing off" in text.stdout
    assert "on a GPU with 0.5 GiB:" in text.stdout
    for wrong in ("0", "nan", "inf"):  # argparse reads the last two as floats, and planned with them before
        done = run_cli("plan", "--config", str(TINY_RECIPE), "--gpu-memory", wrong)
        assert done.returncode == 2 and "--gpu-memory must be a positive number of GiB" in done.stderr
    real = run_cli("plan", "--config", str(ROOT / "recipes" / "turkish-gpt2-medium.yaml"), "--gpu-memory", "24")
    assert real.returncode == 0 and real.stderr.count("the Hub is not reachable") <= 1  # said once, not per reading
    assert "does not fit" not in real.stdout
    assert all(stage["to_fit"] is None for stage in printed["stages"].values())
    # Where a stage does not fit, the plan says what would (it showed the parts alone), and what it says fits
    small = run_cli("plan", "--config", str(ROOT / "recipes" / "turkish-gpt2-medium.yaml"), "--gpu-memory", "16")
    said = dict(line.split(" does not fit in 16 GiB: set ", 1) for line in small.stdout.splitlines()
                if " does not fit in " in line)
    assert set(said) == {"sft", "grpo"}, small.stdout
    assert said["sft"].startswith("sft.per_device_train_batch_size=4 sft.gradient_accumulation_steps=8 (about ")
    changes = [key_value for text in said.values() for key_value in text.split(" (about ")[0].split()]
    fixed = run_cli("plan", "--config", str(ROOT / "recipes" / "turkish-gpt2-medium.yaml"), "--gpu-memory", "16",
                    "--json", *changes)
    assert all(stage["fits"] and stage["to_fit"] is None for stage in json.loads(fixed.stdout)["stages"].values())
    # `bf16: false` alone trains in fp32 on every GPU, `fp16: false` alone in bf16 on one that has it, as TRL reads
    # them (`placement.precision_rule`): each planned so.
    fp32 = run_cli("plan", "--config", str(TINY_RECIPE), "--gpu-memory", "24", "sft.bf16=false", "grpo.fp16=false",
                   "--json")
    stages = json.loads(fp32.stdout)["stages"]
    assert {name: stage["settings"]["mixed_precision"] for name, stage in stages.items()} == {"sft": False,
                                                                                              "grpo": True}
    if not placement.accelerator_memory()[0]:  # without a GPU the plan is this CPU's, and says so
        here = run_cli("plan", "--config", str(TINY_RECIPE))
        assert "on this machine's CPU, in float32 (no GPU here; --gpu-memory GIB plans" in here.stdout
        # A recipe's bf16 on a CPU that computes in it is planned as the stage runs it: its rollouts in bf16
        with mock.patch.object(placement, "cpu_bf16", return_value=True):
            half = run_cli("plan", "--config", str(TINY_RECIPE), "grpo.bf16=true", "--json")
            text = run_cli("plan", "--config", str(TINY_RECIPE), "grpo.bf16=true")
        with mock.patch.object(placement, "cpu_bf16", return_value=False):
            refused = run_cli("plan", "--config", str(TINY_RECIPE), "grpo.bf16=true", "--json")
        stages = json.loads(half.stdout)["stages"]
        assert {name: stage["settings"]["mixed_precision"] for name, stage in stages.items()} == {"sft": False,
                                                                                                  "grpo": True}
        assert json.loads(refused.stdout)["stages"]["grpo"]["settings"]["mixed_precision"] is False
        assert "CPU, in float32 (the rollouts of grpo in bf16) (no GPU here" in text.stdout
    bad = run_cli("plan", "--config", str(TINY_RECIPE), "--gpu-memory", "-1")
    assert bad.returncode == 2 and "--gpu-memory" in bad.stderr
    # A model path that is no Hub id (two '/'), not there: named as a path, not the Hub's error about repo ids
    gone = run_cli("plan", "--config", str(TINY_RECIPE), "model.name_or_path=runs/x/sft/merged")
    assert gone.returncode == 2 and "'model.name_or_path': 'runs/x/sft/merged' does not exist" in gone.stderr


@pytest.mark.parametrize("change, part, direction", [
    ({"micro_batch": 16}, "activations", 2.0),        # activations scale with the micro-batch
    ({"micro_batch": 16}, "logits", 1.0),             # TRL's fused LM head holds one tile, whatever the batch
    ({"mixed_precision": False}, "activations", 1.9),  # float32 compute keeps twice the bytes (masks stay bytes)
    ({"checkpointing": True}, "activations", 0.15),   # checkpointing keeps each block's input only
    ({"length": 512}, "activations", 0.5),
    ({"lora_rank": 64}, "lora", 2.0),                 # LoRA state scales with the rank
])
def test_the_estimate_moves_the_way_memory_does(change: dict, part: str, direction: float) -> None:
    base = memory.estimate(GPT2_MEDIUM, "sft", SETTINGS, on_gpu=True, memory_gib=24)
    changed = memory.estimate(GPT2_MEDIUM, "sft", {**SETTINGS, **change}, on_gpu=True, memory_gib=24)
    ratio = changed.parts[part] / base.parts[part]
    assert ratio == pytest.approx(direction, rel=0.1) if direction >= 0.5 else ratio < direction


def test_lora_dropout_and_autocast_weight_casts_are_planned() -> None:
    # LoRA's dropout keeps a one-byte mask of every adapted layer's input on a GPU: GPT-2 Medium's adapted layers
    # take 3 x 1024 + 4096 input values per token and layer.
    plain = memory.estimate(GPT2_MEDIUM, "sft", SETTINGS, on_gpu=True, memory_gib=24)
    dropped = memory.estimate(GPT2_MEDIUM, "sft", {**SETTINGS, "lora_dropout": True}, on_gpu=True, memory_gib=24)
    tokens_layers = SETTINGS["micro_batch"] * SETTINGS["length"] * 24
    assert (dropped.parts["activations"] - plain.parts["activations"]) * 2**30 == pytest.approx(tokens_layers * 7168)
    # Under mixed precision autocast keeps a bf16 copy of every matmul weight (LoRA's too) for the backward pass.
    matmul = sum(i * o + 32 * (i + o) for _, i, o in GPT2_MEDIUM.linears)
    assert plain.parts["weight_casts"] * 2**30 == 2 * matmul
    assert plain.peak_gib == pytest.approx(sum(plain.parts[k] for k in ("weights", "lora", "runtime", "activations",
                                                                        "weight_casts", "logits")))
    fp32 = memory.estimate(GPT2_MEDIUM, "sft", {**SETTINGS, "mixed_precision": False}, on_gpu=True, memory_gib=24)
    assert fp32.parts["weight_casts"] == 0
    import trl

    from gsm8k_tr.train.trl_configs import SFT_DEFAULTS, trl_config

    recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml")  # LoRA dropout 0.05, on in SFT
    config = trl_config(trl.SFTConfig, "sft", {}, {**SFT_DEFAULTS, "use_cpu": True}, {"output_dir": ("/nonexistent", "")})
    assert memory.stage_settings(recipe, "sft", config, 1024)["lora_dropout"] is True


def test_a_cpu_in_bf16_is_planned_to_train_in_float32_and_to_generate_in_bf16() -> None:
    # `memory_plan.py --cpu-bf16`: a CPU's bf16 autocast peaked at the float32 plan's training (0.97-1.09 of it for
    # GPT-2 Medium), not at the bf16 counts (0.84-0.97), so a CPU's training is counted in float32. What the
    # rollouts keep is in bf16 there as on a GPU: their weight copies and the KV cache.
    cpu = {**SETTINGS, "decoding": "eager", "generation_batch": 64, "eval_batch": 0, "prompt_length": 128,
           "num_generations": 8}
    mixed = memory.estimate(GPT2_MEDIUM, "grpo", cpu, on_gpu=False, memory_gib=24)
    fp32 = memory.estimate(GPT2_MEDIUM, "grpo", {**cpu, "mixed_precision": False}, on_gpu=False, memory_gib=24)
    for part in ("activations", "logits"):
        assert mixed.parts[part] == fp32.parts[part] > 0
    assert mixed.parts["weight_casts"] == fp32.parts["weight_casts"] == 0
    assert mixed.parts["kv_cache"] == fp32.parts["kv_cache"] / 2 > 0
    assert mixed.parts["rollout_weights"] > 0 == fp32.parts["rollout_weights"]
    gpu = memory.estimate(GPT2_MEDIUM, "grpo", cpu, on_gpu=True, memory_gib=24)
    assert gpu.parts["activations"] < mixed.parts["activations"] and gpu.parts["weight_casts"] > 0


@pytest.mark.parametrize("decoding, on_gpu, static_cache, cache_kept", [
    ("auto", True, True, True), ("auto", False, True, False), ("compiled", False, True, True),
    ("compiled-step", True, True, True), ("eager", True, True, False),
    ("auto", True, False, False), ("compiled-step", True, False, False)])
def test_what_grpo_keeps_between_rollouts_is_planned_beside_training(decoding: str, on_gpu: bool, static_cache: bool,
                                                                      cache_kept: bool) -> None:
    # Compiled decoding keeps its static KV cache on the model between rollouts, and the rollouts keep their weight
    # copies: both are still there while the step trains. Eager decoding's cache is gone by then, and so is the
    # padding compiled decoding adds to its prompts. A model that does not decode right from a static cache
    # (GPT-Neo) decodes eager whatever the recipe says (placement.decoding), and is planned so.
    import dataclasses

    shape = dataclasses.replace(GPT2_MEDIUM, static_cache=static_cache)
    settings = {**SETTINGS, "dropout": False, "decoding": decoding, "cache_padding": 63}
    grpo = memory.estimate(shape, "grpo", settings, on_gpu=on_gpu, memory_gib=24)
    p = {k: v * 2**30 for k, v in grpo.parts.items()}
    kept = p["rollout_weights"] + (p["kv_cache"] if cache_kept else 0.0)
    training = p["activations"] + p["weight_casts"] + p["logits"]
    generating = (0.0 if cache_kept else p["kv_cache"]) + 64 * 50257 * 4
    assert grpo.peak_gib * 2**30 == pytest.approx(p["weights"] + p["lora"] + p["runtime"] + kept +
                                                  max(training, generating))
    compiled = placement.decoding_rule(decoding, on_gpu, static_cache=static_cache) != "eager"
    assert p["kv_cache"] == 64 * (1024 + (63 if compiled else 0)) * 2 * 24 * 1024 * 2
    assert p["kv_cache"] > 0 and p["rollout_weights"] == (2 * sum(i * o for _, i, o in GPT2_MEDIUM.linears)
                                                          if grpo.settings["mixed_precision"] else 0)


@pytest.mark.parametrize("decoding, on_gpu, prompts_once, grouped", [
    ("compiled-step", True, True, True), ("compiled", True, True, False), ("auto", True, True, False),
    ("auto", False, True, True), ("compiled-step", True, False, False)])
def test_rollouts_that_keep_each_prompt_once_are_planned_so(decoding: str, on_gpu: bool, prompts_once: bool,
                                                            grouped: bool) -> None:
    # Where the rollouts keep each group's prompt once (placement.grouped_attention, for the models whose attention
    # it checks), 64 rows in groups of 8 with 512-token prompts cache 8 prompts and 64 rows' own 512 tokens.
    import dataclasses

    shape = dataclasses.replace(GPT2_MEDIUM, prompts_once=prompts_once)
    settings = {**SETTINGS, "dropout": False, "decoding": decoding, "prompt_length": 512, "num_generations": 8}
    grpo = memory.estimate(shape, "grpo", settings, on_gpu=on_gpu, memory_gib=24)
    per_position = 2 * 24 * 1024 * 2  # keys and values of 24 layers, bf16
    assert grpo.parts["kv_cache"] * 2**30 == (8 * 512 + 64 * 512 if grouped else 64 * 1024) * per_position
    # A row shorter than the planned prompt holds no more prompt than itself, and no own tokens below none.
    short = memory.estimate(shape, "grpo", {**settings, "length": 300, "eval_batch": 0}, on_gpu=on_gpu, memory_gib=24)
    assert short.parts["kv_cache"] * 2**30 == (8 * 300 if grouped else 64 * 300) * per_position


def test_grpo_generation_and_vllm_are_planned() -> None:
    grpo = memory.estimate(GPT2_MEDIUM, "grpo", {**SETTINGS, "dropout": False}, on_gpu=True, memory_gib=24)
    # 64 rollouts of 1024 tokens: keys and values of 24 layers of 1024, two bytes each
    assert grpo.parts["kv_cache"] == pytest.approx(64 * 1024 * 2 * 24 * 1024 * 2 / 2**30)
    with_vllm = memory.estimate(GPT2_MEDIUM, "grpo", {**SETTINGS, "dropout": False, "vllm": True, "vllm_share": 0.3},
                                on_gpu=True, memory_gib=80)
    assert with_vllm.parts["kv_cache"] == 0 and with_vllm.parts["vllm"] == pytest.approx(24.0)
    # Compiled decoding's static cache also holds the prompts' padding to a multiple of 64 tokens.
    padded = memory.estimate(GPT2_MEDIUM, "grpo", {**SETTINGS, "dropout": False, "cache_padding": 63}, on_gpu=True,
                             memory_gib=24)
    assert padded.parts["kv_cache"] == pytest.approx(grpo.parts["kv_cache"] * (1024 + 63) / 1024)
    import trl

    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, trl_config

    config = trl_config(trl.GRPOConfig, "grpo", {}, {**GRPO_DEFAULTS, "use_cpu": True},
                        {"output_dir": ("/nonexistent", "")})
    for decoding, padding in (("auto", 63), ("eager", 0), ("compiled", 63)):  # auto: compiled on a CUDA GPU
        recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml", [f"decoding={decoding}"])
        settings = memory.stage_settings(recipe, "grpo", config, 1024, 150)
        assert settings["cache_padding"] == padding and settings["decoding"] == decoding
        assert settings["lora_dropout"] is False and recipe.lora.dropout > 0  # GRPO turns LoRA's dropout off too


def test_the_gpu_plan_matches_what_autograd_keeps_in_bf16() -> None:
    # benchmarks/memory_plan.py --saved: every tensor autograd saves for backward under bf16 autocast, with CUDA's
    # dropout (a byte mask) and fused attention, counted once per storage. A small model keeps proportionally more
    # outside its layers (embeddings, the head's input) than the plan spreads over them: 3-4% for the demo's.
    # LoRA on some layers only keeps fewer inputs: c_attn alone keeps 25% less than every layer.
    bench = load_benchmark("memory_plan")
    for targets in (None, ["c_attn"]):
        for phase, lora_dropout in (("sft", 0.05), ("grpo_training", 0.0)):
            row = bench.count_saved("demo", phase, lora_dropout, targets=targets)
            ratio = row["planned_bytes_per_token_layer"] / row["counted_bytes_per_token_layer"]
            assert 0.93 <= ratio <= 1.05, row
            # The plan also counts the first layer's input projection, whose copy no backward needs (nothing before
            # it trains): 6-7% of the demo model's matmul weights.
            assert row["planned_weight_casts_mib"] == pytest.approx(row["counted_weight_casts_mib"], rel=0.08), row


def _planned_over_counted(monkeypatch, config, lora_dropout: float = 0.05, **count) -> float:
    """The GPU plan's activations over what autograd keeps (`memory_plan.py --saved`) for one SFT micro-batch of a
    model built from `config`."""
    bench = load_benchmark("memory_plan")
    monkeypatch.setattr(bench, "_config", lambda source: config)
    row = bench.count_saved("demo", "sft", lora_dropout, **count)
    return row["planned_bytes_per_token_layer"] / row["counted_bytes_per_token_layer"]


@pytest.mark.parametrize("family, mlp_key", [("qwen2", "intermediate_size"), ("gpt_neox", "intermediate_size"),
                                             ("opt", "ffn_dim")])
def test_the_gpu_plan_tells_the_mlp_from_the_hidden_size(family: str, mlp_key: str, monkeypatch) -> None:
    # Llama's counts were fitted on SmolLM2 alone, where the MLP is 2.7 hidden sizes wide, so the hidden and MLP
    # shares could trade off unseen: Qwen2.5-0.5B (5.4 wide) was planned 10% over its count. GPT-NeoX and OPT keep 2
    # MLP-wide values where Llama keeps 4: read as Llama's, Pythia-410M's shape was planned 1.36x its count and
    # OPT-350M's 1.26x (OPT's width, `ffn_dim`, was not read at all). Toy blocks whose MLPs are 2 and 5.5 hidden
    # sizes wide must be planned alike against what autograd keeps (a toy model keeps a few percent more outside
    # its layers than the plan spreads over them).
    from transformers import AutoConfig

    ratios = [_planned_over_counted(monkeypatch, AutoConfig.for_model(
        family, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
        max_position_embeddings=512, **{mlp_key: mlp})) for mlp in (256, 704)]
    assert all(0.9 <= ratio <= 1.03 for ratio in ratios) and abs(ratios[0] - ratios[1]) < 0.03, ratios


def test_the_gpu_plan_of_a_fused_q_k_v_counts_the_output_attention_keeps_whole(monkeypatch) -> None:
    # Phi-3 computes q, k and v in one matmul; attention keeps the values, a view of that output, so the whole
    # output stays: on Phi-3's shape the plan was 0.93 of the count. A toy Phi-3 block and a toy Qwen2 block of the
    # same widths (separate q, k and v) are now planned alike against what autograd keeps.
    from transformers import AutoConfig

    widths = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": 2048, "max_position_embeddings": 512, "pad_token_id": 0}
    ratios = [_planned_over_counted(monkeypatch, AutoConfig.for_model(family, **widths))
              for family in ("phi3", "qwen2")]
    assert all(0.92 <= ratio <= 1.02 for ratio in ratios) and abs(ratios[0] - ratios[1]) < 0.03, ratios


def test_the_gpu_plan_counts_the_probabilities_that_eager_attention_keeps(monkeypatch) -> None:
    # GPT-Neo has no SDPA, so transformers loads it with eager attention, which keeps each layer's attention
    # probabilities for the backward pass, heads x length a token: the plan once counted none (on a GPU it assumed
    # fused attention), and fell to 0.71 of the count at 600 tokens on GPT-Neo-125M's shape, further at longer rows.
    # (Read as GPT-2's block it was also 12% over at any length; GPT-Neo has counts of its own now.)
    from transformers import AutoConfig

    config = AutoConfig.for_model("gpt_neo", hidden_size=256, num_layers=4, num_heads=8, window_size=256,
                                  attention_types=[[["global", "local"], 2]], vocab_size=2048,
                                  max_position_embeddings=2048)
    assert not memory.Shape.from_config(config).fused_attention
    assert not memory.Shape.from_config(config).static_cache  # so its rollouts are planned eager, as they run
    ratios = [_planned_over_counted(monkeypatch, config, 0.0, length=length) for length in (200, 600)]
    assert all(0.92 <= ratio <= 1.05 for ratio in ratios) and abs(ratios[0] - ratios[1]) < 0.05, ratios


def test_the_plan_counts_only_the_layers_lora_adapts() -> None:
    # PEFT's own matching picks the adapted layers; each keeps its input for the backward pass, the others do not.
    every = memory.estimate(GPT2_MEDIUM, "sft", SETTINGS, on_gpu=True, memory_gib=24)
    attention = memory.estimate(GPT2_MEDIUM, "sft", {**SETTINGS, "lora_targets": ["c_attn"]}, on_gpu=True,
                                memory_gib=24)
    assert [name for name, _, _ in lora_layers.adapted(GPT2_MEDIUM.linears, ["c_attn"])] == [
        f"transformer.h.{n}.attn.c_attn" for n in range(24)]
    assert attention.parts["lora"] * 2**30 == 24 * 32 * (1024 + 3072) * 16  # rank 32, 16 bytes a parameter
    tokens_layers = SETTINGS["micro_batch"] * SETTINGS["length"] * 24
    dropped = (every.parts["activations"] - attention.parts["activations"]) * 2**30 / tokens_layers
    assert dropped == pytest.approx(2 * (1024 + 1024 + 4096 + 3 * 32))  # three layers' bf16 inputs and rank-wide values
    assert attention.parts["weight_casts"] < every.parts["weight_casts"]  # the frozen weights are still cast


def test_plan_refuses_lora_targets_the_model_does_not_have(tiny_model_dir: Path) -> None:
    # Planned with no adapter at all, the figures would be quietly wrong; the plan says what `check` says.
    done = run_cli("plan", "--config", str(TINY_RECIPE), "--gpu-memory", "16", "lora.target_modules=[q_proj]")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "lora.target_modules: 'q_proj' names no layer of the model" in done.stderr


def test_layers_that_read_one_input_keep_it_once_unless_autocast_copies_it() -> None:
    # Llama's q, k and v read one input, as gate and up do; under autocast each adapter keeps its own cast of it.
    layer = [("model.layers.0.self_attn." + n, 576, o) for n, o in (("q_proj", 576), ("k_proj", 192),
                                                                     ("v_proj", 192), ("o_proj", 576))]
    layer += [("model.layers.0.mlp." + n, i, o) for n, i, o in (("gate_proj", 576, 1536), ("up_proj", 576, 1536),
                                                                 ("down_proj", 1536, 576))]
    assert lora_layers.kept_inputs(layer, per_layer_copy=False) == 576 + 576 + 576 + 1536
    assert lora_layers.kept_inputs(layer, per_layer_copy=True) == 6 * 576 + 1536
    assert lora_layers.kept_inputs(layer[:3], per_layer_copy=False) == 576


def test_a_recipe_that_does_not_fit_stops_before_training_on_a_gpu(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tiny_model_dir: Path) -> None:
    from gsm8k_tr.train import sft

    monkeypatch.setattr(placement, "accelerator_memory", lambda: (True, 1.0))  # a GPU with 1 GiB free
    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}", "sft.per_device_train_batch_size=256",
                                            "sft.max_length=512"])
    with pytest.raises(UserError) as error:
        sft.main(recipe)
    message = str(error.value)
    assert "\n" not in message and "GiB of GPU memory" in message and "1.0 GiB free" in message
    assert "sft.per_device_train_batch_size=" in message and "sft.gradient_accumulation_steps=" in message
    assert not (tmp_path / "run").exists()  # the recipe check stops it before any work
    # The same recipe on this machine's CPU, or at a size that fits, is not stopped by the plan.
    monkeypatch.setattr(placement, "accelerator_memory", lambda: (False, None))
    assert fitting.check_fits(memory.Shape.from_config(plan.model_config(recipe)), recipe, "sft", None) is None


def test_a_cpu_run_over_the_memory_available_is_warned_about_at_its_real_lengths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # On a CPU the system kills a run past its memory without a word; the stage warns once it knows its rows' lengths
    # (a machine with swap may still finish, so it does not stop). The recipe's full length, all `check` knows, is far
    # over real rows: no warning there.
    from gsm8k_tr.train.trl_configs import sft_args

    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path}", "sft.per_device_train_batch_size=64"])
    shape = memory.Shape.from_config(plan.model_config(recipe))
    config = sft_args(recipe, "<|stop|>", shape.context)
    monkeypatch.setattr(placement, "accelerator_memory", lambda: (False, None))
    needed = memory.estimate(shape, "sft", memory.stage_settings(recipe, "sft", config, shape.context, 200), False)
    for available, longest, warned in [(needed.peak_gib / 2, 200, True), (needed.peak_gib / 2, None, False),
                                       (needed.peak_gib * 2, 200, False)]:
        monkeypatch.setattr(placement, "available_host_memory", lambda: available)  # noqa: B023
        caplog.clear()
        assert fitting.check_fits(shape, recipe, "sft", config, longest=longest) is None
        lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(lines) == warned, (available, longest, lines)
        if warned:
            assert f"about {needed.peak_gib:.1f} GiB" in lines[0] and "sft.per_device_train_batch_size=" in lines[0]
            assert "GPU" not in lines[0]


@pytest.mark.parametrize("stage, longest, memory_gib, micro, accumulation", [
    ("sft", 120, 22.0, 32, 1),    # GSM8K-TR rows of ~120 tokens: the whole effective batch of 32 in one micro-batch
    ("sft", 400, 22.0, 16, 2),    # longer rows: two micro-batches
    ("sft", 1024, 22.0, 8, 4),    # the longest the context allows: the recipe's own split (17.4 GiB)
    ("sft", 120, 4.0, 4, 8),      # a small GPU: smaller micro-batches, the same effective batch
    ("grpo", 150, 80.0, 64, 1),   # GRPO: 64 completions of one step in one micro-batch on an 80 GB card
    ("grpo", 150, 60.0, 32, 2),   # beside the KV cache and weight copies kept between rollouts: two on 60 GiB
    ("grpo", 150, 10.0, 2, 32),   # TRL shuffles the generation batch across micro-batches: they need not be groups
])
def test_auto_micro_batch_keeps_the_effective_batch_and_fits(stage: str, longest: int, memory_gib: float, micro: int,
                                                              accumulation: int) -> None:
    import trl

    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, SFT_DEFAULTS, trl_config

    recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml", ["sft.per_device_train_batch_size=auto",
                                                                        "grpo.per_device_train_batch_size=auto"])
    cls, defaults = (trl.SFTConfig, SFT_DEFAULTS) if stage == "sft" else (trl.GRPOConfig, GRPO_DEFAULTS)
    section = {k: v for k, v in getattr(recipe, stage).items() if k not in ("bf16", "fp16")}
    config = trl_config(cls, stage, section, {**defaults, "bf16": True, "use_cpu": True},
                        {"output_dir": ("/nonexistent", "")})
    batch = fitting.fit_micro_batch(GPT2_MEDIUM, recipe, stage, config, longest, (True, memory_gib))
    assert (batch["per_device_train_batch_size"], batch["gradient_accumulation_steps"]) == (micro, accumulation)
    assert micro * accumulation == 8 * getattr(recipe, stage)["gradient_accumulation_steps"]
    assert batch["planned_gib"] <= memory.FITS_SHARE * memory_gib or micro == 1


@pytest.mark.parametrize("stage, micro", [("sft", fitting.CPU_SFT_ROWS), ("grpo", 64)])
def test_on_a_cpu_auto_takes_small_sft_micro_batches(stage: str, micro: int) -> None:
    # A CPU's step is arithmetic and one micro-batch pads its rows to the longest: there SFT's 32 x 1 trained about
    # half as fast as 4 x 8 grouped by length. GRPO's micro-batches are slices of one padded generation batch, so
    # the largest that fits stays. Memory is no limit here (128 GiB available, for 120-token rows).
    import trl

    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, SFT_DEFAULTS, trl_config

    recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml", [f"{stage}.per_device_train_batch_size=auto"])
    cls, defaults = (trl.SFTConfig, SFT_DEFAULTS) if stage == "sft" else (trl.GRPOConfig, GRPO_DEFAULTS)
    section = {k: v for k, v in getattr(recipe, stage).items() if k not in ("bf16", "fp16")}
    config = trl_config(cls, stage, section, {**defaults, "use_cpu": True}, {"output_dir": ("/nonexistent", "")})
    with mock.patch.object(placement, "available_host_memory", return_value=256.0):  # a CPU plans in half of it
        batch = fitting.fit_micro_batch(GPT2_MEDIUM, recipe, stage, config, 120, (False, None))
    assert batch["per_device_train_batch_size"] == micro and batch["on_gpu"] is False
    assert batch["most_rows"] == (fitting.CPU_SFT_ROWS if stage == "sft" else None)
    assert micro * batch["gradient_accumulation_steps"] == 8 * getattr(recipe, stage)["gradient_accumulation_steps"]
    on_gpu = fitting.fit_micro_batch(GPT2_MEDIUM, recipe, stage, config, 120, (True, 128.0))
    assert on_gpu["per_device_train_batch_size"] > fitting.CPU_SFT_ROWS  # a GPU: the largest that fits


@pytest.mark.slow
def test_a_stage_with_auto_micro_batch_records_its_split(tmp_path: Path, tiny_model_dir: Path) -> None:
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "sft.max_steps=2",
                   "sft.per_device_train_batch_size=auto", "sft.gradient_accumulation_steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    batch = manifest["micro_batch"]
    assert batch["per_device_train_batch_size"] * batch["gradient_accumulation_steps"] == 16  # 8 x 2, kept
    assert batch["longest_tokens"] > 20 and batch["on_gpu"] is False
    assert batch["per_device_train_batch_size"] == batch["most_rows"] == fitting.CPU_SFT_ROWS  # a CPU's limit


def test_the_plan_counts_the_padding_to_a_multiple() -> None:
    import trl

    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, SFT_DEFAULTS, trl_config

    recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml", [])
    lengths = {}
    for multiple in (None, 64):
        sft_config = trl_config(trl.SFTConfig, "sft", {}, {**SFT_DEFAULTS, "use_cpu": True, "max_length": 1024,
                                                           "pad_to_multiple_of": multiple},
                                {"output_dir": ("/nonexistent", "")})
        grpo_config = trl_config(trl.GRPOConfig, "grpo", {"max_completion_length": 300},
                                 {**GRPO_DEFAULTS, "use_cpu": True, "pad_to_multiple_of": multiple},
                                 {"output_dir": ("/nonexistent", "")})
        lengths[multiple] = (memory.stage_settings(recipe, "sft", sft_config, 1024, 700)["length"],
                             memory.stage_settings(recipe, "grpo", grpo_config, 1024, 150))
    assert lengths[None][0] == 700 and lengths[64][0] == 704  # the longest row, then up to the multiple
    unpadded, padded = lengths[None][1], lengths[64][1]
    assert unpadded["length"] == 450 and padded["length"] == 192 + 320  # prompt and completion, each padded
    # TRL pads the prompts for generation too, so compiled decoding adds no padding of its own
    assert unpadded["cache_padding"] == 63 and padded["cache_padding"] == 0


def test_grpo_plans_no_prompt_longer_than_the_stage_keeps() -> None:
    # The stage drops prompts that leave no room for a whole completion; the plan once took 512 prompt tokens
    # beside them anyway, so a 512-token model planned rows of 576 and GPT-2 with 640-token completions 1,152.
    import trl

    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, trl_config

    recipe = load_recipe(ROOT / "recipes" / "turkish-gpt2-medium.yaml", [])
    for multiple, completion, context, length, prompt in ((64, 64, 512, 512, 448), (None, 64, 512, 512, 448),
                                                          (64, 640, 1024, 1024, 384), (64, 384, 1024, 896, 512)):
        config = trl_config(trl.GRPOConfig, "grpo", {"max_completion_length": completion},
                            {**GRPO_DEFAULTS, "use_cpu": True, "pad_to_multiple_of": multiple},
                            {"output_dir": ("/nonexistent", "")})
        settings = memory.stage_settings(recipe, "grpo", config, context)
        assert (settings["length"], settings["prompt_length"]) == (length, prompt), (multiple, completion, context)


def test_sft_padding_may_not_pass_the_context(tmp_path: Path) -> None:
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.train.trl_configs import sft_args

    fine = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={tmp_path}", "sft.pad_to_multiple_of=64",
                                                        "sft.use_cpu=true"])
    assert sft_args(fine, "<|stop|>", 512).pad_to_multiple_of == 64
    past = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={tmp_path}", "sft.pad_to_multiple_of=96",
                                                        "sft.use_cpu=true"])
    with pytest.raises(UserError, match="sft.pad_to_multiple_of' is 96.*context of 512"):
        sft_args(past, "<|stop|>", 512)


@pytest.mark.parametrize("cuda, expected", [(True, 128), (False, None)])
def test_both_stages_pad_to_the_multiple_placement_chooses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          cuda: bool, expected: int | None) -> None:
    from gsm8k_tr import placement
    from gsm8k_tr.train.trl_configs import grpo_args, sft_args

    monkeypatch.setattr(placement, "has_cuda", lambda: cuda)
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={tmp_path}", "sft.use_cpu=true",
                                                          "grpo.use_cpu=true"])
    assert sft_args(recipe, "<|stop|>", 512).pad_to_multiple_of == expected
    assert grpo_args(recipe, [0], 512).pad_to_multiple_of == expected
    own = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={tmp_path}", "sft.use_cpu=true",
                                                       "sft.pad_to_multiple_of=8"])
    assert sft_args(own, "<|stop|>", 512).pad_to_multiple_of == 8  # a recipe's own value wins


@pytest.mark.parametrize("multiple, cuda, warned", [
    (64, True, True),      # a GRPO batch of 320 tokens: NaN gradients on an H200 (benchmarks/attention_nan.py)
    (None, True, True),    # each batch its own length: one in 128 lengths is 64 modulo 128
    (128, True, False), (256, True, False),
    (64, False, False),    # no CUDA GPU, no cuDNN attention
])
def test_grpo_padding_that_reaches_64_modulo_128_tokens_on_a_gpu_is_warned(
        multiple: int | None, cuda: bool, warned: bool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from gsm8k_tr import placement
    from gsm8k_tr.train import trl_configs

    monkeypatch.setattr(placement, "has_cuda", lambda: cuda)
    monkeypatch.setattr(trl_configs, "_said", set())
    trl_configs.check_grpo_padding(SimpleNamespace(pad_to_multiple_of=multiple, use_cpu=False))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert bool(lines) == warned
    assert not lines or f"grpo.pad_to_multiple_of is {multiple or 'null'}" in lines[0]
    caplog.clear()
    trl_configs.check_grpo_padding(SimpleNamespace(pad_to_multiple_of=multiple, use_cpu=True))  # trains on the CPU
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
