"""Attention that reads a group's shared prompt once per group, not once per row.

GRPO's rollouts come in groups of `num_generations` rows that share one
prompt, and TRL hands them to `generate` side by side (each prompt repeated
in consecutive rows). `infer/shared_prefill.py` computes each prompt's keys
and values once, but then copies them into every row of the KV cache, so at
each decoding step attention reads the prompt's keys and values once per
row. At GSM8K-TR's lengths that is most of what a step reads: for GPT-2
Medium, 64 rows with prompts of about 300 tokens read 1.8 GB of cached
prompt (bf16) against 0.7 GB of weights; one copy per group of 8 is 0.23 GB.

Here the cache keeps one copy of each group's prompt (`GroupedLayer`), and
the attention (`attention`, registered with transformers' attention
interface under `NAME`) scores each row's query against its group's prompt
in one matmul per group, and against its own generated tokens as before; one
softmax over both, in float32 (or the model's float64), then the values the same two ways. The sums
are those of attention over the copied cache, in another order, so the
tokens are the same up to floating-point rounding: in float32 the greedy
tokens of the tiny model and of the real SmolLM2 (grouped-query attention)
are `generate`'s own (`tests/infer/test_grouped_attention.py`).

It is used where the prompts are shared, and only for the call (`attending`:
the model's own attention is put back after it); `placement.rollout_path`
says where:
- in eager rollouts on a CPU (`infer/kv_cache.growing_cache` with
  `grouped`): fewer bytes read, 1.34-1.60x the demo model's decoding steps
  per second at the real prompts' lengths and 1.80x GPT-2 Medium's, about
  even at the demo's short generated prompts (docs/benchmarks.md);
- not in eager decoding on a GPU until measured there: eager decoding is
  bound by kernel launches there, and this attention launches about a dozen
  kernels a layer where torch's fused kernel launches one;
- with `compiled-step`, on every device: its static cache holds each group's
  prompt once (`GroupedStaticLayer`, `infer/compiled_step.py`), and the extra
  operations are inside the step's one graph.
The prompts reach the attention as an attribute of each attention module,
which torch.compile follows into the step's graph. Only model types whose
attention is checked against per-row copies by the tests group, and not with
a sliding window or soft-capped scores (`supports`); others keep a copy per
row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers.cache_utils import DynamicLayer, StaticLayer

from gsm8k_tr import modeling

NAME = "gsm8k_tr_grouped"  # the attention interface's key for `attention`
# An attention module's attribute holding its layer's prompts for the call: a module attribute, which
# torch.compile follows, where a context variable would break the graph.
PREFIX = "_gsm8k_tr_prefix"


class GroupedLayer(DynamicLayer):
    """One layer's cache: each group's prompt once (`prefix_keys`, `prefix_values`: groups x heads x prompt x dim),
    and each row's own tokens after it in `suffix` (a growing layer). Rows `g * size` to `(g + 1) * size - 1`
    belong to group `g`. `keys` and `values` are the rows' own tokens."""

    def __init__(self, prefix_keys: Any, prefix_values: Any, rows: int, suffix: DynamicLayer) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.suffix = suffix
        self.is_initialized = True
        self.keys = self.values = prefix_keys[:0].new_empty((rows, *prefix_keys.shape[1:-2], 0, prefix_keys.shape[-1]))

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        self.keys, self.values = self.suffix.update(key_states, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.suffix.get_seq_length()

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the rows' last `-tokens_to_remove` own tokens (a deferred stop check takes its extra step back)."""
        if tokens_to_remove > 0 or -tokens_to_remove > self.suffix.get_seq_length():
            raise NotImplementedError(f"a grouped KV cache crops only its rows' own tokens, not to "
                                      f"{tokens_to_remove}; its groups share their prompts")
        self.suffix.crop(tokens_to_remove)
        self.keys, self.values = self.suffix.keys, self.suffix.values

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("a grouped KV cache keeps its rows in their groups: they cannot be reordered, "
                                  "repeated or selected")

    batch_repeat_interleave = batch_select_indices = reorder_cache = _refuse


class GroupedStaticLayer(StaticLayer):
    """`GroupedLayer` at a fixed shape, for compiled decoding (`infer/compiled_step.py`): each group's prompt in
    `prefix_keys` and `prefix_values` (groups x heads x `prompt` x dim, the unused end masked), then each row's own
    tokens in a static layer of `own` positions. Positions in the attention mask: the prompt's, then the own."""

    def __init__(self, prefix_keys: Any, prefix_values: Any, own: int) -> None:
        super().__init__(max_cache_len=own)
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.prefix_keys.shape[-2] + self.max_cache_len, 0

    def get_seq_length(self) -> Any:
        return self.prefix_keys.shape[-2] + super().get_seq_length()


def group_size(inverse: Any) -> int | None:
    """The rows per group when each distinct prompt (`inverse`: each row's prompt, as `shared_prefill.distinct_rows`
    gives it) fills consecutive rows, all groups alike; else None.

    >>> import torch
    >>> group_size(torch.tensor([2, 2, 0, 0, 1, 1])), group_size(torch.tensor([0, 1, 0, 1]))
    (2, None)
    """
    import torch

    rows, groups = inverse.shape[0], int(inverse.max()) + 1
    if rows % groups:
        return None
    size = rows // groups
    firsts = inverse[::size]
    if not torch.equal(inverse, firsts.repeat_interleave(size)) or firsts.unique().numel() != groups:
        return None
    return size


def keep_groups(cache: Any, inverse: Any, make_suffix: Any) -> bool:
    """Turn `cache`, filled with each distinct prompt once, into grouped layers for the rows `inverse` lays out
    (`make_suffix()`: a fresh layer for each row's own tokens); False, with the cache untouched, where the groups
    are not consecutive and alike (`group_size`) or a layer is not a plain one."""
    size = group_size(inverse)
    if size is None or not all(isinstance(layer, DynamicLayer) and layer.is_initialized for layer in cache.layers):
        return False
    order = inverse[::size]  # each group's prompt, in the rows' order
    cache.layers = [GroupedLayer(layer.keys.index_select(0, order), layer.values.index_select(0, order),
                                 inverse.shape[0], make_suffix()) for layer in cache.layers]
    return True


def holds_groups(cache: Any) -> bool:
    """Whether `cache` keeps its prompts once per group (`keep_groups` took it)."""
    return bool(cache.layers) and all(hasattr(layer, "prefix_keys") for layer in cache.layers)


# Model types whose every attention layer goes through transformers' attention interface, checked by the tests
# against per-row copies: GPT-2 (the Turkish GPT-2 Medium, the builtin models) and Llama (SmolLM2, grouped-query
# attention) on real and toy models; Qwen2, Gemma, GPT-NeoX, OPT and Phi-3 on toy ones (`tests/infer/test_model_families.py`).
CHECKED_MODEL_TYPES = ("gpt2", "llama", "qwen2", "gemma", "gpt_neox", "opt", "phi3")


def config_supports(config: Any) -> bool:
    """Whether a model with this config can keep its groups' prompts once: a checked model type whose attention
    sees the whole context (a sliding window shorter than it reads another cache layout) without soft-capped
    scores, which `attention` does not apply."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    sliding = window is not None and getattr(config, "use_sliding_window", True) and window < max(
        getattr(config, key, 0) or 0 for key in ("n_positions", "max_position_embeddings"))
    return (config.model_type in CHECKED_MODEL_TYPES and not sliding
            and getattr(config, "attn_logit_softcapping", None) is None)


def supports(model: Any) -> bool:
    """Whether `model` (or the model inside a PEFT wrapper) can keep its groups' prompts once (`config_supports`)
    and has an attention module `attending` finds in every layer."""
    base = modeling.unwrapped(model)
    config = base.config.get_text_config(decoder=True)
    return config_supports(config) and len(attention_modules(base)) == config.num_hidden_layers


def attention_modules(model: Any) -> dict[int, Any]:
    """`model`'s self-attention modules by layer index (GPT-2's `GPT2Attention`, Llama's `LlamaAttention`)."""
    return {module.layer_idx: module for module in model.modules()
            if isinstance(getattr(module, "layer_idx", None), int) and type(module).__name__.endswith("Attention")}


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
              dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function signature; `key` and `value` are the rows' own tokens (`GroupedLayer`), the
    prompt's keys and values are the module's `PREFIX` for the call (`attending`). `attention_mask`: the additive
    mask over prompt and own tokens. A module without a prompt gets torch's own attention."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = getattr(module, PREFIX, None)
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    prefix_keys, prefix_values = prefix
    rows, heads, steps, dim = query.shape
    if attention_mask is None and steps > 1:  # transformers' eager masks are always built; a causal one is needed
        raise ValueError("grouped attention needs the attention mask for more than one query token")
    groups, kv_heads, prompt = prefix_keys.shape[:3]
    size, repeats = rows // groups, heads // kv_heads  # rows per group; query heads per key head (grouped-query)
    scale = dim ** -0.5 if scaling is None else scaling
    # Queries by group: (groups, kv_heads, size * repeats * steps, dim), so each group's prompt is read once.
    by_group = query.view(groups, size, kv_heads, repeats, steps, dim).permute(0, 2, 1, 3, 4, 5)
    by_group = by_group.reshape(groups, kv_heads, size * repeats * steps, dim)
    on_prompt = torch.matmul(by_group, prefix_keys.transpose(-1, -2))
    on_prompt = on_prompt.view(groups, kv_heads, size, repeats, steps, prompt).permute(0, 2, 1, 3, 4, 5)
    by_row = query.reshape(rows, kv_heads, repeats * steps, dim)
    on_own = torch.matmul(by_row, key.transpose(-1, -2)).view(rows, heads, steps, -1)
    scores = torch.cat([on_prompt.reshape(rows, heads, steps, prompt), on_own], dim=-1)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scale  # bf16 and fp16 up; float64 kept
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    if dropout:  # as transformers' eager attention does, for a model generating in training mode
        weights = torch.nn.functional.dropout(weights, p=dropout, training=True)
    from_prompt = weights[..., :prompt].reshape(groups, size, kv_heads, repeats, steps, prompt)
    from_prompt = from_prompt.permute(0, 2, 1, 3, 4, 5).reshape(groups, kv_heads, size * repeats * steps, prompt)
    out = torch.matmul(from_prompt, prefix_values).view(groups, kv_heads, size, repeats, steps, dim)
    out = out.permute(0, 2, 1, 3, 4, 5).reshape(rows, heads, steps, dim)
    own = weights[..., prompt:].reshape(rows, kv_heads, repeats * steps, -1)
    out = out + torch.matmul(own, value).view(rows, heads, steps, dim)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def _register() -> None:
    """`attention` under `NAME`, with transformers' float (eager) masks, once per process."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        AttentionInterface.register(NAME, attention)
        AttentionMaskInterface.register(NAME, eager_mask)
        _registered = True


@contextmanager
def attending(model: Any, cache: Any) -> Iterator[None]:
    """Within the block, `model`'s attention reads `cache`'s prompts (`holds_groups`) once per group; its own
    attention is back after, also on error."""
    _register()
    base = modeling.unwrapped(model)
    config = base.config
    before = config._attn_implementation
    modules = attention_modules(base)
    for index, module in modules.items():
        layer = cache.layers[index]
        setattr(module, PREFIX, (layer.prefix_keys, layer.prefix_values))
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        for module in modules.values():
            module.__dict__.pop(PREFIX, None)
