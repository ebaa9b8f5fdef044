"""`benchmarks/grouped_attention.py` runs both paths on the same rows and reports what each reads."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

pytest.importorskip("torch")


def test_the_benchmark_compares_both_paths_on_the_same_rows(tiny_model_dir) -> None:
    module = load_benchmark("grouped_attention")
    result = module.measure(str(tiny_model_dir), prompts=2, group=3, new_tokens=4, rounds=1, cpu=True)
    assert (result["rows"], result["groups"], result["new_tokens"]) == (6, 2, 4)
    assert result["same_greedy_rows"] == 6  # the grouped path decodes what the copies decode
    read = result["kv_bytes_last_step"]
    assert read["grouped"] < read["copies"]
    assert result["copies"]["ms_per_step"] > 0 and result["grouped"]["ms_per_step"] > 0 and result["ratio"] > 0


def test_the_samples_comparison_draws_the_same_completions_both_ways(tiny_model_dir) -> None:
    module = load_benchmark("grouped_attention")
    result = module.measure_samples(str(tiny_model_dir), prompts=2, group=3, new_tokens=8, rounds=1, cpu=True)
    assert result["same_completions"] == "6/6" and result["generated_tokens"] > 0
    assert result["copies"]["s_per_call"] > 0 and result["grouped"]["s_per_call"] > 0
