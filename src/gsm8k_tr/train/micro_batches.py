"""GRPO's micro-batches cut to their own longest prompt and completion before the loss scores them.

TRL pads the whole generation batch at once (prompts on the left, completions
on the right, each to `pad_to_multiple_of`), then splits it into
micro-batches, which keep that width: a micro-batch of 2 or 8 rows out of 64
is scored at the longest prompt and the longest completion of all 64. The
columns that are padding in every row of a micro-batch are cut before the
forward pass, kept to the same multiple, so a GPU still sees few shapes.

Nothing scored changes: the cut columns are masked out of attention, the
loss and every metric; positions come from the attention mask
(`train/positions.py`), so a row's tokens keep theirs; and the loss's
normalisers are token counts (`num_items_in_batch`, the mask's sums) or the
configured `max_completion_length`, never the tensor's width
(`tests/train/test_micro_batches.py`).
"""

from __future__ import annotations

from typing import Any

PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def trimmed(inputs: dict[str, Any], multiple: int | None) -> dict[str, Any]:
    """`inputs` (one GRPO micro-batch, as TRL's `_compute_loss` takes it) without the prompt columns on the left and
    the completion columns on the right that are padding in every row, kept to a multiple of `multiple` and never
    wider than they were. Every other tensor as wide as the completions is cut with them."""
    prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
    rows, prompt_width = prompt_mask.shape
    completion_width = completion_mask.shape[1]
    used = prompt_mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else prompt_width
    keep_prompt = _rounded(prompt_width - first, multiple, prompt_width)
    used = completion_mask.any(dim=0).nonzero()
    keep_completion = _rounded(int(used[-1]) + 1 if len(used) else 0, multiple, completion_width)
    if keep_prompt == prompt_width and keep_completion == completion_width:
        return inputs
    out = dict(inputs)
    for key in PROMPT_KEYS:
        out[key] = inputs[key][:, prompt_width - keep_prompt:]
    for key, value in inputs.items():
        if key not in PROMPT_KEYS and hasattr(value, "shape") and tuple(value.shape[:2]) == (rows, completion_width):
            out[key] = value[:, :keep_completion]
    return out


def _rounded(width: int, multiple: int | None, limit: int) -> int:
    """`width` rounded up to `multiple` (at least one of it), at most `limit`.

    >>> _rounded(70, 64, 384), _rounded(70, None, 384), _rounded(0, 64, 384), _rounded(380, 64, 384)
    (128, 70, 64, 384)
    """
    step = multiple or 1
    return min(limit, max(step, -(-width // step) * step))


class TrimmedMicroBatches:
    """GRPOTrainer mixin: each micro-batch scored at its own longest prompt and completion (`trimmed`)."""

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Any:
        return super()._compute_loss(model, trimmed(inputs, getattr(self, "pad_to_multiple_of", None)))
