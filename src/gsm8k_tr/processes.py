"""Processes and devices under `accelerate launch`: the shared process state, how training is split across the
processes, and one-line errors for bad launches."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)
_said: dict[str, bool] = {}  # what this process has logged once


def cpu_processes_without_gpus() -> None:
    """Tell accelerate that a multi-process launch on a machine without GPUs runs on CPU (gloo).

    Otherwise accelerate treats the processes as unrelated: each would think
    it is the main process and write the same files. It must run before
    anything creates accelerate's shared state (importing TRL does), so the
    CLI calls it first.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"


def process_state() -> Any:
    """accelerate's shared process state."""
    from accelerate import PartialState

    cpu_processes_without_gpus()
    return PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))


def check_devices(state: Any) -> None:
    """A launch that cannot work, or would not get what its accelerate config asked for, fails with one line.

    - More processes per machine than GPUs: rank k > GPUs would die deep in
      CUDA with "invalid device ordinal" while the others hang waiting for it.
    - FSDP or DeepSpeed without CUDA GPUs: accelerate quietly runs plain
      data-parallel CPU processes instead, unsharded.
    - `accelerate launch --cpu`: accelerate's simple launcher starts one
      plain process, whatever `--num_processes` and the config say.

    The type compared is the one the Accelerator will train with
    (`placement.accelerate_kind`), not PartialState's: PartialState says
    MULTI_GPU under every FSDP launch on GPUs.
    """
    import torch

    from gsm8k_tr.placement import accelerate_kind, requested_kind

    partial = str(state.distributed_type).rsplit(".", 1)[-1]
    kind = accelerate_kind(partial, cpu=state.device.type == "cpu")
    wanted = requested_kind()
    if wanted and kind != wanted:
        raise UserError(f"the accelerate config asks for {wanted}, which accelerate runs only on CUDA GPUs; this "
                        f"launch would train unsharded ({kind}, {state.num_processes} process(es)). On CPU, launch "
                        "recipes/accelerate/ddp.yaml for several processes")
    asked = launcher_request()
    if asked is not None and state.num_processes == 1 and (asked["processes"] > 1 or asked["kind"] != "NO"):
        raise UserError(f"accelerate launch --cpu started 1 unsharded process, but the launch asked for "
                        f"{asked['processes']} process(es) ({asked['kind']}): its --cpu always starts one plain "
                        "process. For several CPU processes, launch recipes/accelerate/ddp.yaml without --cpu")
    if kind in ("MULTI_GPU", "DEEPSPEED", "FSDP") and state.num_processes > 1 and state.device.type != "cpu":
        gpus = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        if local > gpus:
            raise UserError(f"accelerate started {local} processes on this machine but it has {gpus} GPU(s); "
                            f"launch with --num_processes {gpus}, or run without accelerate launch on one GPU")
    if state.num_processes > 1 and not _said.get("launch"):  # once: the pipeline and each stage check again
        _said["launch"] = True
        log.info("process %d of %d (%s) on %s", state.process_index, state.num_processes, kind, state.device)


def sharding(accelerator: Any) -> str | None:
    """How a trainer's Accelerator splits training across its processes: FSDP, DEEPSPEED (ZeRO stage 0-2: the
    optimizer's state and gradients), DEEPSPEED_ZERO3 (the weights too), or None (each process holds everything)."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP":
        return "FSDP"
    if kind == "DEEPSPEED":
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        return "DEEPSPEED_ZERO3" if getattr(plugin, "zero_stage", 0) == 3 else "DEEPSPEED"
    return None


def before_process_group() -> None:
    """Under a launch, import what would hold the process group as a default argument, before the group exists.

    The collectives of `torch.distributed.nn.functional` take `group=group.WORLD`
    as a default, which Python evaluates at import. Imported after the group
    is made (torch._dynamo imports it, and transformers' `from_pretrained`
    imports dynamo), ten functions hold the group for good: destroying it
    cannot free it, and gloo's threads are still torn down in the
    interpreter's exit (`close_processes`). Imported first, they hold None,
    which those functions read as the default group.
    """
    if is_distributed():
        import torch.distributed.nn.functional  # noqa: F401


def close_processes() -> None:
    """Leave the launch's process group once the command is done, as PyTorch asks each process to before it exits.

    Left to the interpreter's exit, gloo's threads are torn down during its
    finalisation, where now and then they abort a process that had finished
    its work ("terminate called without an active exception", SIGABRT), and
    torchrun calls the whole launch failed (pytorch/pytorch#190489). The
    group is destroyed, then freed with its threads here: nothing else may
    hold it (`before_process_group`), and the trainers' reference cycles are
    collected. `benchmarks/process_exit.py` counts the launches that abort.
    Nothing to do where no group was made (torch not even imported).
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        from accelerate import PartialState

        PartialState().destroy_process_group()  # accelerate's: skipped under its notebook launcher's fork
        # The trainers' objects, which hold the group, are left in reference cycles: freed now, while the interpreter
        # is whole, the group's last reference goes and gloo's threads are joined here, not in the exit.
        gc.collect()


def launcher_request() -> dict[str, Any] | None:
    """What `accelerate launch --cpu` was asked for: processes and distributed type; None when not launched so.

    Only that launch loses the request on its way (it starts one process and
    passes none of the config on), so it is read from the launcher's own
    command line, where the system shows it (Linux); elsewhere, None.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true") or "WORLD_SIZE" in os.environ:
        return None
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    args = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    # `accelerate launch …`, `python -m accelerate.commands.launch …`
    if not any(part == "launch" or part.endswith("accelerate.commands.launch") for part in args) or \
            not any("accelerate" in part for part in args):
        return None

    def option(name: str) -> str | None:
        for i, part in enumerate(args):
            if part == name and i + 1 < len(args):
                return args[i + 1]
            if part.startswith(name + "="):
                return part.split("=", 1)[1]
        return None

    config: dict[str, Any] = {}
    if (path := option("--config_file")) is not None:
        import yaml

        try:
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            config = {}
    processes = option("--num_processes") or config.get("num_processes") or 1
    kind = str(config.get("distributed_type") or "NO").upper()
    try:
        return {"processes": int(processes), "kind": kind}
    except ValueError:
        return None


def is_distributed() -> bool:
    """Whether this process is one of several started by `accelerate launch` (or torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def speaks() -> bool:
    """Whether this process prints a command's result: the only one, or a launch's main process (the one that writes
    it); a launch's other processes would print it once each."""
    return not is_distributed() or process_state().is_main_process


def share_size(items: int) -> int:
    """How many items `split_and_gather` gives each process (its shares are padded to one length)."""
    processes = process_state().num_processes if is_distributed() else 1
    return -(-items // processes)


def split_and_gather(items: list[Any], work: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """Run `work` on this process's share of `items`; every process gets all results, in the items' order.

    Shares are padded to equal length (the last item repeats), so processes
    that must step together, such as generation on a sharded model, run the
    same number of batches. One process: `work(items)`.
    """
    if not is_distributed():
        return work(items)
    from accelerate.utils import gather_object

    state = process_state()
    indexed = list(enumerate(items))
    with state.split_between_processes(indexed, apply_padding=True) as share:
        log.info("process %d of %d: %d of %d items", state.process_index, state.num_processes, len(share), len(items))
        results = work([item for _, item in share])
        pairs = [(index, result) for (index, _), result in zip(share, results)]
    found: dict[int, Any] = {}
    for index, result in gather_object(pairs):
        found.setdefault(index, result)
    return [found[index] for index in range(len(items))]


def each_process(value: Any) -> list[Any]:
    """Each process's `value`, in process order (every process calls it); in one process, `[value]`. For a choice
    that the processes must make alike, or a count over their shares."""
    if not is_distributed():
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])
