"""Two CPU processes (gloo) through `accelerate launch` with the shipped DDP config: both train, one saves."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE

DDP = ROOT / "recipes" / "accelerate" / "ddp.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP),
               "--num_processes", "2", "--main_process_port", str(_free_port()), "-m", "gsm8k_tr", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_sft_and_grpo_on_two_processes(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    common = ("--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=6", "sft.save_steps=3",
              "sft.logging_steps=3", "grpo.max_steps=2", "grpo.save_steps=1", "eval.every_steps=1")
    for stage in ("sft", "grpo"):
        done = _launch(stage, *common)
        assert done.returncode == 0, done.stderr[-3000:]
        log = done.stderr
        # Both ranks took part and finished at the same step; only the main process saved.
        for rank in (0, 1):
            assert f"process {rank} of 2" in log, log[-2000:]
            assert f"process {rank} of 2 finished {stage}" in log
        assert log.count(f"saved {stage} outputs") == 1
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["processes"] == 2
        assert (run / stage / "merged" / "model.safetensors").is_file()
        assert not list((run / stage).rglob(".*tmp*")) and not (run / stage / "checkpoints" / ".saving").exists()
    history = json.loads((run / "grpo" / "log_history.json").read_text())
    assert [e["step"] for e in history if "reward" in e] == [1, 2]
    assert any("eval/accuracy" in e for e in history)  # the held-out check ran on rank 0 without hanging rank 1
    sft_history = json.loads((run / "sft" / "log_history.json").read_text())
    assert sft_history[-1]["step"] == 6
