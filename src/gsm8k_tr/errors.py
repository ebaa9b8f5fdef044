"""The one exception type that means "the user can fix this", and the one line an error becomes in it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class UserError(Exception):
    """A mistake in input, recipe or paths: the CLI prints it as one line and exits non-zero.

    Messages name the file, row, key or value at fault and say how to fix it.
    """


class Stopped(Exception):
    """Training stopped on a signal, its checkpoint saved: the CLI prints the line and exits with `code` (128 + the
    signal's number, as a shell reports a process the signal ended)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def one_line(error: BaseException) -> str:
    """An exception's first non-empty line (its type's name when it has no text), for a one-line UserError."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a device running out of memory: torch's OutOfMemoryError on CUDA, or the RuntimeError
    that MPS and XPU raise with the same words."""
    try:
        from torch import OutOfMemoryError
    except ImportError:
        return False
    return isinstance(error, OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def compiler_failure(error: BaseException) -> str | None:
    """The line that says why, where `error` is torch's compiler failing on this machine (a `TorchDynamoException`:
    an Inductor lowering, a Triton kernel the card cannot build, no C++ compiler), else None."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:
        return None
    if not isinstance(error, TorchDynamoException):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # dynamo's own first line ("backend='inductor' raised:") names no cause
    return next((line for line in lines if not line.endswith("raised:")), type(error).__name__)


def did_you_mean(name: str, options: Iterable[Any], prefix: str = "") -> str:
    """" (did you mean 'PREFIXoption'?)" for the option closest to a mistyped `name` ("learning_rat": "learning_rate"),
    else "": difflib's close match, at its default cutoff of 0.6.

    >>> did_you_mean("lossy_type", ["loss_type", "beta"], "grpo."), did_you_mean("rank", ["r", "alpha"])
    (" (did you mean 'grpo.loss_type'?)", '')
    """
    from difflib import get_close_matches

    close = get_close_matches(name, [str(option) for option in options], n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
