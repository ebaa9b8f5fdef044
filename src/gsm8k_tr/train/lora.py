"""PEFT's LoRA settings for a model: every linear layer by default, and the one line for a `lora.target_modules`
entry that names no layer LoRA can adapt."""

from __future__ import annotations

from typing import Any

from gsm8k_tr.config import LoraConfig
from gsm8k_tr.errors import UserError


def lora_config(cfg: LoraConfig, model: Any, dropout: float | None = None, revision: str | None = None) -> Any:
    """PEFT LoRA settings; by default every linear layer of the architecture.

    PEFT's own default for GPT-2 is `c_attn` only. `all-linear` covers
    `nn.Linear` and GPT-2's `Conv1D` and leaves out the LM head; Conv1D stores
    its weight transposed, hence `fan_in_fan_out`. `revision`: the base model's
    commit on the Hub (`hub_commit`), which the saved adapter records, so PEFT's
    `AutoPeftModelForCausalLM` loads the base it was trained on.
    """
    import peft
    from transformers.pytorch_utils import Conv1D

    conv1d = any(isinstance(module, Conv1D) for module in model.modules())
    config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout if dropout is None else dropout,
        target_modules=cfg.target_modules or "all-linear",
        fan_in_fan_out=conv1d,
        bias="none",
        task_type="CAUSAL_LM",
        revision=revision,
    )
    if cfg.target_modules:
        _check_targets(cfg.target_modules, model)
    return config


def _check_targets(targets: list[str], model: Any) -> None:
    """One line, before PEFT's traceback, for a `lora.target_modules` entry that names no layer LoRA can adapt.

    PEFT matches each entry by its own rule (the whole module name, or its
    last parts), and stops inside the trainer when none matches, or when one
    matches a module it cannot adapt (a LayerNorm). An entry that matches
    nothing beside others that do is left out silently there: a typo that
    trains fewer layers than asked. So every entry must match.

    Two layers LoRA can adapt are refused too. The output head: TRL computes
    the loss from its weight directly, so an adapter there never trains (TRL
    stops with a traceback). Input embeddings tied to the head (GPT-2,
    SmolLM2, Qwen2.5): the adapter trains the input side only, and merging it
    changes the shared weight, so the merged model is not the one trained
    (on the tiny model its logits moved by 20% of their scale).
    """
    import peft
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers.pytorch_utils import Conv1D

    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and embeddings is not None and head.weight is embeddings.weight
    refused = {id(head): "the output head, whose weight TRL's loss reads directly: an adapter there never trains"}
    if tied:
        refused[id(embeddings)] = ("the input embeddings, which share their weight with the output head: merging an "
                                   "adapter there would change the head, which never trained with it")
    adaptable = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
    modules = dict(model.named_modules())
    for target in targets:
        config = peft.LoraConfig(target_modules=[target])
        found = [name for name in modules if check_target_module_exists(config, name) is True]
        wrong = [name for name in found if not isinstance(modules[name], adaptable)]
        if found and not wrong:
            if (name := next((n for n in found if id(modules[n]) in refused), None)) is not None:
                raise UserError(f"lora.target_modules: {target!r} matches {name}, {refused[id(modules[name])]}; "
                                "leave it out")
            continue
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items()
                         if isinstance(module, adaptable) and name and id(module) not in refused})
        what = (f"matches {wrong[0]} ({type(modules[wrong[0]]).__name__}), which LoRA cannot adapt" if wrong
                else "names no layer of the model")
        raise UserError(f"lora.target_modules: {target!r} {what}; the model's layers LoRA can adapt are "
                        f"{', '.join(leaves)} (or set lora.target_modules: null for every linear layer)")
