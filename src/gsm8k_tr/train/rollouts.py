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

Rollouts run in the trainer's mixed precision, as the loss scores them.
accelerate autocasts the prepared model's `forward`, but PEFT's `generate`
calls the base model's own, so TRL's rollouts decoded in float32 under bf16
or fp16 training: sampled from a float32 policy, scored as a bf16 one, and on
a GPU float32 matmuls (about 0.7 ms of arithmetic per decoding step at GPT-2
Medium's 64 rollouts on an H200, against 0.15 ms to read bf16 weights).
Autocast alone would cast every frozen float32 weight again at each step
(autocast caches casts only of weights that train): a kernel and 2 bytes
written per weight per step. So for the call the frozen matmul weights
(`Linear`, GPT-2's `Conv1D`) are swapped for copies in the compute dtype, the
very values autocast would make, and the float32 tensors put back after:
the same tokens as autocast alone (`tests/train/test_rollouts.py`), the
weights exactly as they were, and one copy of them in the compute dtype
(the memory plan's `rollout_weights`), kept between calls and refreshed in
place so that CUDA graphs find each weight where they recorded it.
Embeddings and norms stay float32, as under autocast.

TRL builds the `generate` call itself, so the cache that `infer/kv_cache.py`
describes (prefilled as `infer/shared_prefill.py` says, each group's prompt
kept once where `infer/grouped_attention.py` is on) is handed to it by
shadowing the model's `generate` for the call, and the sampler of
`infer/sampling.py` stands in for `torch.multinomial`; on a GPU `generate`
reads its stop flag a step late (`infer/stop_check.py`). With compiled decoding
(`infer/compiled_decoding.py`) the call gets the compiled generation config
in place of TRL's (which turns compiling off) and its prompts padded to a
multiple of `PROMPT_MULTIPLE` tokens (TRL's own `pad_to_multiple_of`), both
for that call only; with `compiled-step` the call goes to
`infer/compiled_step.py`, its prompts padded alike. `placement.rollout_path`
decides where each of these runs. A batch of one group repeats one prompt, so
it has no padding, `generate` drops its mask and GPT-2 warns that the input
may be padded; that false warning is kept out (`generation.quiet_unpadded`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest.mock import patch

from gsm8k_tr import placement
from gsm8k_tr.infer import attention_kernels, compiled_decoding, compiled_step, generation, stop_check
from gsm8k_tr.infer.kv_cache import growing_cache
from gsm8k_tr.infer.sampling import one_draw_per_row

COPIES = "_gsm8k_tr_weight_copies"  # the model's attribute holding the copies between calls


@contextmanager
def matmul_weights_in(model: Any, dtype_name: str | None) -> Iterator[None]:
    """The frozen weights and biases of `model`'s Linear and Conv1D layers as copies in `dtype_name` ("bfloat16")
    for the block; the original tensors are put back after, also on error. Trained parameters (LoRA's) are left
    alone; None changes nothing.

    The copies are kept on the model and refreshed in place at each call, so a layer's weight has the same address
    every call: CUDA graphs (compiled decoding) treat weights as fixed inputs and record the graph again when one
    moves (a warm-up run and a capture, at each GRPO step), and torch's CUDA graph trees have counted such
    re-recordings toward a limit (`cudagraph_unexpected_rerecord_limit`, 128) past which a function stops replaying
    graphs for the rest of the run. torch 2.13 exempts them; the GPU image's torch 2.11 was not checked."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kept = []
    if dtype_name is not None:
        dtype = getattr(torch, dtype_name)
        copies: dict[int, Any] = model.__dict__.setdefault(COPIES, {})
        # An LM head tied to the input embeddings (GPT-2's) shares their tensor: the embeddings must stay float32.
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        # Ordinary tensors, also when a caller is in inference mode: a later call refreshes them in place.
        with torch.inference_mode(False), torch.no_grad():
            for module in model.modules():
                if not isinstance(module, (torch.nn.Linear, Conv1D)):
                    continue
                for param in (module.weight, module.bias):
                    if (param is None or param.requires_grad or not param.is_floating_point()
                            or param.dtype == dtype or id(param) in embeddings):
                        continue
                    copy = copies.get(id(param))
                    if copy is None or (copy.shape, copy.dtype, copy.device) != (param.shape, dtype, param.device):
                        copy = copies[id(param)] = param.data.to(dtype)
                    else:
                        copy.copy_(param.data)  # the weights as they are now (a merged adapter, a training step)
                    kept.append((param, param.data))
                    param.data = copy
    try:
        yield
    finally:
        for param, data in kept:
            param.data = data


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


@contextmanager
def generating_policy(model: Any, accelerator: Any, merge: bool, weights_dtype: str | None) -> Iterator[None]:
    """The policy as GRPO's rollouts and the held-out checks generate with it: the adapter merged (`merge`; in
    float32, so before autocast), the frozen matmul weights in `weights_dtype`, under the trainer's autocast (a no-op
    without mixed precision, as on a CPU)."""
    with ExitStack() as stack:
        if merge:
            stack.enter_context(merged_adapter(model))
            stack.enter_context(matmul_weights_in(model, weights_dtype))
        stack.enter_context(accelerator.autocast())
        yield


@contextmanager
def dtypes_kept(model: Any) -> Iterator[None]:
    """`model`'s parameters and buffers in their own dtypes after the block, the trainable parameters and the
    floating buffers (rotary frequencies) with their exact values.

    TRL's continuous-batching rollouts (`use_transformers_continuous_batching`; trl 1.16, `_generate_single_turn`)
    cast the whole model to bf16 or fp16 under mixed precision and leave it so: from the first rollout on, the adapter
    would train in half precision, its small updates rounded away. The frozen weights come back rounded once to that
    precision (as if loaded in it; autocast's matmuls read them so anyway): keeping them exact would take a copy of
    the whole model."""
    import torch

    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()}
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dtype != dtypes[name]:
                    param.data = trained[name] if name in trained else param.data.to(dtypes[name])
            for name, kept in buffers.items():
                owner, _, leaf = name.rpartition(".")
                module = model.get_submodule(owner)
                if module._buffers[leaf].dtype != kept.dtype:
                    module._buffers[leaf] = kept


class FastRollouts:
    """GRPOTrainer mixin: rollouts in the trainer's mixed precision, with the adapter merged
    (`rollouts["merge_lora"]`) and the frozen matmul weights in the compute dtype (`rollouts["weights_dtype"]`),
    compiled decoding (`rollouts["decoding"]`: "compiled" or "compiled-step"), the growing KV cache
    (`rollouts["kv_cache"] == "growing"`, prefilled once per prompt with `rollouts["shared_prefill"]`, one copy a
    group read once with `rollouts["grouped_attention"]`), the
    inverse-CDF sampler (`rollouts["sampler"] == "inverse_cdf"`), the attention kernels (`rollouts["attention"]`)
    and the deferred stop check (`rollouts["stop_check"]`), as `placement.rollout_path` says; vLLM's rollouts are
    left alone, and transformers' continuous batching's but for the dtypes it leaves (`dtypes_kept`)."""

    rollouts: dict[str, Any] = {}
    # The recipe's `decoding` and how to choose the path again: after torch's compiler failed on this machine,
    # "auto" decodes eager (`placement.compile_failed`).
    decoding_request: str = "auto"
    plan_rollouts: Callable[[], dict[str, Any]] | None = None

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        if getattr(self, "use_transformers_continuous_batching", False):
            with dtypes_kept(self.accelerator.unwrap_model(self.model)):
                return super()._generate_single_turn(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        checkpointing = activation_checkpointing(model)
        try:
            return self._fast_turn(model, *args, **kwargs)
        except Exception as error:
            if not placement.compile_failed(self.decoding_request, self.rollouts.get("decoding", ""), error):
                raise
            # TRL's unwrap_model_for_generation turns activation checkpointing off for generate and back on after,
            # but not when generate raises.
            if checkpointing and not activation_checkpointing(model):
                turn_on_activation_checkpointing(model, self.args.gradient_checkpointing_kwargs)
            self.rollouts = {**(self.plan_rollouts() if self.plan_rollouts else {**self.rollouts, "decoding": "eager"}),
                             "compile_failed": placement.compile_failure}  # for the manifest
            return self._fast_turn(model, *args, **kwargs)

    def _fast_turn(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            # merge_lora: whole weights on this process (not FSDP or DeepSpeed shards)
            stack.enter_context(generating_policy(model, self.accelerator, self.rollouts.get("merge_lora", False),
                                                  self.rollouts.get("weights_dtype")))
            how = self.rollouts.get("decoding")
            if how in placement.COMPILED_DECODINGS:
                stack.enter_context(compiled_decoding.room_to_compile())
            if how == "compiled":
                config = compiled_decoding.generation_config(self.generation_config, self.accelerator.device)
                stack.enter_context(patch.multiple(self, generation_config=config,
                                                   pad_to_multiple_of=compiled_decoding.PROMPT_MULTIPLE))
            elif how == "compiled-step":
                stack.enter_context(patch.object(self, "pad_to_multiple_of", compiled_decoding.PROMPT_MULTIPLE))
                stack.enter_context(compiled_step.in_generate(model, self.rollouts.get("grouped_attention", False)))
            if self.rollouts.get("kv_cache") == "growing":
                stack.enter_context(growing_cache(model, share_prompts=self.rollouts.get("shared_prefill", False),
                                                  grouped=self.rollouts.get("grouped_attention", False)))
            stack.enter_context(one_draw_per_row(self.rollouts.get("sampler") == "inverse_cdf"))
            stack.enter_context(attention_kernels.only(self.rollouts.get("attention")))
            stack.enter_context(stop_check.deferred(self.rollouts.get("stop_check") == "deferred"))
            stack.enter_context(generation.quiet_unpadded_calls(model))
            return super()._generate_single_turn(*args, **kwargs)


def activation_checkpointing(model: Any) -> bool:
    """Whether `model` checkpoints activations (transformers 5's name where the model has it, else 4's)."""
    new = hasattr(model, "is_activation_checkpointing")
    return bool(getattr(model, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False))


def turn_on_activation_checkpointing(model: Any, kwargs: dict[str, Any] | None) -> None:
    """Activation checkpointing on, with `kwargs`, as TRL turns it back on after generating (without 5's deprecation
    warning where the model has 5's name)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
