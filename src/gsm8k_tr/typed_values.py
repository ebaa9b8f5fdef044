"""A recipe value checked against its key's annotation, as YAML and the command line write it: ints widen to floats,
`5e-5` (a string to YAML 1.1) is a float, `no` (false to YAML 1.1) is TrainingArguments' "no"; anything else that
does not match is one line naming the key. Recipes' own sections and TRL's configs are checked alike."""

from __future__ import annotations

import enum
import math
import types
import typing
from typing import Any

from gsm8k_tr.errors import UserError


def type_name(tp: Any) -> str:
    """An annotation as a recipe's reader knows it: `int`, `float | None`."""
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints widen to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except UserError as error:
                errors.append(error)
        raise errors[0]
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"recipe key {key!r} must be a list, got {value!r}")
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise UserError(f"recipe key {key!r} must be a mapping, got {value!r}")
        return {coerce(k, key_tp, key): coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `5e-5` (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        # YAML's .nan and .inf: no setting here means anything by them (a NaN learning rate trains NaN weights)
        raise UserError(f"recipe key {key!r} must be a finite number, got {value}")
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `run=2024` on the command line reads as a number
    if value is False and isinstance(tp, type) and issubclass(tp, enum.Enum) and "no" in {m.value for m in tp}:
        return tp("no")  # YAML 1.1 reads `eval_strategy: no` as false; TrainingArguments' strategies spell off "no"
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        got = "null" if value is None else f"{value!r} ({type(value).__name__})"  # YAML's word, and the CLI's
        # `prompt.template=Soru: {question}` reads as a mapping, `[x]` as a list: text with YAML's marks needs quotes
        quote = "; YAML read the text as structure: put it in quotes" if tp is str and isinstance(value, (dict, list)) \
            else ""
        raise UserError(f"recipe key {key!r} must be {type_name(tp)}, got {got}{quote}")
    return value
