"""SFT until validation stops improving: held-out accuracy in SFT's evaluations, early stopping, the best kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, run_cli, tensors

from gsm8k_tr.config import load_recipe

pytestmark = pytest.mark.slow

PLATEAU = ["sft.max_steps=40", "sft.eval_strategy=steps", "sft.eval_steps=5", "sft.save_steps=5",
           "sft.load_best_model_at_end=true", "sft.save_total_limit=2", "eval.sft_patience=2"]


def test_sft_stops_when_validation_stops_improving_and_keeps_the_best(tmp_path: Path, tiny_model_dir) -> None:
    out = tmp_path / "run"
    done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={out}", *PLATEAU)
    assert done.returncode == 0, done.stderr[-3000:]
    sft = out / "sft"
    history = json.loads((sft / "log_history.json").read_text())
    evaluations = [h for h in history if "eval_accuracy" in h]
    assert evaluations and all("eval_loss" in h and "eval_strict_format_rate" in h for h in evaluations)
    manifest = json.loads((sft / "manifest.json").read_text())
    # The 30-second tiny model answers no held-out question right: later evaluations are no better than the
    # first, so with patience 2 SFT stops at the third, step 15 of 40, and keeps step 5's weights.
    assert [h["step"] for h in evaluations] == [5, 10, 15]
    assert manifest["stopped_early"] and manifest["stopped_at_step"] == 15 and manifest["best_step"] == 5
    assert manifest["metric_for_best_model"] == "accuracy" and manifest["loaded_best"]
    assert manifest["held_out"]["split"] == "validation"
    # save_total_limit=2 keeps the newest checkpoint for resuming and the best one, older than the one between
    # them: rotation protects it because the state names it by its final path, not the staging folder's.
    kept = sorted(p.name for p in (sft / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-15", "checkpoint-5"]
    state = json.loads((sft / "checkpoints" / "checkpoint-15" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(sft / "checkpoints" / "checkpoint-5")
    best = tensors(sft / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors")
    last = tensors(sft / "checkpoints" / "checkpoint-15" / "adapter_model.safetensors")
    final = tensors(sft / "adapter" / "adapter_model.safetensors")
    assert any(not (best[k] == last[k]).all() for k in best), "steps 5 and 15 differ"
    assert all((final[k] == best[k]).all() for k in best), "the stage's adapter is the best checkpoint's"


def test_patience_without_evaluations_is_one_line_before_any_work(tmp_path: Path) -> None:
    from gsm8k_tr.errors import UserError
    from gsm8k_tr.train import recipe_check

    recipe = load_recipe(TINY_RECIPE, [f"output_dir={tmp_path}", "eval.sft_patience=2"])
    with pytest.raises(UserError, match="needs sft.eval_strategy: steps .* and sft.load_best_model_at_end: true"):
        recipe_check.check(recipe)


@pytest.mark.parametrize("fraction,expected", [(1.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
def test_solution_fraction_keeps_that_share_of_solutions_for_sft(fraction: float, expected: float) -> None:
    from gsm8k_tr.data.examples import sft_examples

    rows = [{"question": f"soru {i}", "solution": f"{i} + 1 = {i + 1}", "answer": str(i + 1), "solution_agrees": True}
            for i in range(2000)]
    rows.append({"question": "yalnız cevap", "solution": "", "answer": "3", "solution_agrees": False})
    recipe = load_recipe(TINY_RECIPE, [f"data.solution_fraction={fraction}"])
    pairs, counts = sft_examples(rows, recipe, "<|stop|>", lambda text: len(text.split()), 512)
    assert counts["used"] == len(pairs) == pytest.approx(expected * 2000, abs=60)
    assert counts["dropped_no_solution"] == 2001 - len(pairs)  # the answer-only row is always among them
