"""Output folders: written so that nothing is half-written, silently replaced or written by two runs at once, and
read back with one line naming a damaged file."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError, one_line

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are not guarded there
    fcntl = None

log = logging.getLogger(__name__)

_HELD: dict[tuple[int, int], int] = {}  # the run folders this process holds: (device, inode) -> how deep

NEARLY_FULL = 2**20  # bytes: with less free, a failed write is taken as the disk having filled up
NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # a full disk, or a full quota on it
AGAIN = "nothing half-written was kept: free some space, then run the same command again"


def blocking_file(path: Path) -> Path | None:
    """The file that keeps `path` from being a folder: `path` itself or one of its parents, else None."""
    return next((place for place in (path, *path.parents) if place.exists() and not place.is_dir()), None)


def check_writable(output: Path, overwrite: bool, example: str = "out") -> None:
    """Refuse an existing non-empty output unless overwriting was asked for, and one that holds the current folder:
    an output is written beside its place and renamed into it, which `.` or `..` cannot be (`example`: a name the
    line suggests instead)."""
    output = Path(output)
    try:
        here = [Path.cwd(), *Path.cwd().parents]
    except OSError:  # the current folder was deleted: a relative output fails below with its own line
        here = []
    if output.resolve() in here or not output.resolve().name:
        raise UserError(f"output {str(output)!r} is the current folder or holds it, and an output folder is replaced "
                        f"whole when written; give a folder for it to be, such as {str(output / example)!r}")
    file = blocking_file(output)
    if file == output:
        raise UserError(f"output {str(output)!r} exists and is not a folder")
    if file is not None:
        raise UserError(f"output {str(output)!r}: {str(file)!r} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"output folder {str(output)!r} already has files; pass --overwrite to replace them or choose another folder")


@contextmanager
def full_disk_reported(folder: Path, remedy: str = AGAIN) -> Iterator[None]:
    """Turn a write that failed because the disk holding `folder` filled up into one line ending in `remedy`
    (`filled_up`); a UserError raised inside, already one line, passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        full = filled_up(error, folder, remedy)
        if full is None:
            raise
        raise full from error


def filled_up(error: BaseException, folder: Path, remedy: str = AGAIN) -> UserError | None:
    """The one line for `error` where it is a write that failed because the disk holding `folder` filled up, else None.

    Not every writer says so: Python's files raise ENOSPC (EDQUOT over a
    quota), safetensors says "os error 28" and torch.save only "file write
    failed". So the disk is asked as well: a failed write with less than
    NEARLY_FULL left counts too.
    """
    said = (isinstance(error, OSError) and error.errno in NO_SPACE) or "No space left on device" in str(error) \
        or "os error 28" in str(error) or "Disk quota exceeded" in str(error)
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    a_write = (isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError") \
        and "out of memory" not in str(error)  # torch's OutOfMemoryError is a RuntimeError: told as it is (fitting)
    if not said and not (a_write and free is not None and free < NEARLY_FULL):
        return None
    left = f"{free / 2**20:.1f} MiB free at the failed write; " if free is not None else ""
    return UserError(f"the disk holding {folder} filled up while it was written to ({left}{one_line(error)[:120]}); "
                     f"{remedy}")


@contextmanager
def atomic_directory(output: Path, overwrite: bool, remedy: str = AGAIN) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `output` only on success.

    A crash leaves the old output untouched and at most a `.tmp-*` folder,
    which the next write to `output` clears. A disk that fills up while the
    folder is written is one line ending in `remedy`.
    """
    output = Path(output)
    check_writable(output, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # Left by a writer that was killed: never the output itself, so safe to clear. A writer still at work holds
        # a lock on its own temporary folder, and that folder stays.
        for stale in output.parent.glob(f".{output.name}.tmp-*"):
            with _held_by_nobody(stale) as free:
                if free:
                    shutil.rmtree(stale, ignore_errors=True)
        for stale in output.parent.glob(f".{output.name}.old-*"):  # only ever deleted, by whoever gets there
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        mine = _lock(tmp)
    except OSError as error:
        raise UserError(f"cannot write to {str(output.parent)!r}: {error.strerror}") from None
    try:
        with full_disk_reported(output.parent, remedy):
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
        if mine is not None:
            os.close(mine)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write, renamed to `path` on success and removed on failure, so readers
    never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through `atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file the project wrote; a damaged one (cut short, edited by hand) is one line naming it and `remedy`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # json's errors are ValueErrors
        raise UserError(f"{path}: not valid JSON ({one_line(error)[:120]}); {remedy}") from None


def read_object(path: Path, remedy: str, written: str = "a JSON object, as it was written") -> dict[str, Any]:
    """`read_json` of a file written as one JSON object: anything else (a list, a number, edited by hand) is one
    line too, not an AttributeError where a key is read. `written` says what the file should be."""
    value = read_json(path, remedy)
    if not isinstance(value, dict):
        raise UserError(f"{path}: not {written}; {remedy}")
    return value


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` for one run: another process that asks for it meanwhile stops with one line naming this one.

    Two runs writing one folder would save checkpoints beside each other's,
    and a second run's `--overwrite` would delete the first's under it. The
    lock is the folder's own (flock), so no file is left behind, and the OS
    frees it when its holder ends, killed or not: `--resume` after a kill
    finds it free. Re-entrant within a process (the pipeline holds the run
    folder while its stages ask for it again). Where the file system has no
    locks (some network mounts) the run goes on unguarded. The folders it had
    to make and the run left empty (a recipe error before any work) go again.
    """
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        file = blocking_file(folder)
        if file is not None:  # "File exists" or "Not a directory" named no file
            raise UserError(f"{file} exists and is not a folder; choose another output_dir") from None
        raise UserError(f"cannot write to {folder}: {error.strerror}; choose a writable output_dir") from None
    stat = folder.stat()
    key = (stat.st_dev, stat.st_ino)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        handle = _lock(folder)
    except BlockingIOError:
        raise UserError(f"{folder} is in use by another run{_holder(stat)}; wait for it to end or stop it, or choose "
                        "another output_dir") from None
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        for path in made:
            with suppress(OSError):  # not empty: the run wrote there
                path.rmdir()
        if handle is not None:
            os.close(handle)  # closing the descriptor releases the lock


def _lock(folder: Path) -> int | None:
    """An open descriptor of `folder` holding its exclusive lock, or None where locks are not to be had;
    BlockingIOError when another process holds it."""
    if fcntl is None:
        return None
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise
    except OSError as error:  # e.g. ENOLCK on a network mount
        os.close(handle)
        log.debug("no lock on %s (%s); going on without one", folder, error.strerror)
        return None
    return handle


@contextmanager
def _held_by_nobody(folder: Path) -> Iterator[bool]:
    """True (while holding its lock) when no live process holds `folder`; False when one does."""
    try:
        handle = _lock(folder)
    except OSError:  # held (BlockingIOError), gone already, or unreadable: nothing to take
        yield False
        return
    try:
        yield True
    finally:
        if handle is not None:
            os.close(handle)


def _holder(stat: os.stat_result) -> str:
    """' (process 123: gsm8k-tr sft --config r.yaml)' for the local process holding the folder `stat` describes, read
    from Linux's /proc/locks; '' elsewhere (another OS, or a holder on another machine of a shared file system)."""
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    with suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and "->" not in fields and len(fields) > 5 and fields[5] == where:
                pid = fields[4]
                with suppress(OSError):
                    words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                    return f" (process {pid}: {_command(words)})"
                return f" (process {pid})"
    return ""


def _command(words: list[str], limit: int = 160) -> str:
    """A process's command line as its user typed it: `gsm8k-tr sft ...`, not the interpreter's path before it."""
    words = [w for w in words if w] or ["?"]
    start = next((i for i, w in enumerate(words) if Path(w).name == "gsm8k-tr"
                  or (w == "gsm8k_tr" and i and words[i - 1] == "-m")), None)
    line = " ".join(["gsm8k-tr", *words[start + 1:]] if start is not None else [Path(words[0]).name, *words[1:]])
    return line if len(line) <= limit else line[: limit - 1] + "…"
