"""Position ids for TRL's GRPO scoring of left-padded batches (the GPT-2 fix).

TRL 1.16's `GRPOTrainer._get_per_token_logps_and_entropies` calls
`model(input_ids, attention_mask, labels, fused_lm_head=True)` on left-padded
prompt+completion rows and passes no `position_ids`. Models with learned
absolute positions (GPT-2) then count positions from the first pad token, so
every padded row is scored at the wrong positions: the log-probs that enter the
loss are not those of the policy that sampled (generate() is unaffected, since
it derives position ids from the attention mask itself). Rotary models are
shift-invariant and barely notice, which is why the bug stays silent.

The fix is a forward pre-hook on the model TRL calls: on the fused-LM-head
scoring path only, it adds `position_ids = cumsum(attention_mask) - 1`, the
same ids generate() uses. The hook reaches the backbone because TRL's fused
forward passes unknown keyword arguments through to it; patching the LM-head
model's `forward` would not, since the fused head calls the backbone directly.
A forward hook also survives DDP/DeepSpeed wrapping, which call the module.
If TRL ever passes position ids itself, the hook does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# The TRL versions whose scoring path this hook was checked against (tests/train/test_positions.py).
TESTED_TRL = ("1.16",)


def left_pad_position_ids(attention_mask: Any) -> Any:
    """Position ids that start at 0 on each row's first real token.

    >>> import torch
    >>> left_pad_position_ids(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1], [0, 1, 2, 3]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _hook(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    if not kwargs.get("fused_lm_head") or kwargs.get("position_ids") is not None:
        return None
    mask = kwargs.get("attention_mask")
    if mask is None:
        return None
    kwargs["position_ids"] = left_pad_position_ids(mask)
    return args, kwargs


def add_position_ids(model: Any) -> Any:
    """Install the hook on `model` (the module TRL calls); returns the handle to remove it."""
    import trl

    if not trl.__version__.startswith(TESTED_TRL):
        log.warning("the GRPO position-ids fix was checked against TRL %s, not %s; run tests/train/test_positions.py",
                    "/".join(TESTED_TRL), trl.__version__)
    return model.register_forward_pre_hook(_hook, with_kwargs=True)
