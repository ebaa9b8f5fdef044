"""How often a finished rank of a CPU launch dies at exit: the process group left to the interpreter, destroyed, closed.

    python benchmarks/process_exit.py                          # 2 CPU cores: about 25 minutes
    python benchmarks/process_exit.py --launches 20 --processes 2

Each launch is `accelerate launch` with the shipped DDP config (gloo on CPU),
whose processes join the project's process state, import torch._dynamo (as
transformers' `from_pretrained` does), gather one object from each other (as
an evaluation's shares are gathered), wait for each other and return. Left
to the interpreter's exit, gloo's worker threads are torn down during its
finalisation, and a rank that had finished its work now and then aborts
there ("terminate called without an active exception", SIGABRT): torchrun
then reports the whole launch failed. Three ways:

- left to exit: as the CLI did until 2026-12-05;
- destroyed: `destroy_process_group` alone, which cannot free the group:
  `torch.distributed.nn.functional`, imported with dynamo after the group
  exists, holds it as ten functions' default argument;
- closed: the CLI's way (`processes.before_process_group` before the group
  exists, `processes.close_processes` when the command returns).

The ways take turns launch by launch. Printed: the failed launches of each
way, and the one-sided Fisher exact p-value that a way fails no more often
than leaving the group to the exit by chance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DDP = ROOT / "recipes" / "accelerate" / "ddp.yaml"
CRASH = "terminate called"


WAYS = ("left to exit", "destroyed", "closed")


def child() -> None:
    """One launched process, the way named by WAY."""
    import torch.distributed

    from gsm8k_tr.processes import before_process_group, close_processes, each_process, process_state

    way = os.environ["WAY"]
    if way == "closed":
        before_process_group()
    state = process_state()
    import torch._dynamo  # noqa: F401  (transformers' from_pretrained imports it)

    assert len(each_process(state.process_index)) == state.num_processes
    state.wait_for_everyone()
    if way == "destroyed":
        torch.distributed.destroy_process_group()
    elif way == "closed":
        close_processes()
    tasks = Path("/proc/self/task")  # Linux: each thread's name; gloo's are pt_gloo_runloop and gloo_tcp_loop
    if tasks.exists():
        names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
        print(f"gloo threads before the exit: {sum('gloo' in name for name in names)}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, way: str) -> tuple[bool, bool, str, int]:
    """Whether one launch failed, whether a rank aborted so, the end of what it printed, and the most gloo threads a
    rank still ran when it reached its exit (-1 where the system does not show them)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_processes",
               str(processes), "--main_process_port", str(_free_port()), __file__, "--child"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "WAY": way})
    said = done.stdout + done.stderr
    threads = [int(n) for n in re.findall(r"gloo threads before the exit: (\d+)", said)]
    return done.returncode != 0 or CRASH in said, CRASH in said, said[-2000:], max(threads, default=-1)


def fisher_one_sided(failed_a: int, failed_b: int, n: int) -> float:
    """P(way B fails at most `failed_b` times of n | both ways' failures together), as if neither way mattered."""
    total = failed_a + failed_b

    def p(k: int) -> float:
        return math.comb(n, k) * math.comb(n, total - k) / math.comb(2 * n, total)

    return sum(p(k) for k in range(max(0, total - n), failed_b + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=40, help="launches of each way (default 40)")
    parser.add_argument("--processes", type=int, default=5, help="processes a launch (default 5: more ranks, "
                        "more often; 2 failed 2 launches in 100)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    failed, threads = dict.fromkeys(WAYS, 0), dict.fromkeys(WAYS, -1)
    other = ""
    for number in range(args.launches):
        for way in WAYS:
            bad, aborted, said, left_running = launch(args.processes, way)
            failed[way] += bad
            threads[way] = max(threads[way], left_running)
            if bad and not aborted:  # some other failure: shown, as it is not what this counts
                other = said
        print(f"launch {number + 1}: {json.dumps(failed)}", flush=True)
    if other:
        print(f"a launch failed otherwise; the end of its output:\n{other}")
    print(f"most gloo threads a rank still ran at its exit: {json.dumps(threads)}")
    left = failed["left to exit"]
    against = "; ".join(f"{way} {failed[way]} (p = {fisher_one_sided(left, failed[way], args.launches):.2g})"
                        for way in WAYS[1:])
    print(f"{args.processes} processes a launch, {args.launches} launches each way: left to exit {left} failed, "
          f"{against}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
