"""The report of a folder `benchmarks/sft_vs_grpo.py` wrote: the budget plot and the table, from its JSON alone."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_benchmark


def _seed(seed: int, start: float, more: float, grpo: float, alone: float = 0.6) -> dict:
    def run(accuracy: float, seconds: float, tokens: float) -> dict:
        return {"steps": 100, "seconds": seconds, "tokens": {"trained": tokens, "generated": 0, "total": tokens},
                "test_accuracy": accuracy,
                "curve": [{"step": 50, "seconds": seconds / 2, "accuracy": (start + accuracy) / 2},
                          {"step": 100, "seconds": seconds, "accuracy": accuracy}]}
    return {"seed": seed, "start": {"test_accuracy": start, "steps": 600, "seconds": 170, "tokens": 1e6},
            "more_sft": run(more, 200, 9e5), "grpo": run(grpo, 195, 1.2e6),
            "sft_alone": {**run(alone, 360, 2e6), "pipeline_seconds": 365, "pipeline_tokens": 2.2e6}}


def test_summary_and_report_of_the_same_budget_comparison(tmp_path: Path) -> None:
    from gsm8k_tr import report

    seeds = [_seed(42, 0.58, 0.60, 0.66), _seed(43, 0.55, 0.57, 0.60), _seed(44, 0.57, 0.58, 0.56)]
    summary = load_benchmark("sft_vs_grpo").summary(seeds)
    assert round(summary["grpo_minus_more_sft"]["mean"], 4) == round((0.06 + 0.03 - 0.02) / 3, 4)
    assert abs(summary["grpo_minus_more_sft"]["min"] + 0.02) < 1e-9
    assert summary["grpo_gained_on_every_seed"] is False  # seed 44 lost against its own start
    assert round(summary["grpo_minus_sft_alone"]["mean"], 4) == round((0.06 + 0.0 - 0.04) / 3, 4)
    (tmp_path / "sft_vs_grpo.json").write_text(json.dumps({"seeds": seeds, "summary": summary}))
    path = report.main(str(tmp_path))
    text = path.read_text()
    assert "## Same budget: more SFT, GRPO, or SFT alone" in text
    assert "| 42 | 0.580 | 0.600 | 0.660 | +0.060 | 0.600 | +0.060 | 200 / 195 |" in text
    assert "![Same budget: more SFT, GRPO, or SFT alone](sft_vs_grpo.png)" in text
    assert (tmp_path / "sft_vs_grpo.png").stat().st_size > 5000


def test_a_broken_benchmark_output_is_named_in_one_line(tmp_path: Path) -> None:
    import pytest

    from gsm8k_tr import report
    from gsm8k_tr.errors import UserError

    (tmp_path / "sft_vs_grpo.json").write_text('{"seeds": [')  # a run killed while writing it
    with pytest.raises(UserError, match=r"sft_vs_grpo\.json: not valid JSON"):
        report.main(str(tmp_path))
