"""The layers LoRA adapts, and the inputs their adapters keep for the backward pass, for the memory plan.

A layer is `(name, in, out)`: a linear layer of the model (`memory.Shape`
lists every one but the head). LoRA's first matmul needs its input for the
backward pass, so each adapted layer keeps it and a layer left out keeps
none; the frozen weight's own backward needs only the weight. Counted with
`benchmarks/memory_plan.py --saved --targets` (docs/benchmarks.md).
"""

from __future__ import annotations

Layer = tuple[str, int, int]
# Linear layers that read one input in the Llama layout: attention's q, k and v, and the MLP's gate and up.
SHARED_INPUTS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})


def adapted(linears: list[Layer], targets: list[str] | None) -> list[Layer]:
    """The layers of `linears` that LoRA adapts: all of them when `targets` is empty (the recipes' default,
    `lora.lora_config`), else those that PEFT's own rule matches."""
    if not targets:
        return linears
    import peft
    from peft.tuners.tuners_utils import check_target_module_exists

    config = peft.LoraConfig(target_modules=list(targets))
    return [linear for linear in linears if check_target_module_exists(config, linear[0])]


def kept_inputs(linears: list[Layer], per_layer_copy: bool) -> int:
    """Input values per token that LoRA on `linears` keeps for the backward pass.

    Under autocast each adapter keeps its own copy (`per_layer_copy`): PEFT
    casts the input to the adapter's float32 weights and autocast casts that
    back, per layer, so Llama's q, k and v keep three. Without autocast,
    layers that read one input share it (`SHARED_INPUTS`).
    """
    if per_layer_copy:
        return sum(inputs for _, inputs, _ in linears)
    distinct = {}
    for name, inputs, _ in linears:
        parent, _, leaf = name.rpartition(".")
        distinct[parent, next((min(group) for group in SHARED_INPUTS if leaf in group), leaf)] = inputs
    return sum(distinct.values())
