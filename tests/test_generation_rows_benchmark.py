"""`benchmarks/generation_rows.py` decodes each row count at one width for every step and rates it against the
first."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

pytest.importorskip("torch")


def test_each_row_count_runs_every_step_and_is_rated_against_the_first(tiny_model_dir, monkeypatch) -> None:
    bench = load_benchmark("generation_rows")
    steps = []  # every call decodes new_tokens steps: no stop token ends it early
    real = bench.decode
    monkeypatch.setattr(bench, "decode", lambda path, model, batch, config: steps.append(
        (path, *batch["input_ids"].shape, config.max_new_tokens, config.eos_token_id))
        or real(path, model, batch, config))
    result = bench.measure(str(tiny_model_dir), [2, 6], new_tokens=3, rounds=1, cpu=True)
    assert result["setup"]["decoding"] == "eager" and result["setup"]["prompt_tokens"] % 64 == 0  # a CPU: eager
    width = result["setup"]["prompt_tokens"]  # every row count at the same width: the rows alone differ
    assert steps == [("eager", 2, width, 3, None)] * 2 + [("eager", 6, width, 3, None)] * 2  # a first call, one round
    for rows in (2, 6):
        found = result[str(rows)]
        assert found["rows"] == rows
        seconds = 3 * found["ms_per_step"] / 1000
        assert found["generated_tokens_per_s"] == pytest.approx(rows * 3 / seconds, rel=0.02, abs=1)
    assert result["6"]["tokens_per_s_ratio"] == pytest.approx(
        result["6"]["generated_tokens_per_s"] / result["2"]["generated_tokens_per_s"], abs=0.01)
    assert "tokens_per_s_ratio" not in result["2"]
