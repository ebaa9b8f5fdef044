"""TRL's SFTConfig and GRPOConfig built from a recipe section, checked key by key against TRL itself."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from gsm8k_tr.config import coerce
from gsm8k_tr.errors import UserError, one_line

# Batch sizes, lengths and step counts below 1 (max_steps may be -1: train by epochs). TRL accepts some zeros and
# fails later, and divides by others before saying anything, so they are checked before the config is built.
AT_LEAST_ONE = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                "max_completion_length", "logging_steps", "save_steps", "max_steps")
# TRL options that hold credentials → the environment variable to use instead.
SECRET_KEYS = {"hub_token": "HF_TOKEN"}
# Deprecated TrainingArguments names: a recipe that sets the old one overrides our default for the new one.
ALIASES = {"gradient_checkpointing": "activation_checkpointing",
           "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def _field_types(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # a library annotation we cannot resolve: check names only
        return {}


def trl_config(config_cls: type, section: str, values: dict[str, Any], defaults: dict[str, Any],
               forced: dict[str, tuple[Any, str]]) -> Any:
    """Build TRL's `config_cls` from recipe `values` over our `defaults`.

    Keys must be fields of the TRL class; `forced` keys are set by gsm8k-tr
    (value, why) and may not appear in the recipe.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    hints = _field_types(config_cls)
    values = dict(values)
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown recipe key '{section}.{key}': not an option of TRL's {config_cls.__name__}")
        if key in forced:
            raise UserError(f"recipe key '{section}.{key}' is set by gsm8k-tr ({forced[key][1]}); remove it")
        if key in SECRET_KEYS and value:
            raise UserError(f"recipe key '{section}.{key}' is a secret, and recipes are saved with every output; "
                            f"remove it and set {SECRET_KEYS[key]} in the environment instead")
        if key in AT_LEAST_ONE and isinstance(value, (int, float)) and value < 1 and (key, value) != ("max_steps", -1):
            raise UserError(f"recipe key '{section}.{key}' must be at least 1, got {value}")
        if key in hints and value is not None:
            try:
                checked = coerce(value, hints[key], f"{section}.{key}")
            except TypeError:  # Literal and other annotations isinstance cannot check
                continue
            if isinstance(value, str) and not isinstance(checked, str):
                values[key] = checked  # `5e-5` read as a string by YAML
    defaults = {k: v for k, v in defaults.items() if not any(ALIASES.get(u) == k for u in values)}
    # Pinned host memory only speeds copies to a GPU; without one, torch's DataLoader warns at every stage.
    import torch

    defaults.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    kwargs = {**defaults, **values, **{k: v for k, (v, _) in forced.items()}}
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise UserError(f"recipe section '{section}': {one_line(error)}") from None


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
