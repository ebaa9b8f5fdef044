"""The attention kernels `generate` runs with, as `placement.decoding_attention` names them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_only_limits_attention_to_the_named_kernels_for_the_block() -> None:
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    from gsm8k_tr.infer import attention_kernels

    before = set(_cur_sdpa_kernel_backends())
    with attention_kernels.only(["MATH"]):
        assert _cur_sdpa_kernel_backends() == [SDPBackend.MATH]
    assert set(_cur_sdpa_kernel_backends()) == before
    with attention_kernels.only(None):  # torch's own choice: nothing changes
        assert set(_cur_sdpa_kernel_backends()) == before


def test_generation_runs_with_the_kernels_placement_names_and_the_same_tokens(tiny_model_dir, monkeypatch) -> None:
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr import placement
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(6, seed=2)]
    seen = []
    real_generate = type(model).generate
    monkeypatch.setattr(type(model), "generate",
                        lambda self, **kw: seen.append(_cur_sdpa_kernel_backends()) or real_generate(self, **kw))
    plain = generation.generate(model, tokenizer, prompts, 12, batch_size=3)  # a CPU: torch's own choice
    assert seen and all(SDPBackend.MATH in kernels and len(kernels) > 1 for kernels in seen)
    # As eager decoding on CUDA asks: the named kernels only (here the math kernel, which a CPU has too).
    monkeypatch.setattr(placement, "decoding_attention", lambda device, how: ["MATH"] if how == "eager" else None)
    seen.clear()
    limited = generation.generate(model, tokenizer, prompts, 12, batch_size=3)
    assert seen == [[SDPBackend.MATH]] * 2
    assert [[c.text for c in row] for row in limited] == [[c.text for c in row] for row in plain]
