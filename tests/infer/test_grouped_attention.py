"""Each group's prompt kept once and read once (`infer/grouped_attention.py`): attention as over per-row copies, and
`generate`'s tokens."""

from __future__ import annotations

import pytest
from test_kv_cache import model_and_prompts

torch = pytest.importorskip("torch")

from gsm8k_tr.infer import grouped_attention  # noqa: E402


@pytest.mark.parametrize("inverse, expected", [
    ([0, 0, 0, 1, 1, 1], 3),        # TRL's layout: each prompt in consecutive rows
    ([2, 2, 0, 0, 1, 1], 2),        # distinct prompts numbered in any order
    ([0, 1, 0, 1], None),           # interleaved: a group's rows are not consecutive
    ([0, 0, 0, 1, 1, 2], None),     # groups of different sizes
    ([0, 0, 1, 1, 0, 0], None),     # a prompt in two runs of rows
    ([0, 0, 0, 0], 4),              # one group
])
def test_group_size(inverse: list[int], expected: int | None) -> None:
    assert grouped_attention.group_size(torch.tensor(inverse)) == expected


class _Module:  # what the attention function reads off transformers' attention module
    layer_idx = 0


@pytest.mark.parametrize("heads, kv_heads, steps", [
    (4, 4, 1),  # GPT-2: a key head per query head; one decoding step
    (6, 2, 1),  # grouped-query attention (Llama, SmolLM2): three query heads per key head
    (6, 2, 3),  # several query tokens at once, under the causal mask
])
def test_attention_reads_the_prompt_once_and_gives_what_attention_over_copies_gives(heads: int, kv_heads: int,
                                                                                     steps: int) -> None:
    from transformers.cache_utils import DynamicCache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import eager_mask

    from gsm8k_tr.infer.kv_cache import GrowingLayer

    generator = torch.Generator().manual_seed(0)
    groups, size, prompt, own, dim = 3, 4, 11, 5, 8
    rows = groups * size

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    prefix_keys, prefix_values = rand(groups, kv_heads, prompt, dim), rand(groups, kv_heads, prompt, dim)
    own_keys, own_values = rand(rows, kv_heads, own, dim), rand(rows, kv_heads, own, dim)
    query = rand(rows, heads, steps, dim)
    padding = torch.ones(rows, prompt + own, dtype=torch.bool)
    padding[::size, :3] = False  # each group's prompt left-padded alike, one group more than the others
    padding[:size, 3:5] = False
    mask = eager_mask(rows, steps, prompt + own, q_offset=prompt + own - steps, attention_mask=padding)

    cache = DynamicCache()
    cache.layers = [grouped_attention.GroupedLayer(prefix_keys, prefix_values, rows, GrowingLayer())]
    keys, values = cache.layers[0].update(own_keys, own_values)
    assert cache.layers[0].get_seq_length() == prompt + own and grouped_attention.holds_groups(cache)
    module = _Module()
    setattr(module, grouped_attention.PREFIX, (prefix_keys, prefix_values))  # as `attending` sets it for the call
    grouped, _ = grouped_attention.attention(module, query, keys, values, mask, scaling=0.3)
    # Every row its own copy of its prompt, every query head its own key head.
    copies = [torch.cat([prefix.repeat_interleave(size, 0), mine], dim=-2).repeat_interleave(heads // kv_heads, 1)
              for prefix, mine in ((prefix_keys, own_keys), (prefix_values, own_values))]
    expected, _ = sdpa_attention_forward(_Module(), query, *copies, mask, scaling=0.3)
    assert grouped.shape == expected.shape == (rows, steps, heads, dim)
    assert torch.allclose(grouped, expected, atol=1e-5, rtol=0)


# GPT-2 (learned positions) and the real SmolLM2 (Llama: rotary positions, 3 KV heads for 9 query heads).
@pytest.mark.parametrize("model_fixture,questions,new_tokens", [
    ("tiny_model_dir", 6, 40), pytest.param("smollm2_dir", 2, 16, marks=pytest.mark.slow),
])
def test_generation_with_each_groups_prompt_kept_once_gives_the_same_tokens(model_fixture, questions, new_tokens,
                                                                             request, monkeypatch) -> None:
    from gsm8k_tr.infer import kv_cache

    group = 4
    model, tokenizer, batch = model_and_prompts(request.getfixturevalue(model_fixture), questions, repeat=group,
                                                instructed=model_fixture == "tiny_model_dir")
    own = model.config._attn_implementation
    held = []  # the caches generate ran with, and whether they kept the groups
    real_attending = grouped_attention.attending
    monkeypatch.setattr(grouped_attention, "attending",
                        lambda model, cache: held.append(cache.layers[0].prefix_keys.shape[0])
                        or real_attending(model, cache))
    for settings in ({"do_sample": False}, {"do_sample": True, "temperature": 0.9}):
        runs = []
        for grouped in (False, True):
            torch.manual_seed(0)
            with torch.inference_mode(), kv_cache.growing_cache(model, share_prompts=True, grouped=grouped):
                runs.append(model.generate(**batch, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           **settings))
            assert model.config._attn_implementation == own  # the model's own attention is back after the call
        assert torch.equal(runs[0], runs[1])
        assert runs[0].shape[1] > batch["input_ids"].shape[1] + new_tokens // 2
    assert held == [questions, questions]  # one copy of each prompt, in both calls with groups
    # Rows of a prompt that are not consecutive keep their copies, with the same tokens.
    order = torch.arange(questions * group).view(questions, group).T.reshape(-1)
    mixed = {key: value[order] for key, value in batch.items()}
    runs = []
    for grouped in (False, True):
        with torch.inference_mode(), kv_cache.growing_cache(model, share_prompts=True, grouped=grouped):
            runs.append(model.generate(**mixed, max_new_tokens=8, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id))
    assert torch.equal(runs[0], runs[1]) and held == [questions, questions]


def test_a_grouped_cache_crops_its_own_tokens_and_refuses_to_reorder_its_rows() -> None:
    from gsm8k_tr.infer.kv_cache import GrowingLayer

    layer = grouped_attention.GroupedLayer(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), 4, GrowingLayer())
    layer.update(torch.ones(4, 1, 2, 4), torch.ones(4, 1, 2, 4))
    layer.crop(0)
    layer.crop(-1)  # a deferred stop check takes its extra step back
    assert layer.get_seq_length() == 4 and layer.keys.shape == (4, 1, 1, 4)
    keys, _ = layer.update(torch.full((4, 1, 1, 4), 2.0), torch.full((4, 1, 1, 4), 2.0))
    assert keys[:, 0, :, 0].tolist() == [[1.0, 2.0]] * 4
    for call in (lambda: layer.crop(-3),  # into the shared prompt
                 lambda: layer.batch_select_indices(torch.tensor([1, 0, 2, 3])),
                 lambda: layer.batch_repeat_interleave(2), lambda: layer.reorder_cache(torch.tensor([0, 1, 2, 3]))):
        with pytest.raises(NotImplementedError, match="groups"):
            call()


def test_only_checked_model_types_keep_their_groups(tiny_model_dir, monkeypatch) -> None:
    from gsm8k_tr.infer import kv_cache

    model, tokenizer, batch = model_and_prompts(tiny_model_dir, 3, repeat=2)
    assert grouped_attention.supports(model)
    monkeypatch.setattr(model.config, "model_type", "gpt_neo")  # an architecture the tests do not check
    assert not grouped_attention.supports(model)
    caches = []
    real = kv_cache.for_generation
    monkeypatch.setattr(kv_cache, "for_generation", lambda *a: caches.append(real(*a)) or caches[-1])
    with torch.inference_mode(), kv_cache.growing_cache(model, share_prompts=True, grouped=True):
        model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert caches and not grouped_attention.holds_groups(caches[0][kv_cache.KEYWORD])  # a copy per row


def test_several_samples_of_a_prompt_keep_it_once_and_sample_the_same(tiny_model_dir, monkeypatch) -> None:
    from gsm8k_tr import placement
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation

    model, tokenizer, _ = model_and_prompts(tiny_model_dir, 2)
    # In float64: the two paths add the same terms in another order, and in float32 that last-bit difference tipped
    # one draw of 360 under torch 2.8 (not under 2.13); the samples must agree, not the rounding.
    model = model.double()
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(5, seed=7)]
    held = []  # each batch's groups, where they were kept once
    real_attending = grouped_attention.attending
    monkeypatch.setattr(grouped_attention, "attending",
                        lambda model, cache: held.append(cache.layers[0].prefix_keys.shape[0])
                        or real_attending(model, cache))
    runs = {}
    for grouped in (False, True):
        monkeypatch.setattr(placement, "grouped_attention", lambda *args, on=grouped: on)
        runs[grouped] = generation.generate(model, tokenizer, prompts, 24, batch_size=2, temperature=0.9, samples=3,
                                            decoding="eager")
    assert [[(c.tokens, c.text) for c in row] for row in runs[True]] == [[(c.tokens, c.text) for c in row]
                                                                         for row in runs[False]]
    assert all(len(row) == 3 for row in runs[True]) and len({c.text for row in runs[True] for c in row}) > 5
    assert held == [2, 2, 1]  # 5 prompts in batches of 2: each batch's prompts once, their 3 samples each
