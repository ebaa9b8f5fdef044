"""TRL's SFTConfig and GRPOConfig built from a recipe section, checked key by key against TRL itself.

Both stages build their config here, and `recipe_check` builds the same ones
before any work, so a mistake in either section stops a run in its first
seconds rather than after an hour of SFT.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from typing import Any

from gsm8k_tr import hub, placement
from gsm8k_tr.config import Recipe
from gsm8k_tr.errors import UserError, did_you_mean, one_line
from gsm8k_tr.grading.rewards import reward_weights
from gsm8k_tr.infer import vllm_engine
from gsm8k_tr.run_folder import stage_dir
from gsm8k_tr.typed_values import coerce, type_name
from gsm8k_tr.train import batch_order
from gsm8k_tr.train.checkpoints import CHECKPOINTS
from gsm8k_tr.train.memory import padded, padding_multiple

log = logging.getLogger(__name__)
_said: set[str] = set()  # warnings given in this process: the configs are built more than once a stage

# Our defaults over TRL's; every one can be changed in the recipe's `sft` and `grpo` sections.
SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,  # LoRA: about 10x a full fine-tune's rate
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 8,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "activation_checkpointing": False,  # TRL turns it on; below 1B parameters it only costs time
    "report_to": ["tensorboard"],
    "completion_only_loss": True,
    "metric_for_best_model": "accuracy",  # with eval_strategy on: held-out accuracy, the task's metric, not the loss
}
GRPO_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,  # LoRA: about 10x the 5e-6 of a full-parameter GRPO run
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 0.05,
    "max_steps": 500,
    "per_device_train_batch_size": 8,
    "num_generations": 8,
    "max_completion_length": 256,
    "temperature": 1.0,
    "beta": 0.0,  # no KL term, so no reference model in memory
    "disable_dropout": True,  # score with the policy that sampled
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "activation_checkpointing": False,  # TRL turns it on; below 1B parameters it only costs time
    "report_to": ["tensorboard"],
}


def sft_args(recipe: Recipe, stop: str, context: int) -> Any:
    """The SFTConfig the SFT stage trains with: our defaults < the recipe's `sft` section < what gsm8k-tr sets.

    `stop`: the stop token; `context`: the model's context length.
    """
    import trl

    config = trl_config(
        trl.SFTConfig, "sft", recipe.sft,
        defaults={**SFT_DEFAULTS, **placement.training_precision(recipe.sft, "sft"), "max_length": context,
                  "pad_to_multiple_of": placement.pad_to_multiple_of(context)},
        forced={"output_dir": (str(stage_dir(recipe, "sft") / CHECKPOINTS), "it is {output_dir}/sft/checkpoints"),
                "seed": (recipe.seed, "set the top-level 'seed'"),
                "eos_token": (stop, "set 'model.stop_token'")},
    )
    if (config.max_length or context) > context:
        raise UserError(f"recipe key 'sft.max_length' is {config.max_length}, past the model's context of {context} "
                        "tokens")
    multiple, longest = padding_multiple(config), config.max_length or context
    if padded(longest, multiple) > context:  # SFT passes no position ids: no padded row may pass the context
        raise UserError(f"recipe key 'sft.pad_to_multiple_of' is {multiple}, which pads rows of up to {longest} "
                        f"tokens past the model's context of {context}; use a number that divides {context}, or "
                        "lower sft.max_length")
    if recipe.eval.sft_patience and (config.eval_strategy == "no" or not config.load_best_model_at_end):
        raise UserError("recipe key 'eval.sft_patience' stops SFT when validation stops improving, which needs "
                        "sft.eval_strategy: steps (with sft.eval_steps) and sft.load_best_model_at_end: true")
    check_report_to("sft", config)
    check_training_values("sft", config)
    check_switches("sft", config)
    batch_order.choose(config, recipe.sft)
    if config.padding_free and not config.packing:
        # TRL refuses a max_length it would not enforce on padding-free rows (a traceback when the trainer is built);
        # the stage drops the longer examples itself, counted (`sft.py`, at the recipe's max_length).
        config.max_length = None
    return config


def grpo_args(recipe: Recipe, stop_ids: list[int], context: int) -> Any:
    """The GRPOConfig the GRPO stage trains with; vLLM (optional) is checked and told the stop token ids."""
    import trl

    values = vllm_engine.grpo_settings(recipe.grpo, stop_ids)  # checked before TRL tries to import vLLM
    config = trl_config(
        trl.GRPOConfig, "grpo", values,
        defaults={**GRPO_DEFAULTS, **placement.training_precision(recipe.grpo, "grpo"),
                  "pad_to_multiple_of": placement.pad_to_multiple_of(context, stage="grpo")},
        forced={"output_dir": (str(stage_dir(recipe, "grpo") / CHECKPOINTS), "it is {output_dir}/grpo/checkpoints"),
                "seed": (recipe.seed, "set the top-level 'seed'"),
                "reward_weights": (reward_weights(recipe.rewards), "set the 'rewards' section")},
    )
    completion = config.max_completion_length
    if completion is None or not 0 < completion < context:
        raise UserError(f"recipe key 'grpo.max_completion_length' must be between 1 and the model's context "
                        f"({context} tokens) minus the prompt, got {completion!r}")
    check_report_to("grpo", config)
    check_training_values("grpo", config)
    check_switches("grpo", config)
    check_grpo_padding(config)
    return config


def check_grpo_padding(config: Any) -> None:
    """Warns where GRPO's batches on a CUDA GPU can be 64 modulo 128 tokens long, at which cuDNN's attention returns
    NaN gradients for left-padded rows on an H100 or H200 (`placement.cudnn_safe` says more)."""
    multiple = padding_multiple(config)
    if placement.cudnn_safe(multiple) or getattr(config, "use_cpu", False) or not placement.has_cuda():
        return
    warning = (f"grpo.pad_to_multiple_of is {multiple or 'null'}: on an H100 or H200, torch's cuDNN attention "
               "returns NaN gradients for GRPO's left-padded batches 64 modulo 128 tokens long (pytorch#196678: "
               "torch 2.11 and later, before cuDNN 9.26), and the run stops at that step (or skips it, with "
               "on_non_finite: skip); a multiple of 128, the default on a GPU, avoids them")
    if warning not in _said:
        _said.add(warning)
        log.warning(warning)


# Batch sizes, lengths and step counts below 1 (max_steps may be -1: train by epochs). TRL accepts some zeros and
# fails later, and divides by others before saying anything, so they are checked before the config is built.
AT_LEAST_ONE = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                "max_completion_length", "logging_steps", "save_steps", "max_steps", "max_length",
                "generation_batch_size", "steps_per_generation", "per_device_eval_batch_size")
# TRL options that hold credentials → the environment variable to use instead.
SECRET_KEYS = {"hub_token": "HF_TOKEN"}
# Deprecated TrainingArguments names: a recipe that sets the old one overrides our default for the new one.
ALIASES = {"gradient_checkpointing": "activation_checkpointing",
           "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}
# transformers before 5.23 (the one the vLLM extra installs: vLLM 0.32 asks for below 5.20) knows only the old names:
# there the new ones, ours or a recipe's, are spelled the old way.
OLD_NAMES = {new: old for old, new in ALIASES.items()}


def _spelled(key: str, fields: dict[str, Any]) -> str:
    """`key` as the installed TrainingArguments spells it."""
    return OLD_NAMES[key] if key in OLD_NAMES and key not in fields and OLD_NAMES[key] in fields else key


def _field_types(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # a library annotation we cannot resolve: check names only
        return {}


def takes_null(field: dataclasses.Field, hint: Any) -> bool:
    """Whether a TRL option may be None: its default is, or its annotation allows it (or cannot be read)."""
    if field.default is None or hint is None or hint is Any:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def trl_config(config_cls: type, section: str, values: dict[str, Any], defaults: dict[str, Any],
               forced: dict[str, tuple[Any, str]]) -> Any:
    """Build TRL's `config_cls` from recipe `values` over our `defaults`.

    Keys must be fields of the TRL class; `forced` keys are set by gsm8k-tr
    (value, why) and may not appear in the recipe. `per_device_train_batch_size:
    auto` builds with the default micro-batch; the stage then lets the memory
    plan split the same effective batch (`fitting.fit_micro_batch`).
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    hints = _field_types(config_cls)
    values = {_spelled(key, fields): value for key, value in values.items()}
    auto = values.get("per_device_train_batch_size") == "auto"
    if auto:
        values.pop("per_device_train_batch_size")
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown recipe key '{section}.{key}'{did_you_mean(key, fields, f'{section}.')}: not an "
                            f"option of TRL's {config_cls.__name__}")
        if key in forced:
            raise UserError(f"recipe key '{section}.{key}' is set by gsm8k-tr ({forced[key][1]}); remove it")
        if key in SECRET_KEYS and value:
            raise UserError(f"recipe key '{section}.{key}' is a secret, and recipes are saved with every output; "
                            f"remove it and set {SECRET_KEYS[key]} in the environment instead")
        if key in AT_LEAST_ONE and isinstance(value, (int, float)) and value < 1 and (key, value) != ("max_steps", -1):
            raise UserError(f"recipe key '{section}.{key}' must be at least 1, got {value}")
        if value is None and not takes_null(fields[key], hints.get(key)):
            # TRL would keep the None and fail with a TypeError once it compares it (at its first step, or in TRL's
            # own checks): say so before anything loads, with the value leaving the key out gives
            default = defaults.get(key, fields[key].default)
            shown = "" if default is dataclasses.MISSING else f" (left out, it is {default!r})"
            raise UserError(f"recipe key '{section}.{key}' cannot be null: TRL's {config_cls.__name__} takes "
                            f"{type_name(hints[key])} there; give a value or leave the key out{shown}")
        if key in hints and value is not None:
            try:
                checked = coerce(value, hints[key], f"{section}.{key}")
            except TypeError:  # Literal and other annotations isinstance cannot check
                continue
            values[key] = checked  # as checked: `5e-5` read as a string by YAML, `no` read as false
    if auto and values.get("steps_per_generation") is not None:  # GRPO's, counted in micro-batches auto sizes later
        raise UserError(f"recipe key '{section}.steps_per_generation' counts micro-batches, whose size "
                        f"'{section}.per_device_train_batch_size: auto' chooses later; set "
                        f"{section}.generation_batch_size (completions a call: 128 for two steps of 64) instead")
    defaults = {_spelled(k, fields): v for k, v in defaults.items() if not any(ALIASES.get(u) == k for u in values)}
    defaults.setdefault("dataloader_pin_memory", placement.pin_memory())
    kwargs = {**defaults, **values, **{k: v for k, (v, _) in forced.items()}}
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise UserError(f"recipe section '{section}': {one_line(error)}") from None


def _check_optimizer_and_schedule(section: str, config: Any) -> None:
    """Build the optimizer and schedule the trainer builds (transformers' class and keyword arguments for `optim`,
    the weight decay in a parameter group; `get_scheduler` with `lr_scheduler_kwargs`) over one parameter: their own
    checks (betas, epsilon, a schedule's missing argument) and a missing package stop the check, not the trainer's
    first step."""
    import torch
    from transformers import Trainer, get_scheduler

    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:  # transformers before optimizer factories
        def is_optimizer_factory(_: Any) -> bool:
            return False
    name = getattr(config.optim, "value", config.optim)  # transformers' enum, as the recipe spells it
    try:
        optimizer, kwargs = Trainer.get_optimizer_cls_and_kwargs(config)
        if is_optimizer_factory(optimizer):  # factories (Muon, Dion) need the model itself
            return
        built = optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": config.weight_decay}],
                          **kwargs)
    except ImportError as error:
        raise UserError(f"recipe key '{section}.optim' is {name}: {one_line(error)}") from None
    except (ValueError, TypeError) as error:
        raise UserError(f"recipe section '{section}': its optimizer ({name}) refuses these settings: "
                        f"{one_line(error)}") from None
    steps = config.max_steps if config.max_steps > 0 else 1000  # the data's length decides it later
    schedule = getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)
    try:
        get_scheduler(config.lr_scheduler_type, optimizer=built, num_warmup_steps=config.get_warmup_steps(steps),
                      num_training_steps=steps, scheduler_specific_kwargs=config.lr_scheduler_kwargs)
    except (ValueError, TypeError) as error:
        given = config.lr_scheduler_kwargs or {}
        raise UserError(f"recipe section '{section}': its learning-rate schedule ({schedule}) refuses these settings "
                        f"({section}.lr_scheduler_kwargs: {given}): {one_line(error)}") from None


def _check_lower_bounds(section: str, config: Any, bounds: tuple[tuple[str, float, bool], ...]) -> None:
    """Each (key, low, above) of `bounds`: the config's value at least `low` (`above`: more than it); unset keys
    (None) pass."""
    for key, low, above in bounds:
        value = getattr(config, key, None)
        if value is not None and (value < low or (above and value == low)):
            raise UserError(f"recipe key '{section}.{key}' must be {'above' if above else 'at least'} {low}, got {value}")


# GRPOConfig's choices that TRL 1.16 reads only once training has begun (GRPOTrainer's loss and advantages), as its
# own help text lists them (tests/train/test_recipe_check.py holds the two alike).
GRPO_CHOICES = {"loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
                "scale_rewards": ("group", "batch", "none"), "importance_sampling_level": ("token", "sequence")}


def check_training_values(section: str, config: Any) -> None:
    """Values the trainer, torch's optimizer or transformers' sampling refuse only once training has begun (in a
    pipeline: after SFT), or take without a word where they make no sense; checked as they would check them."""
    if config.learning_rate < 0:  # torch's optimizers refuse it when the trainer builds them
        raise UserError(f"recipe key '{section}.learning_rate' must be 0 or more, got {config.learning_rate}")
    if config.learning_rate == 0:  # allowed, as torch allows it (a run that times the steps), but it trains nothing
        log.warning("recipe key '%s.learning_rate' is 0: the adapter will not change from its start", section)
    # a negative weight decay grows the weights, and torch checks it only for the defaults, not the trainer's groups;
    # NEFTune's noise stopped the first step in a traceback from torch's uniform_
    _check_lower_bounds(section, config, (("weight_decay", 0, False), ("label_smoothing_factor", 0, False),
                                          ("neftune_noise_alpha", 0, True)))
    _check_optimizer_and_schedule(section, config)
    if config.dataloader_num_workers < 0:  # torch's DataLoader refuses it when the first batch is drawn
        raise UserError(f"recipe key '{section}.dataloader_num_workers' must be 0 or more, got "
                        f"{config.dataloader_num_workers}")
    if config.max_steps < 1 and config.num_train_epochs <= 0:  # the trainer would take 0 steps and save the start
        raise UserError(f"recipe key '{section}.num_train_epochs' must be above 0 when {section}.max_steps is -1, "
                        f"got {config.num_train_epochs}")
    if section != "grpo":
        return
    for key, choices in GRPO_CHOICES.items():
        if getattr(config, key) not in choices:
            raise UserError(f"recipe key 'grpo.{key}' must be one of {', '.join(choices)}, "
                            f"got {getattr(config, key)!r}")
    # A negative KL weight rewards moving away from the reference; a clipping range (either side, or two-sided GRPO's
    # delta) at or below 0 clips every step, without a word. The entropy quantile stopped the first step. top_p 0
    # samples greedily: every completion of a group is the same, so no advantage is ever non-zero. SAPO's temperature
    # 0 made the first loss NaN; VESPO's rates are clamped to 1e-4 by TRL without a word, and a negative shape blows
    # its weights up; a negative off-policy threshold drops every sequence with a negative advantage.
    _check_lower_bounds(section, config, (("beta", 0.0, False), ("epsilon", 0.0, True), ("epsilon_high", 0.0, True),
                                          ("delta", 0.0, True), ("num_iterations", 1, False),
                                          ("top_entropy_quantile", 0.0, False), ("top_p", 0.0, True),
                                          ("sapo_temperature_pos", 0.0, True), ("sapo_temperature_neg", 0.0, True),
                                          ("vespo_lambda_pos", 0.0, True), ("vespo_lambda_neg", 0.0, True),
                                          ("vespo_k_pos", 0.0, False), ("vespo_k_neg", 0.0, False),
                                          ("off_policy_mask_threshold", 0.0, False)))
    if config.top_entropy_quantile > 1:
        raise UserError(f"recipe key 'grpo.top_entropy_quantile' must be at most 1, got {config.top_entropy_quantile}")
    if config.sync_ref_model:  # TRL's trainer refuses it with a PEFT model, in a traceback once the stage has begun
        raise UserError("recipe key 'grpo.sync_ref_model' must be false: GRPO trains a LoRA adapter here, and TRL then "
                        "keeps no reference model to sync (it scores the reference with the adapter turned off)")
    from transformers import generation

    # The rollouts always sample; each setting goes to the logits processor transformers' `generate` builds from it,
    # which checks it only then (a temperature of 0, top_k below 0, a penalty of 0).
    warpers = {"temperature": (generation.TemperatureLogitsWarper, 1.0), "top_k": (generation.TopKLogitsWarper, 0),
               "top_p": (generation.TopPLogitsWarper, 1.0), "min_p": (generation.MinPLogitsWarper, None),
               "repetition_penalty": (generation.RepetitionPenaltyLogitsProcessor, 1.0)}
    for key, (warper, off) in warpers.items():
        value = getattr(config, key)
        if value is not None and value != off:
            try:
                warper(value)
            except ValueError as error:
                raise UserError(f"recipe key 'grpo.{key}': {one_line(error)}") from None


def check_switches(section: str, config: Any) -> None:
    """TrainingArguments' switches that TRL or transformers refuse only once the trainer is built or training has
    begun (in a pipeline: after SFT), each in a traceback: checked where this machine or the stage decides them."""
    from transformers.utils import is_liger_kernel_available

    key = f"recipe key '{section}."
    saving = getattr(config.save_strategy, "value", config.save_strategy)  # an enum in TrainingArguments
    if saving == "no" or (saving == "best" and config.eval_strategy == "no"):
        why = "writes no checkpoints" if saving == "no" else "saves only at its evaluations, and runs none"
        warning = (f"{section}.save_strategy is {saving}: the stage {why}, so a run that is killed starts again from "
                   "its first step with --resume (a SIGTERM or Ctrl-C still saves the step it stops at)")
        if warning not in _said:
            _said.add(warning)
            log.warning(warning)
    if config.use_liger_kernel and not is_liger_kernel_available():
        raise UserError(f"{key}use_liger_kernel' needs liger-kernel, which is not installed: pip install "
                        "liger-kernel, or set it false")
    if config.dataloader_persistent_workers and config.dataloader_num_workers < 1:
        raise UserError(f"{key}dataloader_persistent_workers' needs {section}.dataloader_num_workers above 0 "
                        "(torch's DataLoader refuses it)")
    if config.eval_on_start and section == "grpo":  # the trainer is given no eval dataset
        raise UserError("recipe key 'grpo.eval_on_start' must be false: GRPO's held-out checks (eval.every_steps) "
                        "run in a callback, not as the trainer's evaluations, so the trainer has nothing to evaluate")
    if config.eval_on_start and config.eval_strategy == "no":
        raise UserError("recipe key 'sft.eval_on_start' needs SFT's held-out checks (sft.eval_strategy: steps); set "
                        "that, or set it false")
    if getattr(config, "assistant_only_loss", False):  # TRL needs conversations; SFT's rows are prompt + completion
        raise UserError("recipe key 'sft.assistant_only_loss' must be false: SFT's rows are a prompt and a completion, "
                        "and the loss is on the completion alone already (sft.completion_only_loss)")
    if getattr(config, "activation_offloading", False) and not placement.has_cuda():
        raise UserError("recipe key 'sft.activation_offloading' needs a CUDA GPU (it moves activations to the "
                        "host's memory); set it false here")
    if config.push_to_hub:  # the trainer creates the Hub repository when it is built, and pushes at every save
        from huggingface_hub import constants, get_token

        hub.before_loading(f"{section}.push_to_hub")
        if constants.HF_HUB_OFFLINE or not get_token():
            why = ("the Hub is not reachable from this machine" if constants.HF_HUB_OFFLINE
                   else "no Hugging Face token is set (hf auth login, or HF_TOKEN)")
            raise UserError(f"{key}push_to_hub' needs the Hugging Face Hub, and {why}; set it false (the stage "
                            "saves its outputs in the run folder either way)")


def check_report_to(section: str, config: Any) -> None:
    """Each `report_to` backend must be installed (transformers would fail later with a traceback).

    Nothing logs in here: wandb or trackio start only when training starts,
    with credentials from their own environment variables.
    """
    import importlib.util

    for backend in config.report_to or []:
        module = {"tensorboard": "tensorboard"}.get(backend, backend)
        if backend not in ("none", "all") and importlib.util.find_spec(module) is None:
            raise UserError(f"recipe key '{section}.report_to' names {backend!r}, which is not installed; "
                            f"pip install {backend}, or use tensorboard (the default)")
