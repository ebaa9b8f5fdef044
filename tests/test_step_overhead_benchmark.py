"""`benchmarks/step_overhead.py` compares what it says: the FLOP count and the guard as transformers and the
guard counted before (a walk over the model at every micro-batch and check) against the project's trainer."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from conftest import load_benchmark

pytest.importorskip("torch")


def test_before_walks_the_model_each_micro_batch_and_now_once(tmp_path, tiny_model_dir) -> None:
    from transformers import PreTrainedModel

    bench = load_benchmark("step_overhead")
    model = tmp_path / "narrow"
    bench.build_narrow_model(model)
    counted = {}
    for way in ("before", "now"):
        with patch.object(PreTrainedModel, "num_parameters", autospec=True,
                          side_effect=PreTrainedModel.num_parameters) as calls:
            counted[way] = bench.run(model, tmp_path / way, steps=6, accumulation=2, before=way == "before"), \
                calls.call_count
    (before, before_calls), (now, now_calls) = counted["before"], counted["now"]
    assert before_calls >= 12 and now_calls < before_calls - 10  # 6 steps x 2 micro-batches, against once
    assert before["total_flos"] == now["total_flos"] > 0
    for found in (before, now):
        assert len(found["step_s"]) == 1 and found["flops_s"] > 0 and found["check_s"] > 0
