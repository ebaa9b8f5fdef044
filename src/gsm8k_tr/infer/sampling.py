"""One random number per row when `generate` samples on a CPU.

transformers' sampling picks each next token with `torch.multinomial(probs, 1)`.
For one sample PyTorch takes the exponential race: an Exp(1) variate for every
entry of the vocabulary, then the argmax of probs / variates. On a CPU those
variates come one at a time from a generator behind a lock, about 28 ns each on
2 cores: 2 ms of every decoding step for the demo's 64 rollouts over its
1,100-token vocabulary (a quarter of the step), 120 ms at GPT-2's 50,257.

Inverse-CDF sampling draws one uniform number per row and finds it in the
running sum of the probabilities: the same distribution, from a different
stream of random numbers (seeded runs still repeat themselves). The sum is in
float64, so that the rounding of a 50k-entry float32 sum does not move the
boundaries of the small probabilities; a token whose probability is 0 (cut by
top-k or top-p) is never drawn, since its interval is empty. Anything else
(several samples, an output tensor, a GPU tensor, probabilities that are not a
distribution) goes to `torch.multinomial` itself, which also raises its own
errors.

transformers calls `torch.multinomial` inside `generate` and offers no hook for
the draw, so `one_draw_per_row` puts this function in its place for the block
and restores it after (with `unittest.mock.patch`, the standard library's
set-and-restore, as for every library attribute this project replaces).
`placement.rollout_path` and `infer/generation.py` use it where
`placement.row_sampling` says (on a CPU).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any
from unittest.mock import patch

import torch

_multinomial = torch.multinomial


def draw(probs: Any, num_samples: int, replacement: bool = False, *, generator: Any = None, out: Any = None) -> Any:
    """`torch.multinomial`'s signature; one draw per row of a CPU probability matrix by inverse CDF."""
    if num_samples != 1 or out is not None or probs.dim() != 2 or probs.device.type != "cpu" or probs.numel() == 0:
        return _multinomial(probs, num_samples, replacement, generator=generator, out=out)
    cdf = probs.cumsum(-1, dtype=torch.float64)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all() and (total > 0).all() and (probs >= 0).all()):
        return _multinomial(probs, num_samples, replacement, generator=generator)  # torch's own error
    u = torch.rand(total.shape, dtype=torch.float64, generator=generator) * total
    # Strictly below the total, so that the draw lands in a non-empty interval even where the product rounds up.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)


def one_draw_per_row(enabled: bool = True) -> AbstractContextManager[Any]:
    """Within the block, `torch.multinomial` is `draw` (which hands everything but a CPU draw back to torch)."""
    if not enabled or torch.multinomial is draw:
        return nullcontext()
    return patch.object(torch, "multinomial", draw)
