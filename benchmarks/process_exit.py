"""How often a finished rank of a CPU launch dies at exit: the process group left to the interpreter, against closed.

    python benchmarks/process_exit.py                          # 2 CPU cores: about 12 minutes
    python benchmarks/process_exit.py --launches 20 --processes 2

Each launch is `accelerate launch` with the shipped DDP config (gloo on CPU),
whose processes join the project's process state, gather one object from
each other (as an evaluation's shares are gathered), wait for each other
and return. Left to the interpreter's exit, gloo's worker threads are torn
down during its finalisation, and a rank that had finished its work now and
then aborts there ("terminate called without an active exception", SIGABRT):
torchrun then reports the whole launch failed. `processes.close_processes`,
which the CLI calls when a command returns, destroys the group first.

The two ways alternate launch by launch. Printed: the failed launches of
each way, as counts, and the one-sided Fisher exact p-value that closing
fails no more often than leaving it by chance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DDP = ROOT / "recipes" / "accelerate" / "ddp.yaml"
CRASH = "terminate called"


def child() -> None:
    """One launched process: join, gather, wait, and close the group or leave it (CLOSE=1 or 0)."""
    from gsm8k_tr.processes import close_processes, each_process, process_state

    state = process_state()
    assert len(each_process(state.process_index)) == state.num_processes
    state.wait_for_everyone()
    if os.environ["CLOSE"] == "1":
        close_processes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, close: bool) -> tuple[bool, bool, str]:
    """Whether one launch failed, whether a rank aborted so, and the end of what it printed."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_processes",
               str(processes), "--main_process_port", str(_free_port()), __file__, "--child"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "CLOSE": "1" if close else "0"})
    said = done.stdout + done.stderr
    return done.returncode != 0 or CRASH in said, CRASH in said, said[-2000:]


def fisher_one_sided(failed_a: int, failed_b: int, n: int) -> float:
    """P(way B fails at most `failed_b` times of n | both ways' failures together), as if neither way mattered."""
    total = failed_a + failed_b

    def p(k: int) -> float:
        return math.comb(n, k) * math.comb(n, total - k) / math.comb(2 * n, total)

    return sum(p(k) for k in range(max(0, total - n), failed_b + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=60, help="launches of each way (default 60)")
    parser.add_argument("--processes", type=int, default=5, help="processes a launch (default 5: more ranks, "
                        "more often; 2 failed 2 launches in 100)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    failed = {"left to exit": 0, "closed": 0}
    other = ""
    for number in range(args.launches):
        for way in failed:
            bad, aborted, said = launch(args.processes, way == "closed")
            failed[way] += bad
            if bad and not aborted:  # some other failure: shown, as it is not what this counts
                other = said
        print(f"launch {number + 1}: {json.dumps(failed)}", flush=True)
    if other:
        print(f"a launch failed otherwise; the end of its output:\n{other}")
    p = fisher_one_sided(failed["left to exit"], failed["closed"], args.launches)
    print(f"{args.processes} processes a launch, {args.launches} launches each way: left to exit "
          f"{failed['left to exit']} failed, closed {failed['closed']}; one-sided Fisher p = {p:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
