"""Answers kept batch by batch while an evaluation runs, so that one stopped part-way answers only the rest.

An evaluation of GSM8K-TR's 1,319 test questions takes minutes on a GPU and far longer with several samples a
question or on a CPU; a notebook that disconnects, Ctrl-C or a killed job lost all of it. Each finished generation
batch is appended to `.<output>.answers.jsonl` beside the evaluation's folder, with the random number generators'
state after it. Run again with the same inputs, the evaluation takes those batches as answered, restores the
generators and answers the rest: the same batches in the same order from the same state, so the same tokens as a
run that was never stopped, sampled ones included (`tests/infer/test_answer_journal.py`).

The file's first line is the key: everything the answers depend on (the model's weights, the prompts as token ids,
the generation settings, device, dtype and versions). A file with another key is answered again from the start,
with a line naming what changed. A line cut short by the kill ends what is read. The file goes once the
evaluation's folder is written. One evaluation writes an output at a time: the file is locked while it runs.

Under `accelerate launch` each process keeps its own share's batches (`.<output>.answers.<rank>-of-<n>.jsonl`), and
the processes take the same number of them, the fewest any one kept: they generate in step (a sharded model's
`synced_gpus`), so one that answered a batch again while another took it from its file would leave the other
waiting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gsm8k_tr.config import changed_keys
from gsm8k_tr.errors import UserError, one_line
from gsm8k_tr.processes import each_process, is_distributed, process_state

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two evaluations into one output are not guarded there
    fcntl = None

log = logging.getLogger(__name__)

FORMAT = 1
CANNOT_KEEP = "%s: cannot keep answered batches (%s); a stopped evaluation will start again from the first"


def path_for(output: Path) -> Path:
    """The journal of an evaluation written to `output`: a hidden sibling file, outside the folder that is written
    whole at the end; under `accelerate launch`, this process's."""
    if is_distributed():
        state = process_state()
        return output.with_name(f".{output.name}.answers.{state.process_index}-of-{state.num_processes}.jsonl")
    return output.with_name(f".{output.name}.answers.jsonl")


def weights_digest(model: Any) -> str:
    """A digest of every parameter's and buffer's bytes, in order: equal exactly when the model answers alike
    (a stage trained again, another merge or another dtype all change it). About a second for 355M parameters on
    a CPU."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            flat = tensor.detach().contiguous().view(-1)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).cpu().numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:16]


def token_digest(tokenizer: Any, prompts: list[str]) -> str:
    """A digest of the prompts as the model reads them (token ids, in order)."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps(tokenizer(prompt, add_special_tokens=False)["input_ids"]).encode())
    return digest.hexdigest()[:16]


def _rng_state(device: Any) -> dict[str, str]:
    """The random number generators' state that sampling on `device` draws from, as text."""
    import torch

    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return {kind: base64.b64encode(state.numpy().tobytes()).decode() for kind, state in states.items()}


def _rng_tensors(states: dict[str, str], device: Any) -> dict[str, Any]:
    """The generators' states written by `_rng_state`, checked to be the size this device's take (ValueError or
    KeyError if not), so that setting them cannot fail after the processes agreed to."""
    import torch

    now = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        now["cuda"] = torch.cuda.get_rng_state(device)
    tensors = {kind: torch.frombuffer(bytearray(base64.b64decode(states[kind])), dtype=torch.uint8) for kind in now}
    if any(tensors[kind].numel() != now[kind].numel() for kind in now):
        raise ValueError("another generator")
    return tensors


def _set_rng_state(tensors: dict[str, Any], device: Any) -> None:
    import torch

    torch.set_rng_state(tensors["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)


class Journal:
    """The batches an earlier run of the same evaluation finished (`kept`), and the new ones as they finish
    (`add`)."""

    def __init__(self, path: Path, handle: Any, batches: list[dict[str, Any]], device: Any) -> None:
        self.path = path
        self._handle = handle
        self._batches = batches
        self._device = device
        self._added = 0  # prompts this run answered and kept

    @property
    def resumed_prompts(self) -> int:
        """The prompts whose answers come from an earlier run (fewer once a batch does not read as one)."""
        return sum(len(batch["prompts"]) for batch in self._batches)

    @property
    def answered(self) -> int:
        """The prompts whose answers the file holds."""
        return self.resumed_prompts + self._added

    def kept(self, number: int, prompts: list[int], count: int) -> list[Any] | None:
        """Batch `number`'s `count` completions (of prompt indices `prompts`) as an earlier run wrote them, the
        generators set to their state after it; None where it was not finished. A batch that does not read as one
        (the file edited) is answered again, with every batch after it: under `accelerate launch` by every process
        (their counts of kept batches agree, so all of them ask here, or none)."""
        from gsm8k_tr.infer.generation import Completion

        if number >= len(self._batches):
            return None
        batch = self._batches[number]
        try:
            if batch["prompts"] != prompts or len(batch["completions"]) != count:
                raise ValueError("another batch")
            found = [Completion(**completion) for completion in batch["completions"]]
            generators = _rng_tensors(batch["rng"], self._device)
            readable = 1
        except (TypeError, ValueError, KeyError, RuntimeError):
            readable = 0
        if not min(each_process(readable)):
            log.warning("%s: batch %d does not read as this evaluation's%s; answering it and the rest again",
                        self.path, number, "" if not readable else " in another process")
            del self._batches[number:]
            if self._handle is not None:
                self._handle.truncate(batch["offset"])
            return None
        _set_rng_state(generators, self._device)
        return found

    def add(self, number: int, prompts: list[int], found: list[Any]) -> None:
        """Keep batch `number` (prompt indices `prompts`, their completions `found`) on disk. A write that fails (a
        full disk, a generator state that cannot be read) ends the journal with a warning; the evaluation goes on."""
        if self._handle is None:
            return
        try:
            line = {"batch": number, "prompts": prompts, "completions": [asdict(c) for c in found],
                    "rng": _rng_state(self._device)}
            self._handle.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._added += len(prompts)
        except (OSError, RuntimeError) as error:
            log.warning(CANNOT_KEEP, self.path, one_line(error)[:120])
            self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None


def _read(path: Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The batches of `path` written under `key`, in order from the first, and the bytes they take: a line cut short
    or out of order ends them. No file, or another key: none (the change logged)."""
    if not path.is_file():
        return [], 0
    batches: list[dict[str, Any]] = []
    size = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle):
            try:
                line = json.loads(raw)
            except ValueError:
                break
            if number == 0:
                if not isinstance(line, dict) or line.get("key") != key:
                    saved = line.get("key") if isinstance(line, dict) else None
                    changes = "; ".join(changed_keys(saved, key)) if isinstance(saved, dict) else "no key"
                    log.warning("%s holds answers of an evaluation with other inputs (%s); answering every question "
                                "again", path, changes)
                    return [], 0
            elif not (isinstance(line, dict) and line.get("batch") == number - 1 and raw.endswith(b"\n")
                      and isinstance(line.get("prompts"), list) and isinstance(line.get("completions"), list)
                      and isinstance(line.get("rng"), dict)):
                break
            else:
                batches.append({**line, "offset": size})
            size += len(raw)
    return batches, size


def _lock(handle: Any) -> bool:
    """Take the journal's lock; False where another evaluation holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            pass  # a file system without locks: unguarded, as run folders are there
    return True


def _remove(path: Path, made: list[Path]) -> None:
    """Remove a journal and the folders made for it (deepest first; one that is not empty stays)."""
    path.unlink(missing_ok=True)
    for folder in made:
        with suppress(OSError):  # not empty: something else wrote there
            folder.rmdir()


@contextmanager
def kept_answers(output: Path | None, key: dict[str, Any], device: Any) -> Iterator[Journal | None]:
    """The journal of an evaluation written to `output` whose answers depend on `key`, held for the block; None for
    no output. It stays after the block: `finished` removes it once the evaluation's folder is written."""
    if output is None:
        yield None
        return
    path = path_for(output)
    key = {"format": FORMAT, **json.loads(json.dumps(key))}
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]  # deepest first
    handle, locked, batches, size = None, False, [], 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # appends go to the end, wherever a read left the position
    except OSError as error:
        log.warning(CANNOT_KEEP, path, error.strerror)
    if handle is not None:
        locked = not _lock(handle)
        if not locked:
            batches, size = _read(path, key)
    # Under a launch the processes agree: any one locked out stops them all, any one without a file keeps none, and
    # each takes the fewest kept batches of any (one process: its own).
    agreed = min(each_process(-2 if locked else -1 if handle is None else len(batches)))
    if agreed < 0:
        if handle is not None:
            handle.close()
            if not locked and not batches:
                _remove(path, made)  # opened for this run alone: nothing left behind
        if agreed == -2:
            raise UserError(f"another evaluation is writing {output} now; wait for it to end, or give another "
                            "--output")
        yield None
        return
    if agreed < len(batches):
        size = batches[agreed]["offset"]
        del batches[agreed:]
    journal = None
    try:
        handle.truncate(size if batches else 0)  # a key with no batch after it (killed before one) is written anew
        if not batches:
            handle.write((json.dumps({"key": key}, ensure_ascii=False) + "\n").encode())
            handle.flush()
        journal = Journal(path, handle, batches, device)
        if batches:
            log.info("%d of the questions were answered by an earlier run of this evaluation that stopped (%s); "
                     "answering the rest", journal.resumed_prompts, path)
        yield journal
    except BaseException:
        if journal is not None and journal.answered and journal._handle is not None:
            log.warning("the answers to %d questions are kept in %s: the same command answers only the rest",
                        journal.answered, path)
        raise
    finally:
        if journal is not None and not journal.answered:
            _remove(path, made)  # nothing kept (a failure before the first batch): nothing left behind
        if journal is not None:
            journal._close()
        else:
            handle.close()


def finished(output: Path | None) -> None:
    """Remove the journals of the evaluation written to `output`, once that is written: under `accelerate launch`
    the main process removes every process's (they closed theirs before the answers were gathered), and those that
    a launch with another number of processes left."""
    if output is None or not output.parent.is_dir():
        return
    prefix = f".{output.name}.answers."
    for path in output.parent.iterdir():
        if path.name.startswith(prefix) and path.name.endswith(".jsonl") and (
                path.name == prefix + "jsonl" or re.fullmatch(r"\d+-of-\d+\.jsonl", path.name[len(prefix):])):
            path.unlink(missing_ok=True)
