"""`generate` reading its stop flag a step late (`infer/stop_check.py`), as `placement.stop_check` says."""

from __future__ import annotations

import pytest
from conftest import needs_compiler

torch = pytest.importorskip("torch")


def test_deferred_turns_transformers_check_on_for_the_block_only() -> None:
    from transformers.cache_utils import DynamicCache
    from transformers.generation.utils import DeferredStopCheck

    from gsm8k_tr.infer import stop_check

    cuda = torch.device("cuda")
    assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)  # transformers: MPS only
    with stop_check.deferred(False):
        assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)
    with stop_check.deferred(True):
        assert DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)
        assert DeferredStopCheck.is_supported(cuda, DynamicCache(), True, is_assistant=False)  # it can crop it back
        # transformers' own conditions still hold: no assistant model, a cache handed back must be croppable.
        assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=True)

        class Uncroppable(DynamicCache):
            is_croppable = False

        assert not DeferredStopCheck.is_supported(cuda, Uncroppable(), True, is_assistant=False)
    assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)
    assert isinstance(vars(DeferredStopCheck)["is_supported"], staticmethod)  # put back as it was


@pytest.mark.parametrize("model_fixture, decoding", [
    ("tiny_model_dir", "eager"),
    pytest.param("tiny_model_dir", "compiled", marks=needs_compiler),
    ("smollm2_dir", "eager"),  # the real SmolLM2-135M: Llama's cache layers, a real tokenizer's special tokens
])
def test_answers_are_the_same_with_the_stop_check_deferred(model_fixture: str, monkeypatch, deferred_stop_checks,
                                                           request, decoding: str) -> None:
    """Every row stops early, so each batch runs one step past the end and takes it back: same completions, with
    transformers' cache (compiled: a static one) and with the growing cache that generation hands to `generate`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr import placement
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation

    folder = request.getfixturevalue(model_fixture)
    model = AutoModelForCausalLM.from_pretrained(folder, use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(4, seed=2)]
    # Stop tokens that every row emits within its first three tokens, so every batch ends before the limit.
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    model.generation_config.eos_token_id = None
    ids = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    model.generation_config.eos_token_id = sorted(set(ids[:, -1].tolist()))
    if decoding == "compiled":
        forwards = request.getfixturevalue("compiled_calls")  # the decoding steps through the compiled forward
    else:
        forwards = []
        real_forward = type(model).forward
        monkeypatch.setattr(type(model), "forward",
                            lambda self, *a, **kw: forwards.append(1) or real_forward(self, *a, **kw))

    def answers(check: str) -> tuple[list, int]:
        monkeypatch.setattr(placement, "stop_check", lambda device, synced=False: check)
        forwards.clear()
        found = generation.generate(model, tokenizer, prompts, 16, batch_size=2, decoding=decoding)
        return [[(c.text, c.tokens, c.truncated) for c in row] for row in found], len(forwards)

    each, each_forwards = answers("every step")
    assert not deferred_stop_checks and not any(truncated for row in each for _, _, truncated in row)
    late, late_forwards = answers("deferred")
    assert len(deferred_stop_checks) == 2  # one per batch: the deferred check really ran
    assert late == each
    assert late_forwards == each_forwards + 2  # one step past the end of each batch, taken back
