"""A group's completions share their prompt's prefill.

GRPO samples `num_generations` completions of each prompt, and TRL gets them by
repeating the prompt that many times in the batch it hands to `generate`, so
the prompt's keys and values are computed once per completion: 8 times in the
demo and in the real recipe. `prefill` runs the model once over the distinct
prompts, all but their last token, into the KV cache, and gives every row a
copy of its prompt's entries. `generate`, handed that cache with the full
prompts, then starts from it, as it does for any cache brought to it: its
prefill runs only the last prompt token of each row. The model sees the same
positions and attention mask as in `generate`'s own prefill
(`tests/infer/test_shared_prefill.py` compares the tokens). Where a group's
rows are consecutive, they can keep one copy of the prompt between them
instead (`own_tokens`, `infer/grouped_attention.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gsm8k_tr.infer import grouped_attention


def distinct_rows(input_ids: Any, attention_mask: Any) -> tuple[Any, Any] | None:
    """(the index of each distinct prompt's first row, each row's distinct prompt), or None when no row repeats."""
    import torch

    rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=-1)  # the mask too: a pad id can be a token
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if unique.shape[0] == rows.shape[0]:
        return None
    order = torch.arange(rows.shape[0], device=rows.device)
    first = torch.full((unique.shape[0],), rows.shape[0], dtype=order.dtype, device=rows.device)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")
    return first, inverse


def prompt_positions(mask: Any) -> Any:
    """The position ids `generate` gives a left-padded prompt (`_prepare_position_ids_for_generation`): counted from
    each row's first real token, 0 on the padding.

    >>> import torch
    >>> prompt_positions(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1], [0, 1, 2, 3]]
    """
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def fill_distinct(model: Any, input_ids: Any, attention_mask: Any, first: Any, cache: Any, keyword: str) -> None:
    """Run `model` over the distinct prompts (the rows `first`) but their last token, into `cache`, with the
    positions `generate` gives them."""
    ids, mask = input_ids[first, :-1], attention_mask[first, :-1]
    model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions(mask), use_cache=True, logits_to_keep=1,
          **{keyword: cache})


def prefill(model: Any, input_ids: Any, attention_mask: Any | None, cache: Any, keyword: str,
            own_tokens: Callable[[], Any] | None = None) -> bool:
    """Fill the empty `cache` with every row's prompt but its last token, computing each distinct prompt once.

    Returns False, with the cache left empty, when there is nothing to share
    (no repeated row, or a prompt of one token). `keyword` is the models'
    name for the cache argument. With `own_tokens` (a fresh layer for each
    row's own tokens), a group's rows keep one copy of its prompt where the
    groups are consecutive and alike (`infer/grouped_attention.py`); else
    every row gets a copy.
    """
    import torch

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.shape[-1] < 2 or cache.get_seq_length() != 0:
        return False
    found = distinct_rows(input_ids, attention_mask)
    if found is None:
        return False
    first, inverse = found
    fill_distinct(model, input_ids, attention_mask, first, cache, keyword)
    if own_tokens is None or not grouped_attention.keep_groups(cache, inverse, own_tokens):
        cache.batch_select_indices(inverse)
    return True
