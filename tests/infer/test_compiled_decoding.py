"""Compiled decoding (a static cache and torch.compile's graph for each decoding step) gives the eager path's tokens."""

from __future__ import annotations

import pytest
from conftest import needs_compiler

torch = pytest.importorskip("torch")


def test_the_compiled_config_asks_transformers_for_a_static_cache_and_its_compile() -> None:
    from transformers import GenerationConfig

    from gsm8k_tr.infer.compiled_decoding import generation_config

    trl_like = GenerationConfig(max_new_tokens=8, do_sample=True, disable_compile=True)
    for device, mode, everywhere in (("cuda", "reduce-overhead", None), ("cpu", "default", True)):
        config = generation_config(trl_like, torch.device(device))
        assert (config.cache_implementation, config.disable_compile) == ("static", False)
        assert (config.compile_config.mode, config.compile_config.dynamic) == (mode, False)
        assert config.compile_config._compile_all_devices is everywhere
    assert trl_like.disable_compile and trl_like.cache_implementation is None  # the caller's config is untouched


@needs_compiler
def test_compiled_evaluation_gives_the_eager_tokens(tiny_model_dir, compiled_calls, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(40, seed=3)]
    lengths = sorted(len(tokenizer(p)["input_ids"]) for p in prompts)
    assert lengths[0] <= PROMPT_MULTIPLE < lengths[-1]  # two prompt buckets: a second, longer cache
    padded = []
    real_generate = type(model).generate
    monkeypatch.setattr(type(model), "generate",
                        lambda self, **kw: padded.append(kw["input_ids"].shape[1]) or real_generate(self, **kw))
    eager = generation.generate(model, tokenizer, prompts, 24, batch_size=8, decoding="eager")
    eager_lengths, padded[:] = list(padded), []
    compiled = generation.generate(model, tokenizer, prompts, 24, batch_size=8, decoding="compiled")
    assert [[c.text for c in row] for row in compiled] == [[c.text for c in row] for row in eager]
    assert [[c.tokens for c in row] for row in compiled] == [[c.tokens for c in row] for row in eager]
    assert all(length % PROMPT_MULTIPLE == 0 for length in padded) and padded != eager_lengths
    assert len(set(padded)) == 2 and all(c.truncated for row in eager for c in row)
    assert len(compiled_calls) == 5 * 23  # every decoding step of the 5 batches (24 tokens: prefill + 23), compiled
    assert {shape[1] for shape in compiled_calls} == {1}  # decoding steps only: the prefill runs eagerly


@pytest.mark.parametrize("triton", [True, False])
def test_auto_decoding_is_compiled_on_cuda_with_triton_only(monkeypatch: pytest.MonkeyPatch, triton: bool) -> None:
    from gsm8k_tr import placement
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.errors import UserError

    monkeypatch.setattr(placement, "has_triton", lambda: triton)
    monkeypatch.setenv("CC", "cc")  # a C compiler for Triton, whatever this machine has
    assert placement.decoding("auto", "cuda") == ("compiled" if triton else "eager")  # measured faster on an H200
    for device in ("cpu", "mps"):  # measured slower on 2 CPU cores; not measured on MPS
        assert placement.decoding("auto", device) == "eager"
    for device in ("cpu", "cuda", "mps"):
        assert placement.decoding("eager", device) == "eager"
        assert placement.decoding("compiled", device) == "compiled"
        assert placement.decoding("auto", device, sharded=True) == "eager"
        assert placement.decoding("compiled", device, sharded=True) == "eager"
    assert load_recipe(None, ["decoding=compiled"]).decoding == "compiled"
    with pytest.raises(UserError,
                       match="recipe key 'decoding' must be one of auto, eager, compiled, compiled-step, got 'fast'"):
        load_recipe(None, ["decoding=fast"])


def test_auto_stays_eager_for_a_single_generation_batch(monkeypatch: pytest.MonkeyPatch, tiny_model_dir) -> None:
    """One batch (`gsm8k-tr generate`, a small evaluation) would pay a whole compile to save less than it costs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr import placement
    from gsm8k_tr.infer import generation

    monkeypatch.setattr(placement, "has_triton", lambda: True)
    monkeypatch.setenv("CC", "cc")
    assert [placement.decoding("auto", "cuda", batches=n) for n in (1, 2, None)] == ["eager", "compiled", "compiled"]
    assert placement.decoding("compiled", "cuda", batches=1) == "compiled"  # asked for: compiled all the same
    seen, choose = [], placement.decoding
    monkeypatch.setattr(placement, "decoding", lambda *args: seen.append(args) or choose(*args))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    generation.generate(model, tokenizer, ["1 + 1 ="] * 5, 2, batch_size=2)
    assert seen and seen[-1][3] == 3  # five prompts in batches of two


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_auto_decodes_eager_where_compiling_fails_and_a_compiled_request_is_one_line(
        tiny_model_dir, compiled_calls, compiler_fails, monkeypatch, caplog) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr import placement
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.infer import generation

    monkeypatch.setattr(placement, "auto_compiles", lambda device: True)  # as on a CUDA GPU with Triton
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(10, seed=3)]
    eager = generation.generate(model, tokenizer, prompts, 12, batch_size=4, decoding="eager")
    assert not compiled_calls
    done = []
    with caplog.at_level("WARNING", logger="gsm8k_tr.placement"):
        auto = generation.generate(model, tokenizer, prompts, 12, batch_size=4, progress=done.append)
    assert [[c.tokens for c in row] for row in auto] == [[c.tokens for c in row] for row in eager]
    assert [[c.text for c in row] for row in auto] == [[c.text for c in row] for row in eager]
    assert len(compiled_calls) == 1 and done == [4, 4, 2]  # the first batch tried compiled, then each batch once
    said = [r.getMessage() for r in caplog.records if "compiling the decoding step failed" in r.getMessage()]
    assert len(said) == 1 and "No working C++ compiler" in said[0], said
    # The rest of the process decodes eager without trying again, and says nothing more.
    assert placement.decoding("auto", "cuda", batches=3) == "eager"
    again = generation.generate(model, tokenizer, prompts, 12, batch_size=4)
    assert len(compiled_calls) == 1 and [[c.tokens for c in row] for row in again] == [[c.tokens for c in row]
                                                                                        for row in eager]
    assert len([r for r in caplog.records if "compiling the decoding step failed" in r.getMessage()]) == 1
    # An evaluation's metrics say how it decoded, and why.
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate

    recipe = load_recipe(None, ["eval.max_new_tokens=12", "eval.batch_size=4"])
    rows = [{"question": r["question"], "answer": r["gold"]} for r in synth.make_problems(10, seed=3)]
    found, _ = evaluate.evaluate(model, tokenizer, rows, recipe)
    assert found["decoding"] == "eager" and "C++ compiler" in found["compile_failed"]
    # Asked for by the recipe: one line, with the way out.
    with pytest.raises(UserError, match=r"^decoding: compiled failed to compile on this machine \(.*C\+\+ compiler.*\);"
                                        r" set decoding: eager"):
        generation.generate(model, tokenizer, prompts, 12, batch_size=4, decoding="compiled")


def test_other_errors_while_decoding_compiled_are_not_taken_for_a_compile_failure() -> None:
    from gsm8k_tr import placement

    assert not placement.compile_failed("auto", "compiled", RuntimeError("CUDA out of memory"))
    assert not placement.compile_failed("auto", "eager", torch._dynamo.exc.TorchDynamoException("eager never compiles"))
    assert placement.compile_failure is None


@needs_compiler
def test_compiled_decoding_compiles_each_shape_past_torchs_recompile_limit(tiny_model_dir) -> None:
    """torch compiles a function for at most 8 shapes, then runs new ones eager without a word; a run's rollouts,
    held-out checks and evaluations meet more. Here the limit is 1, so the second shape would run eager."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr.infer import generation

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    with torch._dynamo.config.patch(recompile_limit=1):
        graphs = counters["stats"]["unique_graphs"]
        for batch, new in ((3, 7), (5, 5)):  # shapes no other test compiles
            generation.generate(model, tokenizer, ["1 + 1 ="] * batch, new, batch_size=batch, decoding="compiled")
        assert counters["stats"]["unique_graphs"] == graphs + 2
