"""The LM head over the scored tokens only, on every device.

TRL 1.16 computes SFT's loss and GRPO's log-probabilities with a fused LM
head (`trl.trainer.utils.add_fused_lm_head`): the hidden states go through the
LM head in tiles, without the `[batch, length, vocabulary]` logits. On a
device that runs Triton (CUDA, XPU) it projects only the positions whose label
is not -100. Everywhere else it projects every position, prompt and padding
included, and masks the result afterwards, so that the tile shapes stay fixed
for a compiler (TRL names Neuron). On a CPU or MPS nothing is compiled, and
that work is thrown away: in the demo's GRPO step a row holds about 56
completion tokens among some 190 positions, and the projection, its softmax
statistics and their backward ran over all of them (docs/benchmarks.md).

The choice is one module-level name, `_use_triton`, that the fused forward
reads to decide it; `compact_scoring` points that name, for the block only,
at "yes". The kernel reads its own `_use_triton` (in `trl.kernels`) to pick
Triton or torch, so it still runs in torch on a CPU. The log-probabilities
are the same numbers either way (`tests/train/test_scoring.py` holds the two
to each other, gradients included). `placement.compact_scoring` decides where.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any
from unittest.mock import patch

from gsm8k_tr import placement


def compact_scoring(device: Any) -> AbstractContextManager[Any]:
    """Within the block, TRL's fused LM head on `device` projects only the positions with a label."""
    from trl.trainer import utils

    if not placement.compact_scoring(device) or not hasattr(utils, "_use_triton"):
        # Without the name (another TRL), the loss is still right: every position is projected, as TRL does.
        return nullcontext()
    return patch.object(utils, "_use_triton", lambda device: True)


class CompactScoring:
    """Trainer mixin: the loss (SFT and GRPO) and GRPO's other scoring (old and reference log-probabilities) with
    the LM head over the scored tokens only, where `placement.compact_scoring` says."""

    def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
        with compact_scoring(self.args.device):
            return super().compute_loss(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        with compact_scoring(self.args.device):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
