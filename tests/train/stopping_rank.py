"""`python -m gsm8k_tr` under `accelerate launch`, with rank 0 failing part-way through an evaluation only once rank 1
has answered more batches than it: a launch killed with its processes' journals at different lengths
(`test_distributed.py`). Rank 0 fails at its decoding call number STOP_AT (from 0), after the file WAIT_FOR holds
ANSWERED batches after its key (or 120 s)."""

import os
import runpy
import time
from pathlib import Path


def main() -> None:
    if os.environ.get("RANK") == "0":
        from gsm8k_tr.infer import generation

        decode, calls = generation._decode, []

        def failing(*args, **kwargs):
            if len(calls) == int(os.environ["STOP_AT"]):
                waited, wait_for = time.monotonic(), Path(os.environ["WAIT_FOR"])
                while time.monotonic() - waited < 120 and not (
                        wait_for.exists() and len(wait_for.read_text().splitlines()) > int(os.environ["ANSWERED"])):
                    time.sleep(0.1)
                raise RuntimeError("stopped")
            calls.append(1)
            return decode(*args, **kwargs)

        generation._decode = failing
    runpy.run_module("gsm8k_tr", run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # pytest's doctest collection imports this file too
    main()
