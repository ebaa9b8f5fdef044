"""Model families other than the shipped recipes' GPT-2 and Llama (conftest's FAMILIES, random 2-layer models):
the decoding paths give transformers' own greedy tokens, the plan and the check take them, and the whole pipeline
runs on them. GRPO's scoring of a left-padded batch is checked on them in `tests/train/test_positions.py`."""

from __future__ import annotations

import pytest
from conftest import ROOT, needs_compiler

torch = pytest.importorskip("torch")


def _loaded(folder):
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate

    model, tokenizer, _ = evaluate.load_for_inference(str(folder), load_recipe(None, []), "cpu")
    return model, tokenizer


def _prompts(count: int) -> list[str]:
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt

    return [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(count, seed=5)]


def _alone(model, tokenizer, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy tokens from transformers' `generate`, one prompt at a time (no padding at all)."""
    from gsm8k_tr.infer import generation

    config = generation.generation_config(model, tokenizer.pad_token_id, new_tokens, 0.0)
    found = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            found.append(model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        generation_config=config)[0, ids.shape[1]:].tolist())
    return found


def _answers_alone(model, tokenizer, decoding: str) -> list[bool]:
    """For each of six prompts of different lengths, batched four at a time and left-padded: whether the project's
    decoding gives the answer transformers gives that prompt alone."""
    from gsm8k_tr.infer import generation

    prompts = _prompts(6)
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1
    found = generation.generate(model, tokenizer, prompts, 20, batch_size=4, decoding=decoding)
    stops = set(generation.stop_ids(model))
    same = []
    for (completion,), expected in zip(found, _alone(model, tokenizer, prompts, 20)):
        cut = next((i for i, token in enumerate(expected) if token in stops), len(expected))
        same.append(completion.text == tokenizer.decode(expected[:cut], skip_special_tokens=True)
                    and completion.tokens == min(cut + 1, len(expected)))
    return same


COMPILED = [pytest.param(way, marks=needs_compiler) for way in ("compiled", "compiled-step")]


@pytest.mark.parametrize("decoding", ["eager", *COMPILED])
def test_batched_greedy_answers_are_each_prompt_alone(family_model_dir, decoding, monkeypatch) -> None:
    # Every family's positions (rotary, learned with an offset, ALiBi) must skip the left padding, and the growing
    # cache with its prefill, or a compiled decoding with its static cache, must give each prompt its own answer.
    # GPT-Neo decodes eager whatever the recipe asks: transformers does not compile it whole. So does Gemma-2, whose
    # sliding layer would make every step a new graph (`test_a_sliding_window_layer_recompiles_at_every_step`).
    from gsm8k_tr import modeling, placement

    model, tokenizer = _loaded(family_model_dir)
    chosen = placement.decoding(decoding, "cpu", static_cache=modeling.runs_on_static_cache(model))
    assert chosen == ("eager" if model.config.model_type in ("gpt_neo", "gemma2") else decoding)
    assert all(_answers_alone(model, tokenizer, decoding))
    if chosen != decoding and model.config.model_type == "gpt_neo":
        # why: its local attention places the query at the end of the keys, a static cache's end
        monkeypatch.setattr(modeling, "runs_on_static_cache", lambda model: True)
        assert not all(_answers_alone(model, tokenizer, decoding))


def test_prompts_kept_once_give_generates_tokens(family_model_dir) -> None:
    # GRPO's rollouts: each prompt's rows side by side. With its prompt prefilled once, and for the model types
    # grouped attention checks kept and read once per group (eager, then compiled-step's static cache), greedy
    # decoding gives transformers' own sequences; the others keep a copy per row.
    from gsm8k_tr.infer import compiled_step, generation, grouped_attention, kv_cache

    model, tokenizer = _loaded(family_model_dir)
    tokenizer.padding_side = "left"
    batch = tokenizer(_prompts(3), return_tensors="pt", padding=True, add_special_tokens=False)
    rows = {key: value.repeat_interleave(4, 0) for key, value in batch.items()}
    config = generation.generation_config(model, tokenizer.pad_token_id, 20, 0.0)
    kind = model.config.model_type
    assert grouped_attention.supports(model) == (kind in ("qwen2", "gemma", "gpt_neox", "opt", "phi3")), kind
    held = []
    real = grouped_attention.attending

    def attending(model, cache):  # which calls read each group's prompt once
        held.append(grouped_attention.holds_groups(cache))
        return real(model, cache)

    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(grouped_attention, "attending", attending)
        expected = model.generate(**rows, generation_config=config)
        with kv_cache.growing_cache(model, share_prompts=True, grouped=True):
            found = model.generate(**rows, generation_config=config)
        assert torch.equal(found, expected)
        if grouped_attention.supports(model):
            stepped = compiled_step.generate(model, rows["input_ids"], rows["attention_mask"], config, grouped=True)
            assert torch.equal(stepped, expected)
    assert held == ([True, True] if grouped_attention.supports(model) else [])


def test_a_sliding_window_or_soft_capped_scores_keep_a_copy_per_row() -> None:
    # grouped attention reads a cache that holds every position and adds no soft cap: a Qwen2 with its sliding
    # window on (shorter than its context) or Gemma-2's capped scores stay with per-row copies.
    from transformers import AutoConfig

    from gsm8k_tr.infer.grouped_attention import config_supports

    qwen2 = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 512, "sliding_window": 32}
    assert config_supports(AutoConfig.for_model("qwen2", **qwen2))  # the window is off unless use_sliding_window
    assert not config_supports(AutoConfig.for_model("qwen2", **qwen2, use_sliding_window=True))
    assert config_supports(AutoConfig.for_model("qwen2", **{**qwen2, "sliding_window": 512}, use_sliding_window=True))
    assert not config_supports(AutoConfig.for_model("gemma2", hidden_size=64, num_attention_heads=4))
    assert not config_supports(AutoConfig.for_model("gemma", hidden_size=64, num_attention_heads=4,
                                                    attn_logit_softcapping=50.0))


def _graphs_for_three_steps(config) -> int:
    """How many graphs torch's compiler makes for three decoding steps of a random 2-layer model of `config` on
    transformers' static cache: traced only (a backend that counts and runs eager), so nothing is built."""
    from torch._dynamo.testing import CompileCounter
    from transformers import AutoModelForCausalLM, StaticCache

    from gsm8k_tr.infer.kv_cache import KEYWORD

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    cache = StaticCache(config=config, max_cache_len=16)
    counter = CompileCounter()
    step = torch.compile(lambda ids, position: model(input_ids=ids, position_ids=position, use_cache=True,
                                                     **{KEYWORD: cache}).logits, backend=counter, dynamic=False)
    torch._dynamo.reset()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=True, **{KEYWORD: cache})  # the prefill, eager
        for position in range(4, 7):
            step(torch.tensor([[5]]), torch.tensor([[position]]))
    return counter.frame_count


def test_a_sliding_window_layer_recompiles_at_every_step() -> None:
    # Why `modeling.runs_on_static_cache` says no to a static cache with sliding-window layers: transformers counts
    # their tokens in a Python int that torch's compiler guards on, so each step is a new graph (a 2-layer Gemma-2
    # recompiled 37 times in one test, 56 s against 0.3 s eager), where a full-attention cache compiles once. If a
    # transformers release keeps that count in a tensor, this fails: then compile such models again.
    from transformers import AutoConfig

    from gsm8k_tr import modeling

    shape = {"vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
    sliding = AutoConfig.for_model("mistral", **shape, sliding_window=8)
    full = AutoConfig.for_model("mistral", **shape, sliding_window=None)
    assert modeling.has_sliding_static_layers(sliding) and not modeling.has_sliding_static_layers(full)
    assert _graphs_for_three_steps(full) == 1
    assert _graphs_for_three_steps(sliding) == 3


def test_check_and_plan_take_the_model(family_model_dir) -> None:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import plan, recipe_check

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"model.name_or_path={family_model_dir}"])
    recipe_check.check(recipe)
    shape, plans = plan.plan_recipe(recipe, 16)
    assert shape.context == 512 and shape.linears
    # Qwen2's, GPT-NeoX's, OPT's and GPT-Neo's layouts among these were counted against what autograd keeps; the
    # plan says so of the others. GPT-Neo and BLOOM load with eager attention, whose kept probabilities the plan
    # counts, and Gemma-2 too where transformers loads it so (5.24 does; 5.19 loads it with SDPA).
    assert (plan.layout_note(shape) is None) == (shape.model_type in ("qwen2", "gpt_neox", "opt", "gpt_neo"))
    eager = {"gpt_neo", "bloom"}
    if shape.model_type == "gemma2":
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(family_model_dir, use_kernels=False).config._attn_implementation
        eager |= {"gemma2"} if loaded == "eager" else set()
    assert shape.fused_attention == (shape.model_type not in eager)
    # No planned SFT row is longer than the model's context. GRPO's prompt (at most 448 tokens beside the 64 of its
    # completion) and completion are each padded to 128 on a GPU (placement.pad_to_multiple_of), 512 + 128 in all:
    # past the context by padding alone, whose positions the scoring hook takes from the mask.
    assert plans["sft"].settings["length"] <= 512 and plans["grpo"].settings["length"] == 512 + 128
    assert all(stage.fits and stage.parts["lora"] > 0 for stage in plans.values())


def test_a_recipe_asking_gpt_neo_to_compile_runs_eager_and_says_so(tiny_model_dir, tmp_path, monkeypatch) -> None:
    # Through the stages: GRPO's rollouts, its held-out checks and the evaluations all decode eager, as recorded in
    # the manifest and the metrics, and the run says once why.
    import json

    from conftest import TINY_RECIPE, family_model, run_cli

    from gsm8k_tr import placement

    monkeypatch.setattr(placement, "_refused", set())  # as in a fresh process
    model = family_model("gpt_neo", tiny_model_dir, tmp_path / "gpt_neo")
    done = run_cli("pipeline", "--config", str(TINY_RECIPE), f"model.name_or_path={model}",
                   f"output_dir={tmp_path / 'run'}", "decoding=compiled-step", "sft.max_steps=2", "grpo.max_steps=2",
                   "eval.limit=4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("decoding: compiled-step needs a model") == 1
    manifest = json.loads((tmp_path / "run" / "grpo" / "manifest.json").read_text())
    assert manifest["rollouts"]["decoding"] == "eager" and manifest["rollouts"]["kv_cache"] == "growing"
    for stage in ("base", "sft", "grpo"):
        assert json.loads((tmp_path / "run" / "eval" / stage / "metrics.json").read_text())["decoding"] == "eager"


@pytest.mark.slow
def test_the_whole_pipeline_runs_on_each_family(family_model_dir, tmp_path) -> None:
    # SFT with LoRA on every linear layer (fused, split or Conv1D projections), GRPO's rollouts and scoring, and the
    # evaluations, from each family's own layers: the tests above check its decoding, plan and check alone.
    import json

    from conftest import TINY_RECIPE, run_cli

    run = tmp_path / "run"
    done = run_cli("pipeline", "--config", str(TINY_RECIPE), f"model.name_or_path={family_model_dir}",
                   f"output_dir={run}", "sft.max_steps=3", "grpo.max_steps=2", "eval.limit=4", "eval.every_steps=0")
    assert done.returncode == 0, done.stderr[-2000:]
    for stage in ("sft", "grpo"):
        assert json.loads((run / stage / "manifest.json").read_text())["global_step"] == (3 if stage == "sft" else 2)
    for stage in ("base", "sft", "grpo"):
        assert json.loads((run / "eval" / stage / "metrics.json").read_text())["n"] == 4
