"""`python -m gsm8k_tr` under `accelerate launch`, with the timing of a loaded machine made certain. Rank 0 keeps its
write test in the stage folder for 6 s, as a process descheduled between writing and removing it would. Rank 1 joins
the launch, then looks at the stage folder only once that file is there (or after 10 s). Before the stage waited for
every process to look, rank 1 found the file and stopped with "already holds a sft run" (`test_distributed.py`)."""

import os
import runpy
import time
from pathlib import Path


def main() -> None:
    if os.environ.get("RANK") == "0":
        unlink = Path.unlink

        def held(path: Path, *args, **kwargs) -> None:
            if path.name == ".write-test":
                time.sleep(6)
            unlink(path, *args, **kwargs)

        Path.unlink = held
    elif os.environ.get("RANK") == "1":
        from gsm8k_tr.processes import process_state
        from gsm8k_tr.train import stage

        stage_dir = stage.stage_dir

        def late(recipe, name: str) -> Path:
            process_state()  # joined, as after any earlier barrier of the command
            folder, waited = stage_dir(recipe, name), time.monotonic()
            while not (folder / ".write-test").exists() and time.monotonic() - waited < 10:
                time.sleep(0.05)
            return folder

        stage.stage_dir = late
    runpy.run_module("gsm8k_tr", run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # pytest's doctest collection imports this file too
    main()
