"""`python -m gsm8k_tr` under `accelerate launch`, printing how many of gloo's threads the process still runs once the
command has returned (Linux's /proc). They belong to the launch's process group: left running, they are torn down in
the interpreter's exit, where now and then they abort a process that had finished its work (`test_distributed.py`)."""

import os
import runpy
from pathlib import Path


def main() -> None:
    try:
        runpy.run_module("gsm8k_tr", run_name="__main__", alter_sys=True)
    finally:
        names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
        print(f"rank {os.environ.get('RANK')}: gloo threads at exit: {sum('gloo' in name for name in names)}",
              flush=True)


if __name__ == "__main__":  # pytest's doctest collection imports this file too
    main()
