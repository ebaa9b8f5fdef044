"""`benchmarks/rollouts.py`'s today's path: the project's rollout choices all off, in the shape the trainer reads."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

from gsm8k_tr import modeling, placement


def test_todays_path_turns_every_rollout_choice_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for module, name in ((placement, "kv_cache"), (placement, "rollout_path"), (placement, "compact_scoring"),
                         (placement, "row_sampling"), (modeling, "fused_activation")):
        monkeypatch.setattr(module, name, getattr(module, name))  # put back after the test
    fast = placement.rollouts(False, None, "cpu", "auto", "bf16")
    module = load_benchmark("rollouts")
    module.use_todays_path()
    today = placement.rollouts(False, None, "cpu", "auto", "bf16")  # as train/grpo.py calls it
    assert today.keys() == fast.keys()
    assert today == {"merge_lora": False, "weights_dtype": None, "decoding": "eager", "kv_cache": "dynamic",
                     "shared_prefill": False, "grouped_attention": False, "sampler": "multinomial", "attention": None,
                     "stop_check": "every step"}
