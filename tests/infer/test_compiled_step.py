"""Each whole decoding step one compiled graph (`decoding: compiled-step`) gives transformers' `generate` output."""

from __future__ import annotations

import logging

import pytest
from conftest import needs_compiler

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    """The tiny model as evaluation loads it (its stop tokens configured), and its tokenizer."""
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate

    model, tokenizer, _ = evaluate.load_for_inference("builtin:tiny-gpt2", load_recipe(None, []), "cpu")
    return model, tokenizer


def _prompts(count: int, seed: int) -> list[str]:
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt

    return [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(count, seed=seed)]


@needs_compiler
def test_greedy_answers_are_generates_own(tiny, monkeypatch) -> None:
    from torch._dynamo.utils import counters

    from gsm8k_tr.infer import compiled_step, generation
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE

    model, tokenizer = tiny
    prompts = _prompts(40, seed=3)
    lengths = sorted(len(tokenizer(p)["input_ids"]) for p in prompts)
    assert lengths[0] <= PROMPT_MULTIPLE < lengths[-1]  # two prompt buckets
    steps = []
    real = compiled_step._compiled_step
    monkeypatch.setattr(compiled_step, "_compiled_step", lambda device: lambda *a: steps.append(1) or real(device)(*a))
    graphs = counters["stats"]["unique_graphs"]
    eager = generation.generate(model, tokenizer, prompts, 96, batch_size=8, decoding="eager")
    graphs_eager = counters["stats"]["unique_graphs"]
    stepped = generation.generate(model, tokenizer, prompts, 96, batch_size=8, decoding="compiled-step")
    assert [[c.text for c in row] for row in stepped] == [[c.text for c in row] for row in eager]
    assert [[c.tokens for c in row] for row in stepped] == [[c.tokens for c in row] for row in eager]
    answers = [c for row in eager for c in row]
    assert not any(c.truncated for c in answers) and max(c.tokens for c in answers) < 96  # every batch ended early
    # Each batch stopped at the first check of the stop flags after its longest answer (every CHECK_EVERY steps; the
    # prefill gives the first token), each step through the compiled graph, and the buffers kept from the first
    # (longest-prompt) batch served the shorter bucket: one graph for all five batches.
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i])["input_ids"]), reverse=True)
    longest = [max(eager[i][0].tokens for i in order[start:start + 8]) for start in range(0, len(order), 8)]
    every = compiled_step.CHECK_EVERY
    assert len(steps) == sum(min(95, every * -(-last // every) - 1) for last in longest)
    assert graphs_eager == graphs and counters["stats"]["unique_graphs"] == graphs + 1
    # The sequences themselves, prompts and padding included, are generate's: the same length, cut where it stopped.
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts[:8], return_tensors="pt", padding=True, pad_to_multiple_of=PROMPT_MULTIPLE,
                      add_special_tokens=False)
    config = generation.generation_config(model, tokenizer.pad_token_id, 96, 0.0)
    with torch.inference_mode():
        expected = model.generate(**batch, generation_config=config)
    with torch.no_grad():  # as TRL calls generate: the buffers were made in inference mode, the answer is ordinary
        found = compiled_step.generate(model, batch["input_ids"], batch["attention_mask"], config)
    assert found.shape == expected.shape and torch.equal(found, expected) and not found.is_inference()
    assert counters["stats"]["unique_graphs"] == graphs + 1


@needs_compiler
def test_a_short_last_batch_is_filled_up_to_replay_the_full_batchs_graph(tiny, monkeypatch) -> None:
    from torch._dynamo.utils import counters

    from gsm8k_tr.infer import compiled_step, generation

    model, tokenizer = tiny
    prompts = _prompts(20, seed=3)  # batches of 8, 8 and 4
    rows = []
    real = compiled_step.generate
    monkeypatch.setattr(compiled_step, "generate",
                        lambda m, ids, *a, **kw: rows.append(ids.shape[0]) or real(m, ids, *a, **kw))
    eager = generation.generate(model, tokenizer, prompts, 96, batch_size=8, decoding="eager")
    graphs = counters["stats"]["unique_graphs"]
    stepped = generation.generate(model, tokenizer, prompts, 96, batch_size=8, decoding="compiled-step")
    assert rows == [8, 8, 8] and counters["stats"]["unique_graphs"] - graphs <= 1  # one batch size, one graph
    assert [[(c.text, c.tokens) for c in row] for row in stepped] == [[(c.text, c.tokens) for c in row] for row in eager]
    rows.clear()
    generation.generate(model, tokenizer, prompts[:5], 96, batch_size=8, decoding="compiled-step")
    assert rows == [5]  # a single batch is not filled: it compiles for its own size either way


@needs_compiler
def test_sampling_repeats_with_its_seed_and_draws_from_the_softmax(tiny) -> None:
    from gsm8k_tr.infer import compiled_step, generation

    model, tokenizer = tiny
    prompts = _prompts(8, seed=5)

    def sampled(seed: int) -> list[list[str]]:
        found = generation.generate(model, tokenizer, prompts, 32, batch_size=8, temperature=0.7, samples=2,
                                    seed=seed, decoding="compiled-step")
        return [[c.text for c in row] for row in found]

    first = sampled(5)
    assert sampled(5) == first and sampled(6) != first
    assert all(len(row) == 2 for row in first) and any(a != b for a, b in first)  # two different samples a prompt
    # The draw itself, eager and compiled: frequencies within 5 standard errors of softmax(logits / temperature).
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]).repeat(20000, 1)
    expected = torch.softmax(logits[0] / 0.7, dim=-1)
    for choose in (compiled_step.choose, torch.compile(compiled_step.choose, dynamic=False)):
        torch.manual_seed(0)
        counts = torch.bincount(choose(logits, 0.7), minlength=6).double() / logits.shape[0]
        assert ((counts - expected).abs() <= 5 * (expected * (1 - expected) / logits.shape[0]).sqrt() + 1e-4).all()
    assert torch.equal(compiled_step.choose(logits[:3], None), torch.zeros(3, dtype=torch.long))


def test_what_it_does_not_do_goes_to_generate_with_one_line(tiny, caplog) -> None:
    from transformers import GenerationConfig

    from gsm8k_tr.infer import compiled_step, generation

    model, _ = tiny
    trl_like = GenerationConfig(max_new_tokens=8, do_sample=True, pad_token_id=0, bos_token_id=None, eos_token_id=[5],
                                temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
                                cache_implementation=None, disable_compile=True)
    ours = generation.generation_config(model, 0, 8, 0.7, samples=4)
    for config in (trl_like, ours, generation.generation_config(model, 0, 8, 0.0)):
        assert compiled_step.unsupported(compiled_step.effective_config(model, config)) is None
    for change, reason in (({"top_k": 50}, "top_k=50"), ({"repetition_penalty": 1.2}, "repetition_penalty=1.2"),
                           ({"num_beams": 2}, "num_beams=2"), ({"max_new_tokens": None}, "no max_new_tokens"),
                           ({"temperature": 0.0}, "temperature=0.0")):
        config = GenerationConfig(**{**trl_like.to_diff_dict(), **change})
        assert compiled_step.unsupported(compiled_step.effective_config(model, config)) == reason
    # The model's own generation config fills what a call leaves unset, as in generate; greedy decoding does not use
    # the sampling settings, as in generate.
    model.generation_config.top_p = 0.9
    model.generation_config._from_model_config = True  # as a config.json-only hub model's, outside configure_tokens
    try:
        sampled = GenerationConfig(max_new_tokens=8, do_sample=True)
        assert compiled_step.unsupported(compiled_step.effective_config(model, sampled)) == "top_p=0.9"
        greedy = GenerationConfig(max_new_tokens=8, do_sample=False)
        assert compiled_step.unsupported(compiled_step.effective_config(model, greedy)) is None
    finally:
        model.generation_config.top_p, model.generation_config._from_model_config = None, False
    calls = []
    config = GenerationConfig(**{**trl_like.to_diff_dict(), "top_k": 7})
    ids = torch.tensor([[1, 2, 3]])
    with caplog.at_level(logging.INFO, logger="gsm8k_tr.infer.compiled_step"):
        for _ in range(2):
            compiled_step.generate(model, ids, None, config, fallback=lambda **kw: calls.append(kw) or "generated")
    assert len(calls) == 2 and calls[0]["generation_config"] is config and calls[0]["input_ids"] is ids
    assert [r.getMessage() for r in caplog.records if "top_k=7" in r.getMessage()] == [
        "decoding: compiled-step does not do top_k=7; transformers' generate runs these calls"]


def test_a_recipe_asks_for_it_and_placement_keeps_it_off_sharded_weights() -> None:
    from gsm8k_tr import placement
    from gsm8k_tr.config import load_recipe

    for device in ("cpu", "cuda", "mps"):
        assert placement.decoding("compiled-step", device) == "compiled-step"
        assert placement.decoding("compiled-step", device, sharded=True) == "eager"
    path = placement.rollout_path(sharded=False, vllm=False, device="cuda", decoding_request="compiled-step")
    assert (path["decoding"], path["kv_cache"], path["shared_prefill"]) == ("compiled-step", "static", False)
    assert path["grouped_attention"]  # a group's prompt once in the static cache, read inside the step's graph
    assert load_recipe(None, ["decoding=compiled-step"]).decoding == "compiled-step"


@needs_compiler
def test_groups_keep_their_prompt_once_and_decode_generates_own_tokens(tiny) -> None:
    from gsm8k_tr.infer import compiled_step, generation
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE

    model, tokenizer = tiny
    tokenizer.padding_side = "left"
    prompts = _prompts(4, seed=3)
    config = generation.generation_config(model, tokenizer.pad_token_id, 96, 0.0)

    def both(texts: list[str], grouped: bool, multiple: int | None = PROMPT_MULTIPLE) -> tuple:
        batch = tokenizer(texts, return_tensors="pt", padding=True, pad_to_multiple_of=multiple,
                          add_special_tokens=False)
        with torch.inference_mode():
            expected = model.generate(**batch, generation_config=config)
        with torch.no_grad():
            found = compiled_step.generate(model, batch["input_ids"], batch["attention_mask"], config, grouped=grouped)
        return found, expected, model.__dict__["_gsm8k_tr_step_buffers"]

    # Groups of 4 consecutive rows, as TRL hands them over: each prompt once in the cache, generate's tokens.
    found, expected, buffers = both([p for p in prompts for _ in range(4)], grouped=True)
    assert found.shape == expected.shape and torch.equal(found, expected)
    assert found.shape[1] < expected.shape[1] + 96 - 8  # the rows stopped: the stop flags were read
    assert buffers.groups == 4 and buffers.cache.layers[0].prefix_keys.shape[0] == 4
    assert model.config._attn_implementation == "sdpa"  # the model's own attention is back after the call
    # Shorter prompts reuse the buffers (the unused end of each prompt's slots masked).
    found, expected, again = both([p[:len(p) // 3] for p in prompts for _ in range(4)], grouped=True, multiple=None)
    assert torch.equal(found, expected) and again is buffers
    # Rows of a prompt that are not consecutive keep one copy each, with the same tokens.
    found, expected, buffers = both([p for _ in range(4) for p in prompts], grouped=True)
    assert torch.equal(found, expected) and buffers.groups == 0
