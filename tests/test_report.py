"""The report of a folder `benchmarks/sft_vs_grpo.py` wrote: the budget plot and the table, from its JSON alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
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


def _evaluation(folder: Path, right: list[bool]) -> None:
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(
        json.dumps({"question": f"q{i}", "gold": str(i), "correct": ok, "tokens": 10}) + "\n"
        for i, ok in enumerate(right)))


def test_grpo_is_paired_with_each_way_on_the_same_questions_and_pooled_over_seeds(tmp_path: Path) -> None:
    from gsm8k_tr import report

    bench = load_benchmark("sft_vs_grpo")
    seeds = []
    for seed, (grpo, more) in {42: ([True] * 8 + [False] * 2, [True] * 2 + [False] * 8),
                               43: ([True] * 6 + [False] * 4, [False] * 6 + [True] * 4)}.items():
        folder = tmp_path / f"seed-{seed}"
        _evaluation(folder / "eval-grpo", grpo)
        _evaluation(folder / "eval-more-sft", more)  # no start or SFT alone evaluated: not paired
        seeds.append({**_seed(seed, 0.5, 0.5, 0.6), "paired": bench.paired(folder)})
    assert list(seeds[0]["paired"]) == ["more_sft"]
    assert (seeds[0]["paired"]["more_sft"]["gained"], seeds[0]["paired"]["more_sft"]["lost"]) == (6, 0)
    assert (seeds[1]["paired"]["more_sft"]["gained"], seeds[1]["paired"]["more_sft"]["lost"]) == (6, 4)
    summary = bench.summary(seeds, tmp_path)
    # Question by question over both seeds: q0-q5 better on balance, q6 and q7 one each way (no vote), q8 and q9
    # worse; summing the seeds' own counts instead (12 against 4) would count q2-q5 twice.
    pooled = summary["pooled"]["more_sft"]
    assert (pooled["runs"], pooled["questions"], pooled["gained"], pooled["lost"]) == (2, 10, 6, 2)
    assert pooled["p_value"] == round(2 * sum(math.comb(8, i) for i in range(3)) / 2**8, 4)
    assert "pooled" not in bench.summary(seeds)  # without the folder the seeds ran in
    (tmp_path / "sft_vs_grpo.json").write_text(json.dumps({"seeds": seeds, "summary": summary}))
    text = report.main(str(tmp_path)).read_text()
    assert "against (a) more SFT: 6 better, 2 worse (p = 0.29)" in text


def test_a_broken_benchmark_output_is_named_in_one_line(tmp_path: Path) -> None:
    from gsm8k_tr import report
    from gsm8k_tr.errors import UserError

    (tmp_path / "sft_vs_grpo.json").write_text('{"seeds": [')  # a run killed while writing it
    with pytest.raises(UserError, match=r"sft_vs_grpo\.json: not valid JSON"):
        report.main(str(tmp_path))


def test_generated_tokens_count_every_step_between_log_entries() -> None:
    """TRL logs GRPO's mean completion length every `logging_steps`, averaged over those steps: each entry stands
    for all of them (counting an entry once undercounted the demo's generated tokens five times)."""
    history = [{"step": 5, "completions/mean_length": 50.0, "num_tokens": 1000.0},
               {"step": 10, "completions/mean_length": 60.0, "num_tokens": 2000.0},
               {"step": 10, "train_runtime": 9.0},
               {"step": 12, "completions/mean_length": 40.0, "num_tokens": 2500.0}]
    tokens = load_benchmark("sft_vs_grpo")._tokens(history, completions_per_step=64)
    assert tokens == {"trained": 2500.0, "generated": 64 * (50 * 5 + 60 * 5 + 40 * 2), "total": 2500.0 + 64 * 630}


def test_a_stage_finished_before_the_call_is_told_apart() -> None:
    """The SFT ways' steps come from the start's seconds per step: a start trained by an earlier call is named."""
    from datetime import datetime, timedelta, timezone

    bench = load_benchmark("sft_vs_grpo")
    assert bench._earlier({"finished_at": "2026-01-01T00:00:00+0000"})
    later = (datetime.now(timezone(timedelta(hours=3))) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert not bench._earlier({"finished_at": later})  # during the call, in another zone


def test_sft_ways_are_sized_by_the_starts_steps_checks_and_start_up() -> None:
    """The start's wall time split into its optimizer steps (the logged `step_time`, weighted by the steps each log
    covers), its held-out checks (the trainer's runtime less the steps) and the rest; the SFT ways' steps fill
    their budget with that, their own checks counted (the start's seconds per step, checks and start-up spread
    over 600 steps, gave them 0.76-1.08 of it)."""
    bench = load_benchmark("sft_vs_grpo")
    history = [{"step": 20, "loss": 1.0, "step_time": 0.10}, {"step": 100, "loss": 0.9, "step_time": 0.12},
               {"step": 100, "eval_loss": 0.8, "eval_runtime": 2.0}, {"step": 150, "loss": 0.8},  # no time logged
               {"step": 200, "loss": 0.7, "step_time": 0.10}, {"step": 200, "eval_loss": 0.7, "eval_runtime": 2.0},
               {"step": 200, "train_runtime": 30.0}]
    timed = bench.timing({"global_step": 200, "train_seconds": 36.0}, history)
    step = (20 * 0.10 + 80 * 0.12 + 50 * 0.10) / 150  # the interval logged without a time is left out
    assert timed == pytest.approx({"step": step, "check": (30.0 - 200 * step) / 2, "once": 6.0})
    check = timed["check"]
    assert bench.sft_steps(100.0, timed, checks=4) == round((100 - 6 - 4 * check) / step)
    assert bench.sft_steps(100.0, timed, every=100) == round((100 - 6) / (step + check / 100))
    assert bench.sft_steps(100.0, timed) > bench.sft_steps(100.0, timed, checks=4)
    assert bench.sft_steps(1.0, timed) == 1  # a budget below the start-up still trains a step
    assert bench._checks({"eval_strategy": "steps", "eval_steps": 100}) == {"every": 100}
    assert bench._checks({"eval_strategy": "steps", "logging_steps": 50}) == {"every": 50}
    assert bench._checks({"eval_strategy": "steps", "eval_steps": 0.25}) == {"checks": 4}
    assert bench._checks({"eval_strategy": False}) == {}  # YAML's `no`
    # A start shorter than its logging interval logs no step time: its seconds per step, as before.
    assert bench.timing({"global_step": 20, "train_seconds": 6.0}, [{"step": 20, "train_runtime": 5.0}]) == \
        {"step": 0.3, "check": 0.0, "once": 0.0}


def test_an_sft_way_short_of_its_budget_is_named() -> None:
    """A way that trained for less than 0.9 of its budget is named with its share (seed 44 at 480 GRPO steps, sized
    by the start's seconds per step: 321 s of GRPO's 407)."""
    bench = load_benchmark("sft_vs_grpo")
    seed = {"seed": 44, "grpo": {"seconds": 407.0}, "more_sft": {"seconds": 321.0},
            "sft_alone": {"seconds": 420.0, "pipeline_seconds": 487.0}}
    assert bench.short_of_budget(seed) == [
        "seed 44: (a) more SFT trained 321 s of its 407 s (0.79): more time helps it only if its best step was near "
        "its last",
        "seed 44: (c) SFT alone trained 420 s of its 487 s (0.86): more time helps it only if its best step was near "
        "its last"]
    seed["more_sft"]["seconds"], seed["sft_alone"]["seconds"] = 380.0, 487.0
    assert bench.short_of_budget(seed) == []
