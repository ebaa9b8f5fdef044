"""Check a whole recipe in seconds, before any data is prepared or any model is loaded.

`sft`, `grpo` and `pipeline` run this first, and `gsm8k-tr check` runs it
alone, so a typo in the `grpo` section stops a run before an hour of SFT, not
after. What it checks, each the way the stage itself will:

- every key and type (`load_recipe` did that), each reward with its parameters;
- the data source (a local file that is not there, a malformed
  `synthetic:N`) and a run folder whose data was prepared from another
  `data` section;
- the model's config and tokenizer when they are local (a folder, a built
  `builtin:` model, or a Hub id already in the local cache): the stop token
  is one token, the weights are not pickle-only, the context length, and
  that each `lora.target_modules` entry names layers LoRA can adapt (a
  shipped recipe's Hub model that is not local is checked at its published
  shape);
- both stages' TRL configs, built by the stages' own builders
  (`trl_configs.sft_args`, `grpo_args`), so TRL's own checks run too;
- the `eval` section's device, and the in-training checks' lengths;
- on a GPU, the memory plan of both stages; and a recipe whose
  `sized_for_gib` its own plan exceeds gets a warning.

It checks on this machine what the stages will meet on this machine: a
recipe that sets `sft.bf16: true` fails here on a CPU, as its SFT would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gsm8k_tr import hub, modeling, placement, toolchain
from gsm8k_tr.config import Recipe
from gsm8k_tr.data import sources, splits
from gsm8k_tr.errors import UserError
from gsm8k_tr.grading.rewards import build_rewards
from gsm8k_tr.train import fitting, memory, plan
from gsm8k_tr.train.lora import lora_config
from gsm8k_tr.train.trl_configs import grpo_args, sft_args

log = logging.getLogger(__name__)


def check(recipe: Recipe) -> dict[str, Any]:
    """Check every section of `recipe`; raise UserError (one line) at the first mistake.

    Returns what was checked and what could not be (a Hub model that is not
    in the local cache), for `gsm8k-tr check` to report.
    """
    prepared = _data(recipe)
    config, tokenizer, model_note = _model(recipe)
    context = modeling.config_context_length(config, recipe.model.name_or_path) if config is not None else None
    stop, stop_id = (modeling.stop_token_id(tokenizer, recipe.model.stop_token) if tokenizer is not None
                     else (recipe.model.stop_token or "<eos>", None))
    # Without a local config the context is unknown; the lengths that depend on it are checked when the model loads.
    budget = context or 1 << 30
    sft = sft_args(recipe, stop, budget)
    grpo = grpo_args(recipe, [stop_id] if stop_id is not None else [], budget)
    build_rewards(recipe.rewards, recipe.prompt.reasoning_tag, recipe.prompt.answer_tag)
    _eval(recipe, context)
    evaluates = sft.eval_strategy != "no"
    _held_out(recipe, prepared, evaluates, evaluates and sft.load_best_model_at_end)
    _compiling(recipe, sft, grpo)
    if config is not None:
        lora_config(recipe.lora, modeling.meta_model(config))  # its target_modules name the model's layers
        if grpo.cast_lm_head_to_fp32 and config.tie_word_embeddings:
            # TRL reaches tied input embeddings as `model.model.embed_tokens`, which a PEFT model's `.model` (the
            # causal LM) never has: GRPO stopped at its start with an AttributeError (GPT-2 and SmolLM2 alike)
            raise UserError(f"recipe key 'grpo.cast_lm_head_to_fp32' is not supported with {config.model_type}'s tied "
                            "embeddings: TRL's cast reaches them as model.embed_tokens, which a LoRA model does not "
                            "have; set it false")
        shape = memory.Shape.from_config(config)
        fitting.check_fits(shape, recipe, "sft", sft)  # on a GPU only
        fitting.check_fits(shape, recipe, "grpo", grpo, grpo.num_generations)
        warning = plan.sized_for_warning(recipe, config)
        if warning:
            log.warning(warning)
    log.info("recipe checked: every section; model %s", model_note)
    return {"model": model_note, "context": context, "stop_token": stop, "sft_steps": sft.max_steps,
            "grpo_steps": grpo.max_steps}


def _data(recipe: Recipe) -> tuple[Path, bool]:
    """The data section checked; returns where its prepared data is and whether it is prepared already."""
    data = recipe.data
    spec = data.dataset
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = spec.partition(":")[2]
        if count and not count.isdigit():
            raise UserError(f"data source {spec!r}: write synthetic:N with N a whole number, e.g. synthetic:2000")
    elif sources.looks_local(spec) and not Path(spec).expanduser().exists():
        raise UserError(f"recipe key 'data.dataset': {spec!r} does not exist; give a CSV, JSON, JSONL or Parquet file, "
                        "a folder of them, a folder written by `gsm8k-tr prepare`, or a Hub id")
    reference = data.reference
    if reference.lower() != "none" and sources.looks_local(reference):
        # what `prepare` reads (files named by split, the Hub's shards, a save_to_disk folder), by name alone
        try:
            names = sources.local_splits(reference)
        except UserError as error:
            raise UserError(f"recipe key 'data.reference': {error}") from None
        if "test" not in names:  # prepare's own refusal, after SFT's data in a pipeline
            raise UserError(f"recipe key 'data.reference': {sources.no_test_split(reference, names)}")
    return splits.prepared_folder(recipe)  # a run folder prepared from another data section is refused


def _model(recipe: Recipe) -> tuple[Any, Any, str]:
    """(config, tokenizer, what was checked): either may be None when it is not on this machine."""
    from transformers import AutoConfig, AutoTokenizer

    cfg = recipe.model
    name = cfg.name_or_path
    if cfg.revision and (name.startswith("builtin:") or Path(name).expanduser().is_dir()):
        # transformers loads a folder whatever the revision, without a word
        raise UserError(f"recipe key 'model.revision' is {cfg.revision!r}, but {name!r} is not a Hub model; "
                        "remove the key")
    if cfg.gguf_file and name.startswith("builtin:"):
        raise UserError(f"recipe key 'model.gguf_file' is {cfg.gguf_file!r}, but {name!r} has no GGUF file; "
                        "remove the key")
    if name.startswith("builtin:"):
        from gsm8k_tr import builtin

        folder = builtin.built_folder(name)  # an unknown name is one line
        if folder is None:  # not built yet: its config without the minutes of pretraining
            return builtin.model_config(name), None, f"{name} (not built yet: config only)"
        return AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), f"{name} ({folder})"
    source, kwargs = modeling.load_source(cfg, None)
    local = Path(source).expanduser()
    if local.is_dir():
        modeling.refuse_pickle(local)
    elif hub.names_a_path(source):
        raise UserError(f"recipe key 'model.name_or_path': {name!r} does not exist; give a model folder, a Hub id "
                        "or builtin:NAME")
    else:
        kwargs["local_files_only"] = True  # a Hub id: only what this machine already has; nothing is downloaded
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        if local.is_dir():
            raise UserError(f"cannot read the config of {name!r}: {modeling.load_failure(error)}") from None
        known = plan.KNOWN_CONFIGS.get(name)  # a shipped recipe's model: its published shape, for lengths and memory
        shape = AutoConfig.for_model(**known) if known else None
        return shape, None, f"{name} (not in the local cache: {'its published shape; ' if known else ''}" \
                            "its own files are checked when it loads)"
    try:
        tokenizer = modeling.require_vocabulary(AutoTokenizer.from_pretrained(source, **kwargs), name)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer of {name!r}: {modeling.load_failure(error)}") from None
    return config, tokenizer, f"{name} (config and tokenizer)"


def _compiling(recipe: Recipe, sft: Any, grpo: Any) -> None:
    """What the recipe asks to compile on this machine's GPU needs a C compiler for Triton: said before training,
    not at the first compiled call after hours of it."""
    if not placement.has_cuda():
        return
    if recipe.decoding in placement.COMPILED_DECODINGS:
        toolchain.require_c_compiler(f"decoding: {recipe.decoding}")
    for stage, args in (("sft", sft), ("grpo", grpo)):
        if getattr(args, "torch_compile", False):
            toolchain.require_c_compiler(f"{stage}.torch_compile", f"set {stage}.torch_compile=false")


def _held_out(recipe: Recipe, prepared: tuple[Path, bool], sft_evaluates: bool, sft_chooses: bool) -> None:
    """The in-training held-out checks need rows in their split; a validation split left empty is found otherwise
    only when a stage begins (GRPO's: after SFT). Checks that choose the model on the split that evaluation then
    reports make its accuracy look better than it is: a warning, as a small dataset may leave no other choice."""
    choosing = [key for key, on in (("sft.load_best_model_at_end", sft_chooses),
                                    ("eval.grpo_keep_best", recipe.eval.grpo_keep_best)) if on]
    if choosing and recipe.eval.held_out_split == recipe.eval.split:
        log.warning("%s %s the model by its accuracy on the %s split, which evaluation then reports: that "
                    "accuracy will look better than the model is; set eval.held_out_split=validation",
                    " and ".join(choosing), "choose" if len(choosing) > 1 else "chooses", recipe.eval.split)
    checks = [key for key, on in (("sft.eval_strategy", sft_evaluates), ("eval.every_steps", recipe.eval.every_steps))
              if on]
    if checks and recipe.eval.held_out_split == "train":
        log.warning("eval.held_out_split is train: the in-training checks (%s) grade questions the stages train on, "
                    "so they measure what was learnt by heart, not held-out accuracy; set eval.held_out_split="
                    "validation", ", ".join(checks))
    if not checks or recipe.eval.held_out_split != "validation":
        return
    folder, ready = prepared  # `_data`'s: where the prepared data is, and whether it is there yet
    validation = folder / "validation.jsonl"  # none in folders prepared before 0.2
    if ready and (not validation.is_file() or validation.stat().st_size == 0):
        why = f"is empty or missing in {folder}; prepare the data again with data.validation_fraction above 0"
    elif not ready and recipe.data.validation_fraction == 0:
        why = "data.validation_fraction=0 leaves empty; raise data.validation_fraction"
    else:
        return
    raise UserError(f"the in-training checks ({', '.join(checks)}) grade held-out answers on the validation split, "
                    f"which {why}, or turn the checks off (sft.eval_strategy=no, eval.every_steps=0)")


def _eval(recipe: Recipe, context: int | None) -> None:
    ev = recipe.eval
    placement.inference_device(ev.device)  # a device this machine does not have is one line
    if context is None:
        return
    for key, tokens in (("eval.max_new_tokens", ev.max_new_tokens),
                        ("prompt_filter.max_new_tokens", recipe.prompt_filter.max_new_tokens)):
        if tokens is not None and tokens >= context:
            raise UserError(f"recipe key {key!r} is {tokens}, which leaves no room for a prompt in the model's "
                            f"context of {context} tokens")
