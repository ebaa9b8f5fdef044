"""A KV cache that writes each decoding step's keys and values in place.

transformers' default `DynamicCache` grows each layer with `torch.cat`, so
every decoding step copies the whole cache of every layer: for a batch of 64
rollouts that copy was 44% of a CPU decoding step (docs/benchmarks.md), and on
a GPU it is the cache read twice more per step. `StaticCache` avoids the copy
but attends over its whole maximum length from the first token, and is meant
for `torch.compile`.

`GrowingCache` is `DynamicCache` with one change per layer: keys and values
live in a buffer sized for the whole generation (prompt plus new tokens;
doubled when full where that length is not known), and `update` writes the
new tokens into it and returns a view of the filled part, so a step copies
only its own tokens. Attention sees the same values as with `DynamicCache`
(`tests/infer/test_kv_cache.py` compares the generated tokens, greedy and
sampled).
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from typing import Any
from unittest.mock import patch

from transformers import GPT2Model
from transformers.cache_utils import DynamicCache, DynamicLayer

from gsm8k_tr import modeling
from gsm8k_tr.infer import grouped_attention, shared_prefill

# transformers 5 renamed generate's and the models' `past_key_values` to `cache` (the old name warns until 6.0).
KEYWORD = "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into buffers that grow by doubling.

    With `max_length` (prompt plus new tokens) the first buffer holds the whole
    generation, what `DynamicCache` holds at its last step, and is never grown.
    """

    key_buffer: Any = None
    value_buffer: Any = None

    def __init__(self, max_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        # A buffer is reused only while the keys are still a view of its start (`crop` keeps that):
        # `batch_select_indices`, `reorder_cache` and the like replace the tensors, and a new buffer follows.
        if (self.key_buffer is None or length == 0 or needed > self.key_buffer.shape[-2]
                or self.keys.data_ptr() != self.key_buffer.data_ptr()
                or key_states.shape[0] != self.key_buffer.shape[0]):
            # Past `max_length` (a process that keeps stepping for its peers under `synced_gpus`) it doubles.
            capacity = max(needed, self.max_length or 0, 2 * length)
            self.key_buffer = self._grown(self.keys, key_states, length, capacity)
            self.value_buffer = self._grown(self.values, value_states, length, capacity)
        self.key_buffer[..., length:needed, :].copy_(key_states)
        self.value_buffer[..., length:needed, :].copy_(value_states)
        self.keys = self.key_buffer[..., :needed, :]
        self.values = self.value_buffer[..., :needed, :]
        return self.keys, self.values

    @staticmethod
    def _grown(old: Any, new: Any, length: int, capacity: int) -> Any:
        """A buffer of `capacity` positions shaped like `new`, holding `old`'s first `length`."""
        shape = (*new.shape[:-2], capacity, new.shape[-1])
        buffer = new.new_empty(shape)
        if length:
            buffer[..., :length, :].copy_(old)
        return buffer

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        super().reset()


class GrowingCache(DynamicCache):
    """`DynamicCache` with `GrowingLayer` for every full-attention layer; other layer kinds are kept as they are."""

    def __init__(self, config: Any = None, max_length: int | None = None) -> None:
        super().__init__(config=config)
        if self.layer_class_to_replicate is DynamicLayer:
            self.layer_class_to_replicate = partial(GrowingLayer, max_length)
        self.layers = [GrowingLayer(max_length) if type(layer) is DynamicLayer else layer for layer in self.layers]


def for_generation(model: Any, input_ids: Any, generation_config: Any) -> dict[str, Any]:
    """`generate`'s keyword argument with a fresh cache for one call of `input_ids` under `generation_config`.

    Empty where transformers would not build a `DynamicCache` itself: a model that supplies its own cache
    (`_supports_default_dynamic_cache`), a recipe's `cache_implementation`, or no cache at all.
    """
    base = modeling.unwrapped(model)
    supports = getattr(base, "_supports_default_dynamic_cache", lambda: False)
    if generation_config.cache_implementation is not None or generation_config.use_cache is False or not supports():
        return {}
    new = generation_config.max_new_tokens
    config = base.config.get_text_config(decoder=True)
    return {KEYWORD: GrowingCache(config=config, max_length=input_ids.shape[-1] + new if new else None)}


def growing_cache(model: Any, share_prompts: bool = False, grouped: bool = False) -> AbstractContextManager[Any]:
    """Within the block, each `model.generate` call that brings no cache of its own gets a fresh `GrowingCache`;
    with `share_prompts`, filled once per distinct prompt (`infer/shared_prefill.py`), and with `grouped` too,
    each group of rows keeping one copy of its prompt that attention reads once (`infer/grouped_attention.py`).

    For callers that build the `generate` call themselves (TRL's rollouts): an
    instance attribute shadows the method for the block and is removed after.
    """
    method = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            if not ({"cache", "past_key_values"} & kwargs.keys()) and "input_ids" in kwargs:
                ids = kwargs["input_ids"]
                config = kwargs.get("generation_config") or model.generation_config
                given = for_generation(model, ids, config)
                cache = given.get(KEYWORD)
                if share_prompts and cache is not None and all(isinstance(layer, GrowingLayer)
                                                               for layer in cache.layers):
                    new = config.max_new_tokens  # each row's own tokens: the prompt's last one and the new ones
                    own = (partial(GrowingLayer, 1 + new if new else None)
                           if grouped and grouped_attention.supports(model) else None)
                    shared_prefill.prefill(model, ids, kwargs.get("attention_mask"), cache, KEYWORD, own)
                    if grouped_attention.holds_groups(cache):
                        stack.enter_context(grouped_attention.attending(model, cache))
                kwargs.update(given)
            return method(*args, **kwargs)

    return patch.object(model, "generate", generate)
