"""Each distinct prompt prefilled once (`infer/shared_prefill.py`): the same tokens as `generate`'s own prefill."""

from __future__ import annotations

import pytest
from test_kv_cache import model_and_prompts

torch = pytest.importorskip("torch")

from gsm8k_tr.infer import shared_prefill  # noqa: E402


def test_distinct_rows_finds_each_prompts_first_row_and_its_group() -> None:
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [7, 8, 9], [0, 5, 6], [1, 2, 3]])
    mask = torch.ones_like(ids)
    first, inverse = shared_prefill.distinct_rows(ids, mask)
    assert torch.equal(ids[first][inverse], ids)  # every row gets its own prompt back
    assert sorted(first.tolist()) == [0, 1, 5]
    assert shared_prefill.distinct_rows(ids[:2], mask[:2]) is None  # nothing repeats
    # The same ids with a different mask are different prompts (a pad id can also be a real token).
    other = mask.clone()
    other[2, 0] = 0
    assert len(shared_prefill.distinct_rows(ids, other)[0]) == 4


# GPT-2 (learned positions) and the real SmolLM2 (Llama: rotary positions, 3 KV heads for 9 query heads).
@pytest.mark.parametrize("model_fixture,questions,new_tokens", [
    ("tiny_model_dir", 6, 40), pytest.param("smollm2_dir", 2, 16, marks=pytest.mark.slow),
])
def test_generation_from_the_shared_prefill_gives_the_same_tokens(model_fixture, questions, new_tokens,
                                                                   request) -> None:
    from gsm8k_tr.infer import kv_cache

    group = 4
    model, tokenizer, batch = model_and_prompts(request.getfixturevalue(model_fixture), questions, repeat=group,
                                                instructed=model_fixture == "tiny_model_dir")
    rows_seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: rows_seen.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    for settings in ({"do_sample": False}, {"do_sample": True, "temperature": 0.9}):
        runs = []
        for share in (False, True):
            rows_seen.clear()
            torch.manual_seed(0)
            with torch.inference_mode(), kv_cache.growing_cache(model, share_prompts=share):
                runs.append(model.generate(**batch, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           **settings))
            width = batch["input_ids"].shape[1]
            if share:  # the prompts once, then every row from its last prompt token on
                assert rows_seen[:2] == [(questions, width - 1), (questions * group, 1)]
            else:
                assert rows_seen[0] == (questions * group, width)
        assert torch.equal(runs[0], runs[1])
        assert runs[0].shape[1] > batch["input_ids"].shape[1] + new_tokens // 2
    assert "generate" not in vars(model)


def test_nothing_to_share_leaves_generate_as_it_was(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    from gsm8k_tr.infer import kv_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False).eval()
    cache = kv_cache.GrowingCache(config=model.config)
    ids = torch.randint(5, 500, (3, 9), generator=torch.Generator().manual_seed(0))
    assert not shared_prefill.prefill(model, ids, None, cache, kv_cache.KEYWORD)  # distinct rows
    assert not shared_prefill.prefill(model, ids[:, :1].repeat(2, 1), None, cache, kv_cache.KEYWORD)  # one token
    assert cache.get_seq_length() == 0
    assert shared_prefill.prefill(model, ids[:1].repeat(2, 1), None, cache, kv_cache.KEYWORD)
    assert cache.get_seq_length() == 8 and cache.layers[0].keys.shape[0] == 2
