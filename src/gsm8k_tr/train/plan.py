"""`gsm8k-tr plan`: both stages' memory plans for a recipe, from the model's config alone.

The stages' TRL configs are built as the stages build them (their defaults, the
recipe's sections), then `memory.estimate` runs on each. Precision is chosen on
the machine that trains, so a plan for a GPU assumes bf16 or fp16 unless the
recipe turns both off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gsm8k_tr import hub, modeling, placement
from gsm8k_tr.config import Recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.train.fitting import fit_micro_batch, hint, wants_auto
from gsm8k_tr.train.lora import lora_config
from gsm8k_tr.train.memory import Shape, StagePlan, estimate, stage_settings

log = logging.getLogger(__name__)


# Configs of the models the shipped recipes name, for planning without the Hub (they are public: GPT-2 Medium's
# shape). With Hub access the model's own config.json is read instead.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "ytu-ce-cosmos/turkish-gpt2-medium-350m-instruct-v0.1": {
        "model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16, "n_positions": 1024, "vocab_size": 50257},
}


# Layouts whose activations were counted against what autograd keeps (`benchmarks/memory_plan.py --saved`): GPT-2
# Medium, SmolLM2, Qwen2.5-0.5B, Pythia-410M, OPT-350M and GPT-Neo-125M, within 4%. The plan reads other layouts as
# GPT-2's or Llama's block; on Phi-3's and Gemma's layouts that gave 1.00x and 1.03x (docs/benchmarks.md).
CHECKED_LAYOUTS = ("gpt2", "llama", "qwen2", "gpt_neox", "opt", "gpt_neo")


def layout_note(shape: Shape) -> str | None:
    """A line saying the plan's activations are read from another layout's counts, or None for a checked one."""
    if shape.model_type in CHECKED_LAYOUTS:
        return None
    return (f"activations: {shape.model_type}'s block is planned as {'GPT-2' if shape.family == 'gpt2' else 'Llama'}'s"
            "; on layouts it was not counted on that ran 1.00x to 1.03x of what autograd keeps (docs/benchmarks.md)")


def model_config(recipe: Recipe) -> Any:
    """The recipe model's config: from its folder or the Hub, else a known config when the Hub is unreachable."""
    from transformers import AutoConfig

    cfg = recipe.model
    if cfg.name_or_path.startswith("builtin:"):  # its config without building its weights
        from gsm8k_tr import builtin

        return builtin.model_config(cfg.name_or_path)
    source, kwargs = modeling.load_source(cfg, None)  # revision, GGUF file, trust_remote_code as loading uses them
    if hub.names_a_path(source) and not Path(source).expanduser().is_dir():
        raise UserError(f"recipe key 'model.name_or_path': {source!r} does not exist; the plan needs the model's "
                        "config.json: give a model folder, a Hub id or builtin:NAME")
    if not Path(source).expanduser().is_dir():  # a Hub id: the cached config first, without the Hub's retries
        try:
            return AutoConfig.from_pretrained(source, **kwargs, local_files_only=True)
        except (OSError, ValueError):
            hub.before_loading(source)  # not cached: ask the Hub, if it answers
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        known = KNOWN_CONFIGS.get(cfg.name_or_path)
        if known is None:
            raise UserError(f"cannot read the config of {cfg.name_or_path!r} ({modeling.load_failure(error)}); "
                            "the plan needs its config.json (no weights)") from None
        log.warning("%s: the Hub is not reachable; planning with its published shape %s", cfg.name_or_path, known)
        return AutoConfig.for_model(**known)


def plan_recipe(recipe: Recipe, memory_gib: float | None = None,
                config: Any = None) -> tuple[Shape, dict[str, StagePlan]]:
    """The plan of both stages. With `memory_gib` the recipe is planned for a GPU of that size; without it, for
    the GPU this machine has (its free memory), or for this CPU. `config`: the model's, when already read."""
    import trl

    from gsm8k_tr.grading.rewards import reward_weights
    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, SFT_DEFAULTS, trl_config

    config = config if config is not None else model_config(recipe)
    lora_config(recipe.lora, modeling.meta_model(config))  # its target_modules name the model's layers
    shape = Shape.from_config(config)
    on_gpu, free = placement.accelerator_memory()
    native = placement.native_bf16()
    if memory_gib is not None:  # a GPU it is not on: taken to have bf16
        on_gpu, free, native = True, memory_gib, True
    forced = {"output_dir": ("/nonexistent/gsm8k-tr-plan", ""), "seed": (recipe.seed, "")}
    plans = {}
    for stage, defaults, cls, section in (("sft", SFT_DEFAULTS, trl.SFTConfig, recipe.sft),
                                          ("grpo", GRPO_DEFAULTS, trl.GRPOConfig, recipe.grpo)):
        values = {k: v for k, v in section.items() if k not in ("bf16", "fp16", "use_vllm")}
        # The precision planned for, so that an auto micro-batch is fitted in it too. On a CPU its training is
        # counted in float32 either way (`memory.estimate`); its rollouts' weight copies and KV cache in bf16.
        mixed = placement.planned_mixed_precision(section, on_gpu, native)
        neutral = {"bf16": mixed, "fp16": False, "use_cpu": True}
        extra = {"reward_weights": (reward_weights(recipe.rewards), "")} if stage == "grpo" else {}
        padding = {"pad_to_multiple_of": placement.pad_to_multiple_of(shape.context, on_gpu, stage)}  # as it pads
        args = trl_config(cls, stage, values, {**defaults, **neutral, **padding}, {**forced, **extra})
        if wants_auto(section):  # the micro-batch the stage would choose at the planned lengths
            batch = fit_micro_batch(shape, recipe, stage, args, None, (on_gpu, free) if on_gpu else None)
            args.per_device_train_batch_size = batch["per_device_train_batch_size"]
            args.gradient_accumulation_steps = batch["gradient_accumulation_steps"]
        settings = stage_settings(recipe, stage, args, shape.context)
        settings["mixed_precision"] = mixed
        settings["vllm"] = bool(section.get("use_vllm")) and section.get("vllm_mode", "colocate") == "colocate"
        settings["vllm_share"] = float(section.get("vllm_gpu_memory_utilization", 0.3)) if settings["vllm"] else 0.0
        plans[stage] = estimate(shape, stage, settings, on_gpu, free)
    return shape, plans


def sized_for_warning(recipe: Recipe, config: Any = None) -> str | None:
    """A warning when the recipe's own plan exceeds the `sized_for_gib` it claims; None when it fits or claims none."""
    if recipe.sized_for_gib is None:
        return None
    _, plans = plan_recipe(recipe, recipe.sized_for_gib, config)
    over = [f"{name} {p.peak_gib:.1f} GiB" for name, p in plans.items() if not p.fits]
    if not over:
        return None
    return (f"the recipe says sized_for_gib: {recipe.sized_for_gib:g}, but its plan needs more there ({', '.join(over)}); "
            "`gsm8k-tr plan` shows the parts and what to lower")


def to_fit(shape: Shape, plans: dict[str, StagePlan]) -> dict[str, str]:
    """For each stage whose plan does not fit its GPU, the recipe changes that would, as a stage's own check before
    it starts words them ("set sft.per_device_train_batch_size=4 sft.gradient_accumulation_steps=8 (about 10.4 GiB)
    or ...")."""
    return {name: hint(shape, name, p.settings, True, p.memory_gib, p.settings.get("num_generations", 1))
            for name, p in plans.items() if p.fits is False and p.memory_gib is not None}


def table(plans: dict[str, StagePlan]) -> list[str]:
    """The plan as text lines: one row per stage, one column per part, GiB."""
    keys = {"weights": "weights", "lora": "lora", "activations": "activations", "weight_casts": "casts",
            "logits": "logits", "kv_cache": "kv_cache", "rollout_weights": "copies", "runtime": "runtime"}
    lines = [f"{'stage':<6} " + " ".join(f"{k:>11}" for k in keys.values()) + f" {'peak':>7}  fits"]
    for name, p in plans.items():
        other = next(k for k in p.parts if k.startswith("activations_"))
        fits = "-" if p.fits is None else ("yes" if p.fits else "NO") + f" ({p.memory_gib:.1f} GiB)"
        lines.append(f"{name:<6} " + " ".join(f"{p.parts.get(k, 0.0):>11.2f}" for k in keys) +
                     f" {p.peak_gib:>7.2f}  {fits}")
        state = "on" if p.settings["checkpointing"] else "off"
        lines.append(f"{'':<6} activation checkpointing {state}; {other.replace('_', ' ')}: {p.parts[other]:.2f} GiB; "
                     f"micro-batch {p.settings['micro_batch']} x {p.settings['length']} tokens")
    lines.append("casts: autocast's copies of the matmul weights, kept for the backward pass; copies: the rollouts' "
                 "weights in the compute dtype, kept between rollouts, as compiled decoding keeps its KV cache")
    return lines
