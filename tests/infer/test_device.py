"""One device rule for inference (CUDA, else MPS, else CPU; --device and eval.device win), and its dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE, run_cli

from gsm8k_tr import placement
from gsm8k_tr.errors import UserError


@pytest.mark.parametrize("cuda, mps, requested, expected", [
    (True, True, None, "cuda"),     # a CUDA GPU first
    (False, True, None, "mps"),     # then Apple's GPU
    (False, False, None, "cpu"),    # then the CPU
    (True, False, "cpu", "cpu"),    # --device / eval.device win over what is found
    (True, False, "cuda:1", "cuda:1"),
])
def test_the_device_rule(cuda: bool, mps: bool, requested: str | None, expected: str,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert str(placement.inference_device(requested)) == expected


@pytest.mark.parametrize("requested, message", [
    ("cuda", "no CUDA GPU"),
    ("mps", "MPS is not available"),
    ("gpu", "is not a device"),
])
def test_a_device_that_is_not_there_is_one_line(requested: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match=message):
        placement.inference_device(requested)


@pytest.mark.parametrize("device, bf16, requested, expected", [
    ("cuda", True, "auto", torch.bfloat16),   # A100, H100, L4, RTX 30xx+
    ("cuda", False, "auto", torch.float16),   # T4, V100: no bf16
    ("cpu", False, "auto", torch.float32),
    ("cpu", False, "bfloat16", torch.bfloat16),  # eval.dtype wins
])
def test_the_inference_dtype(device: str, bf16: bool, requested: str, expected: torch.dtype,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert placement.inference_dtype(torch.device(device), requested) == expected


def test_evaluate_records_its_device_and_dtype(tmp_path: Path, tiny_model_dir: Path) -> None:
    done = run_cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(tiny_model_dir),
                   "--limit", "4", "--device", "cpu", "eval.dtype=bfloat16", "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["device"] == "cpu" and metrics["dtype"] == "bfloat16" and metrics["n"] == 4
    # and the per-device decoding choices it ran with (a CPU: eager, torch's kernels, the stop flag every step)
    assert (metrics["decoding"], metrics["attention"], metrics["stop_check"]) == ("eager", None, "every step")
    refused = run_cli("generate", "--config", str(TINY_RECIPE), "--model", str(tiny_model_dir), "--device", "cuda:7",
                      "Ali'nin 3 elması var.")
    if not torch.cuda.is_available():
        assert refused.returncode == 2 and "no CUDA GPU" in refused.stderr and "Traceback" not in refused.stderr
