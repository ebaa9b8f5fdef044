"""GRPO's rollouts with the LoRA adapter merged into the weights while they are generated, and the KV cache
written in place.

With the adapter unmerged, every adapted layer runs three matmuls and the
adapter's scale and add at each decoding step: on a GPU these are kernel
launches, which bound decoding at this model size, and on a CPU small
operations. TRL merges the adapter in the same way before it pushes weights
to vLLM (`merge_adapter`, then `unmerge_adapter`); here it is done around
transformers' `generate`, so decoding reads one weight per layer. The
adapter's parameters are untouched, so training, checkpoints and the saved
adapter are what they would be; the base weights get the adapter's product
added and taken away again, which leaves them within a rounding step of where
they were (`tests/train/test_rollouts.py` measures it over many merges).

TRL builds the `generate` call itself, so the cache that `infer/kv_cache.py`
describes is handed to it by shadowing the model's `generate` for the call.
`placement.rollout_path` decides where each of these runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from gsm8k_tr.infer.kv_cache import growing_cache


@contextmanager
def merged_adapter(model: Any) -> Iterator[None]:
    """Merge a PEFT model's active adapter into its weights for the block; unmerge after, also on error.

    A model without an adapter, or with one merged already, is left as it is.
    """
    merge = getattr(model, "merge_adapter", None)
    if merge is None or getattr(model, "merged", False):
        yield
        return
    merge()
    try:
        yield
    finally:
        model.unmerge_adapter()


class FastRollouts:
    """GRPOTrainer mixin: rollouts with the adapter merged (`rollouts["merge_lora"]`) and the growing KV cache
    (`rollouts["kv_cache"] == "growing"`), as `placement.rollout_path` says; vLLM's rollouts are left alone."""

    rollouts: dict[str, Any] = {}

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        with ExitStack() as stack:
            if self.rollouts.get("merge_lora"):
                stack.enter_context(merged_adapter(model))
            if self.rollouts.get("kv_cache") == "growing":
                stack.enter_context(growing_cache(model))
            return super()._generate_single_turn(*args, **kwargs)
