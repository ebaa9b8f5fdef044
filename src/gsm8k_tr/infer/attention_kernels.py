"""The attention kernels a `generate` call may use, as `placement.decoding_attention` lists them.

torch's `sdpa_kernel` limits `scaled_dot_product_attention` to the listed
kernels for a block, in torch's own order of preference; transformers' `sdpa`
attention (GPT-2's and Llama's default) calls that function, so the block
covers every layer of every decoding step. A kernel that cannot run a call
(flash attention with a padding mask) is passed over for the next one, and
all of them give the same attention up to rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def only(names: list[str] | None) -> Iterator[None]:
    """Within the block, attention runs on the kernels `names` (`SDPBackend` member names); None changes nothing."""
    if not names:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, name) for name in names]):
        yield
