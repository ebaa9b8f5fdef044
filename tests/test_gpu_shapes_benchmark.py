"""benchmarks/gpu_shapes.py: its comparisons run on the CPU with the tiny model, so that they work the first time
a GPU is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, load_benchmark


@pytest.mark.slow
def test_gpu_shapes_runs_its_comparisons_on_the_cpu(tmp_path: Path) -> None:
    # benchmarks/gpu_shapes.py's own code on the CPU, so it works the first time a GPU is there.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_shapes.py"), "--cpu", "--sft-steps", "2",
                           "--sequences", "4", "--new-tokens", "8", "--work", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "sft:" in done.stdout and "decode:" in done.stdout and "the same answers for 4/4" in done.stdout
    result = json.loads((tmp_path / "gpu_shapes.json").read_text())
    assert result["sft-64"]["longest_batch"]["tokens"] % 64 == 0  # the padded run's batches are whole multiples
    assert result["sft-none"]["tokens_per_s"] > 0 and result["sft-64-no-cudnn"]["tokens_per_s"] > 0
    assert result["sft-64"]["compiling_steps"] == []  # eager: its steady rate is its rate
    assert result["sft-64"]["tokens_per_s_without_compiling"] == result["sft-64"]["tokens_per_s"]
    assert "without cuDNN's attention" in done.stdout
    # the data was prepared once for the call, and every setting read it (each had aligned the real rows again)
    assert (tmp_path / "data" / "prepare_report.json").is_file()
    assert not any((tmp_path / setting / "data").exists() for setting in ("sft-none", "sft-64", "decode-torch"))


@pytest.mark.slow
def test_gpu_shapes_splits_the_same_sft_steps_into_micro_batches(tmp_path: Path) -> None:
    # sft-split: the same examples a step (the same tokens), split in one micro-batch or in four grouped by length,
    # which pad less; each rated against the first split given when 8x4 is not among them.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_shapes.py"), "--cpu", "--sft-steps", "3",
                           "--parts", "sft-split", "--splits", "8x1", "2x4", "--work", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "each against 8x1: 8x1: " in done.stdout and "(1.00x)" in done.stdout and "2x4: " in done.stdout
    result = json.loads((tmp_path / "gpu_shapes.json").read_text())
    whole, split = result["sft-split-8x1"], result["sft-split-2x4"]
    assert whole["tokens_per_step"] == split["tokens_per_step"] > 0
    assert whole["computed_per_real_token"] > split["computed_per_real_token"] >= 1.0
    assert not (tmp_path / "sft-split-2x4" / "data").exists()  # it read the data prepared once for the call
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_shapes.py"), "--cpu", "--parts",
                              "sft-split", "--splits", "8x0"], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "give a split as MICROxACCUMULATION" in refused.stderr


def test_gpu_shapes_rates_compiled_sft_over_the_steps_that_compiled_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The compiled SFT setting's steady rate: steps 1 (always left out), 2 and 4 compiled a graph each.
    gpu_shapes = load_benchmark("gpu_shapes")
    history = [{"step_time": t, "num_tokens": n} for t, n in
               [(30.0, 1000), (20.0, 2000), (1.0, 3000), (25.0, 4000), (2.0, 7000)]] + [{"train_loss": 1.0}]
    result = gpu_shapes.without_compiling(history, [5, 6, 7, 7, 8, 8])  # 5 graphs before the run
    assert result == {"tokens_per_s_without_compiling": round(4000 / 3.0), "compiling_steps": [1, 2, 4],
                      "compiling_s": 75.0}
    assert gpu_shapes.without_compiling(history, [0] * 6)["tokens_per_s_without_compiling"] == round(6000 / 48.0)
    # The counts come from torch's compiler: a step that compiles a new graph raises them.
    import torch
    from transformers import TrainerCallback

    from gsm8k_tr.train import sft

    compiled = torch.compile(lambda x: x * 2, backend="eager")

    class Trainer:
        def add_callback(self, callback: TrainerCallback) -> None:
            self.callback = callback

    monkeypatch.setattr(sft, "use_compact_progress", lambda trainer: None)
    with gpu_shapes.graphs_per_step() as graphs:
        trainer = Trainer()
        sft.use_compact_progress(trainer)
        for rows in (3, 3, 4):
            compiled(torch.ones(rows))
            trainer.callback.on_step_end()
    assert [count - graphs[0] for count in graphs] == [0, 1, 1, 2]


def test_gpu_shapes_stop_part_runs_with_the_events_stood_in(tmp_path: Path, deferred_stop_checks: list) -> None:
    # The stop part needs a GPU's events; its own code on the CPU, with those stood in for, so it works first time.
    gpu_shapes = load_benchmark("gpu_shapes")
    result = gpu_shapes.run_stop("builtin:tiny-gpt2", tmp_path / "stop", sequences=4, new_tokens=8, cpu=True)
    assert result["decoding"] == "eager" and result["same_answers"] == 4
    assert set(result["ms_per_step"]) == {"every step", "deferred"} and all(result["ms_per_step"].values())
    assert len(deferred_stop_checks) == 3  # the warm-up (deferred, as on a GPU) and the deferred setting twice
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_shapes.py"), "--cpu", "--parts", "stop"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "the stop part needs a GPU" in done.stderr
