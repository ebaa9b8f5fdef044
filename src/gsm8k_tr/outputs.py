"""Output folders: written so that nothing is half-written or silently replaced, and read back with one line
naming a damaged file."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError, one_line


def check_writable(output: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty output unless overwriting was asked for."""
    if output.exists() and not output.is_dir():
        raise UserError(f"output {str(output)!r} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"output folder {str(output)!r} already has files; pass --overwrite to replace them or choose another folder")


@contextmanager
def atomic_directory(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `output` only on success.

    A crash leaves the old output untouched and at most a `.tmp-*` folder,
    which the next write to `output` clears.
    """
    output = Path(output)
    check_writable(output, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # Left by a writer that was killed: never the output itself, so safe to clear.
        for stale in [*output.parent.glob(f".{output.name}.tmp-*"), *output.parent.glob(f".{output.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    except OSError as error:
        raise UserError(f"cannot write to {str(output.parent)!r}: {error.strerror}") from None
    try:
        yield tmp
        if output.exists():
            old = output.with_name(f".{output.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file the project wrote; a damaged one (cut short, edited by hand) is one line naming it and `remedy`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # json's errors are ValueErrors
        raise UserError(f"{path}: not valid JSON ({one_line(error)[:120]}); {remedy}") from None
