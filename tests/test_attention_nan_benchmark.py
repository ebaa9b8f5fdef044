"""`benchmarks/attention_nan.py` counts the non-finite gradients of a left-padded batch: none for a sound model on
the CPU, and every one a NaN weight spreads to."""

from __future__ import annotations

import sys
from unittest.mock import patch

import pytest
from conftest import load_benchmark

torch = pytest.importorskip("torch")


def test_a_sound_batch_counts_none_and_a_nan_weight_counts_its_gradients() -> None:
    import transformers

    bench = load_benchmark("attention_nan")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=100,
                                     attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(config)
    clean = bench.nonfinite_gradients(model, 64, 4, torch.device("cpu"), cudnn=False)
    assert clean["nonfinite_gradients"] == 0 and clean["loss"] > 0
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[0, 0] = float("nan")
    assert bench.nonfinite_gradients(model, 64, 4, torch.device("cpu"), cudnn=True)["nonfinite_gradients"] > 0


def test_the_cpu_smoke_run_names_no_length(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("attention_nan")
    with patch.object(sys, "argv", ["attention_nan.py", "--cpu", "--lengths", "64", "--rows", "2", "--layers", "1"]):
        assert bench.main() == 0
    out = capsys.readouterr().out
    assert '"length_mod_128": 64' in out and out.rstrip().endswith("non-finite gradients at: no length")
