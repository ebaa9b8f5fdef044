"""GrowingCache gives attention what transformers' DynamicCache gives it, and generation the same tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _states(batch: int, length: int, seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 2, length, 8, generator=generator), torch.randn(batch, 2, length, 8, generator=generator))


def test_a_growing_layer_returns_what_a_dynamic_layer_returns_step_by_step() -> None:
    from transformers.cache_utils import DynamicLayer

    from gsm8k_tr.infer.kv_cache import GrowingLayer

    growing, dynamic = GrowingLayer(), DynamicLayer()
    previous, buffers = None, 0
    for step, length in enumerate([7, *[1] * 40]):  # a prompt, then one token at a time past two doublings
        keys, values = _states(3, length, step)
        grown, reference = growing.update(keys, values), dynamic.update(keys, values)
        assert torch.equal(grown[0], reference[0]) and torch.equal(grown[1], reference[1])
        assert growing.get_seq_length() == dynamic.get_seq_length() == 7 + step
        buffers += growing.key_buffer is not previous
        previous = growing.key_buffer
    assert buffers == 4  # 7, 14, 28, 56 positions: the cache was copied 4 times, not 41

    sized = GrowingLayer(max_length=47)  # told the generation's length: one buffer, never grown
    first = sized.update(*_states(3, 7, 0))[0]
    for step in range(1, 41):
        sized.update(*_states(3, 1, step))
    assert sized.key_buffer.data_ptr() == first.data_ptr() and sized.key_buffer.shape[-2] == 47
    assert torch.equal(sized.keys, dynamic.keys)
    sized.update(*_states(3, 1, 41))  # one step past it (synced_gpus keeps finished processes stepping): doubled
    assert sized.key_buffer.shape[-2] == 94 and sized.get_seq_length() == 48

    # What the other DynamicLayer methods do still holds, and the next update builds on it.
    growing.crop(-5), dynamic.crop(-5)
    growing.batch_select_indices(torch.tensor([2, 0])), dynamic.batch_select_indices(torch.tensor([2, 0]))
    keys, values = _states(2, 1, 99)
    grown, reference = growing.update(keys, values), dynamic.update(keys, values)
    assert torch.equal(grown[0], reference[0]) and torch.equal(grown[1], reference[1])
    growing.reset()
    assert growing.get_seq_length() == 0 and growing.key_buffer is None


def model_and_prompts(folder, questions: int, repeat: int = 1, instructed: bool = True) -> tuple:
    """A model, its left-padding tokenizer and a left-padded batch of `questions` prompts of different lengths,
    each repeated `repeat` times in a row (as TRL repeats a GRPO group's prompt); each the recipe's prompt around a
    question, or with `instructed` off the question alone. The caches' tokens do not depend on the words, and
    SmolLM2's tokenizer makes the recipe's prompt about 150 tokens against the question's 45: its three cache tests
    took 137 s with the recipe's prompts and 97 s with the questions alone, on 2 cores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt

    model = AutoModelForCausalLM.from_pretrained(folder, use_kernels=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [build_prompt(r["question"], PromptConfig()) if instructed else r["question"]
               for r in synth.make_problems(questions, seed=5)]
    batch = tokenizer([p for p in prompts for _ in range(repeat)], return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()
    return model, tokenizer, batch


# GPT-2 (learned positions, one KV head per head) and the real SmolLM2 (Llama: rotary positions, grouped-query
# attention with 3 KV heads for 9 query heads).
@pytest.mark.parametrize("model_fixture,questions,new_tokens", [
    ("tiny_model_dir", 12, 40), pytest.param("smollm2_dir", 2, 16, marks=pytest.mark.slow),
])
def test_generation_with_the_growing_cache_gives_the_same_tokens(model_fixture, questions, new_tokens,
                                                                  request) -> None:
    from gsm8k_tr.infer.kv_cache import KEYWORD, GrowingCache

    model, tokenizer, batch = model_and_prompts(request.getfixturevalue(model_fixture), questions,
                                                instructed=model_fixture == "tiny_model_dir")
    for settings in ({"do_sample": False}, {"do_sample": True, "temperature": 0.9, "num_return_sequences": 3}):
        runs = []
        for cache in (None, GrowingCache(config=model.config)):
            torch.manual_seed(0)
            with torch.inference_mode():
                runs.append(model.generate(**batch, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           **({KEYWORD: cache} if cache else {}), **settings))
        assert torch.equal(runs[0], runs[1])
        assert runs[0].shape[1] > batch["input_ids"].shape[1] + new_tokens // 2


def test_evaluation_generates_with_the_growing_cache_and_the_same_answers(tiny_model_dir, monkeypatch) -> None:
    from gsm8k_tr import modeling, placement
    from gsm8k_tr.config import ModelConfig, PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation, kv_cache

    config = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(config), modeling.load_model(config)
    modeling.configure_tokens(tokenizer, model, config.stop_token)
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(10, seed=3)]
    made = []

    class Counted(kv_cache.GrowingCache):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(kv_cache, "GrowingCache", Counted)
    answers = {}
    for path in ("dynamic", "growing"):
        monkeypatch.setattr(placement, "kv_cache", lambda cache_implementation=None, path=path: path)
        for temperature, samples in ((0.0, 1), (0.8, 2)):
            found = generation.generate(model, tokenizer, prompts, 32, batch_size=4, temperature=temperature,
                                        samples=samples, seed=1)
            answers[path, temperature] = [(c.text, c.tokens) for row in found for c in row]
        assert len(made) == (0 if path == "dynamic" else 6)  # 3 batches, greedy and sampled
    assert answers["dynamic", 0.0] == answers["growing", 0.0]
    assert answers["dynamic", 0.8] == answers["growing", 0.8]
