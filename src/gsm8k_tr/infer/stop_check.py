"""`generate` learns that every row has stopped one step late on a CUDA GPU, so the host never waits for the card.

After each decoding step transformers' loop asks whether every row has
emitted a stop token (`StopCheck`: `bool(unfinished_sequences.max() == 0)`).
On a GPU that read makes the host wait until the card has finished the step,
so the host cannot queue the next step meanwhile: each step costs the host's
time plus the card's, not the larger of the two. With compiled decoding it is
the one read of a device value left in a decoding step (docs/benchmarks.md,
"Host reads per step"), and the step took about 5 ms on an H200 against
0.8-1.3 ms to read the weights and the KV cache, which is where `generate`'s
own Python between graph replays would show.

transformers has the remedy, `DeferredStopCheck`: the flag is copied to the
host without waiting, and read one step later, after the next step is queued.
When every row has stopped, the one extra step it ran is taken back
(`_undo_generation_steps`, and `crop` on a cache the caller keeps), so the
tokens are the same (`tests/infer/test_stop_check.py`). transformers turns it
on for MPS only ("we should enable it for cuda if we observe perf gains", in
`DeferredStopCheck.is_supported`); `deferred` turns it on for the block on any
device, under the conditions transformers checks on MPS (a cache it can crop
back, no assistant model). `placement.stop_check` says where: CUDA and MPS.
A CPU runs each step to its end before Python goes on, so there is nothing to
overlap, and it has no events to wait on. Not yet measured on a GPU
(`benchmarks/gpu_shapes.py --parts stop`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any
from unittest.mock import patch


def _check_class() -> Any:
    """transformers' `DeferredStopCheck`, or None in a transformers without it."""
    from transformers.generation import utils

    return getattr(utils, "DeferredStopCheck", None)


def deferred(enabled: bool) -> AbstractContextManager[Any]:
    """Within the block, `generate` defers its stop check wherever transformers would on MPS (`enabled`); a
    transformers without `DeferredStopCheck` checks at every step, as it always did."""
    check = _check_class()
    if not enabled or check is None:
        return nullcontext()
    import torch

    on_mps = check.is_supported
    mps = torch.device("mps")

    def is_supported(device: Any, cache: Any, cache_is_returned: bool, is_assistant: bool) -> bool:
        return on_mps(mps, cache, cache_is_returned, is_assistant)

    return patch.object(check, "is_supported", staticmethod(is_supported))
