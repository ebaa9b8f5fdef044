"""How often a rank of a CPU launch that has done its work dies at exit: the process group left to the interpreter,
destroyed, or closed as the CLI closes it.

    python benchmarks/process_exit.py                          # 2 CPU cores: about 23 minutes
    python benchmarks/process_exit.py --launches 10 --processes 2

Each launch runs the CLI's `evaluate` (9 questions of the tiny recipe's
prepared data, 2 samples each, the tiny builtin model) under `accelerate
launch` with the shipped DDP config: gloo on CPU, as
`tests/train/test_distributed.py` runs it. Left to the interpreter's exit,
the process group's gloo threads are torn down during its finalisation,
where now and then they abort a rank ("terminate called without an active
exception", SIGABRT), and torchrun reports the whole launch failed. Three
ways, set in each launched process before the command runs:

- left to exit: as the CLI did until 2026-12-05;
- destroyed: `destroy_process_group` when the command returns, and nothing
  more. It cannot free the group: `torch.distributed.nn.functional`,
  imported with torch._dynamo while `from_pretrained` loads the model,
  holds it as ten functions' default argument;
- closed: the CLI's own way (`processes.before_process_group` before the
  group exists, `processes.close_processes` when the command returns).

The ways take turns launch by launch. Printed: the most gloo threads a rank
still ran when it reached its exit (Linux), the failed launches of each
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
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DDP = ROOT / "recipes" / "accelerate" / "ddp.yaml"
CRASH = "terminate called"
WAYS = ("left to exit", "destroyed", "closed")
RECIPE = ROOT / "recipes" / "tiny.yaml"


def child(command: list[str]) -> None:
    """One launched process: the CLI's `command`, the way named by WAY, then the gloo threads it still runs."""
    import torch.distributed

    from gsm8k_tr import cli, processes

    way = os.environ["WAY"]
    if way != "closed":
        processes.before_process_group = lambda: None
        processes.close_processes = torch.distributed.destroy_process_group if way == "destroyed" else lambda: None
    try:
        code = cli.main(command)
    finally:
        tasks = Path("/proc/self/task")  # Linux: each thread's name; gloo's are pt_gloo_runloop and gloo_tcp_loop
        if tasks.exists():
            names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
            print(f"gloo threads before the exit: {sum('gloo' in name for name in names)}", flush=True)
    sys.exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, way: str, command: list[str]) -> tuple[bool, bool, str, int]:
    """Whether one launch failed, whether a rank aborted so, the end of what it printed, and the most gloo threads a
    rank still ran when it reached its exit (-1 where the system does not show them)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_processes",
                str(processes), "--main_process_port", str(_free_port()), __file__, "--child", *command]
    done = subprocess.run(launcher, capture_output=True, text=True, timeout=600, cwd=ROOT,
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
    parser.add_argument("--launches", type=int, default=30, help="launches of each way (default 30)")
    parser.add_argument("--processes", type=int, default=5, help="processes a launch (default 5: more ranks abort "
                        "more often)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        prepared = subprocess.run([sys.executable, "-m", "gsm8k_tr", "prepare", "--config", str(RECIPE),
                                   f"output_dir={run}"], capture_output=True, text=True, cwd=ROOT)
        if prepared.returncode != 0:
            print(f"prepare failed:\n{prepared.stderr[-2000:]}")
            return 1
        command = ["evaluate", "--config", str(RECIPE), f"output_dir={run}", "--model", "builtin:tiny-gpt2",
                   "--limit", "9", "--samples", "2", "eval.batch_size=2", "eval.max_new_tokens=16", "--output",
                   str(Path(folder) / "eval"), "--overwrite"]
        return _compare(args.launches, args.processes, command)


def _compare(launches: int, processes: int, command: list[str]) -> int:
    failed, threads = dict.fromkeys(WAYS, 0), dict.fromkeys(WAYS, -1)
    other = ""
    for number in range(launches):
        for way in WAYS:
            bad, aborted, said, left_running = launch(processes, way, command)
            failed[way] += bad
            threads[way] = max(threads[way], left_running)
            if bad and not aborted:  # some other failure: shown, as it is not what this counts
                other = said
        print(f"launch {number + 1}: {json.dumps(failed)}", flush=True)
    if other:
        print(f"a launch failed otherwise; the end of its output:\n{other}")
    print(f"most gloo threads a rank still ran at its exit: {json.dumps(threads)}")
    left = failed["left to exit"]
    against = "; ".join(f"{way} {failed[way]} (p = {fisher_one_sided(left, failed[way], launches):.2g})"
                        for way in WAYS[1:])
    print(f"{processes} processes a launch, {launches} launches each way: left to exit {left} failed, {against}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
