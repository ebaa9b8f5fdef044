"""GRPO's rollouts with the LoRA adapter merged into the weights while they are generated, the KV cache written
in place and each prompt prefilled once for its group, and on a CPU one random number per sampled token.

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

Rollouts run in the trainer's mixed precision (bf16 or fp16 autocast, as the
training forward does). accelerate autocasts the prepared model's `forward`,
but PEFT's `generate` calls the base model's own, so TRL's rollouts decoded in
float32 under bf16 training: on a GPU, float32 matmuls and twice the weight
and KV-cache bytes per decoding step (the memory plan already counted the
cache in the compute dtype). The held-out checks run under the same autocast.

TRL builds the `generate` call itself, so the cache that `infer/kv_cache.py`
describes (prefilled as `infer/shared_prefill.py` says) is handed to it by
shadowing the model's `generate` for the call, and the sampler of
`infer/sampling.py` stands in for `torch.multinomial`. With compiled decoding
(`infer/compiled_decoding.py`) the call gets the compiled generation config
in place of TRL's (which turns compiling off) and its prompts padded to a
multiple of `PROMPT_MULTIPLE` tokens (TRL's own `pad_to_multiple_of`), both
for that call only. `placement.rollout_path` decides where each of these runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from gsm8k_tr.infer import compiled_decoding
from gsm8k_tr.infer.kv_cache import growing_cache
from gsm8k_tr.infer.sampling import one_draw_per_row


@contextmanager
def swapped(owner: Any, **values: Any) -> Iterator[None]:
    """Set attributes of `owner` for the block and put the old values back after, also on error."""
    old = {name: getattr(owner, name) for name in values}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(owner, name, value)


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
    """GRPOTrainer mixin: rollouts in the trainer's mixed precision, with the adapter merged
    (`rollouts["merge_lora"]`), compiled decoding (`rollouts["decoding"] == "compiled"`), the growing KV cache
    (`rollouts["kv_cache"] == "growing"`, prefilled once per prompt with `rollouts["shared_prefill"]`) and the
    inverse-CDF sampler (`rollouts["sampler"] == "inverse_cdf"`), as `placement.rollout_path` says; vLLM's rollouts
    are left alone."""

    rollouts: dict[str, Any] = {}

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        with ExitStack() as stack:
            if self.rollouts.get("merge_lora"):
                stack.enter_context(merged_adapter(model))  # before autocast: the adapter's product in float32
            stack.enter_context(self.accelerator.autocast())  # a no-op without mixed precision (CPU)
            if self.rollouts.get("decoding") == "compiled":
                config = compiled_decoding.generation_config(self.generation_config, self.accelerator.device)
                stack.enter_context(swapped(self, generation_config=config,
                                            pad_to_multiple_of=compiled_decoding.PROMPT_MULTIPLE))
            if self.rollouts.get("kv_cache") == "growing":
                stack.enter_context(growing_cache(model, share_prompts=self.rollouts.get("shared_prefill", False)))
            stack.enter_context(one_draw_per_row(self.rollouts.get("sampler") == "inverse_cdf"))
            return super()._generate_single_turn(*args, **kwargs)
