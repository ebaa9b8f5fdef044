"""`gsm8k-tr pipeline`, shortened: every stage runs, report.json has the demo's structure, reruns are safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, run_cli

pytestmark = pytest.mark.slow


cli = run_cli  # in this process: see conftest.run_cli


def test_pipeline_runs_every_stage_and_reports(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    args = ("pipeline", "--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=10", "grpo.max_steps=2",
            "eval.limit=12", "eval.every_steps=0")
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert set(report["stages"]) == {"base", "sft", "grpo"}
    for name, stage in report["stages"].items():
        for key in ("accuracy", "flexible_accuracy", "strict_format_rate", "n"):
            assert key in stage, (name, key)
        assert stage["n"] == 12
        assert 0.0 <= stage["accuracy"] <= 1.0 and 0.0 <= stage["strict_format_rate"] <= 1.0
        metrics = json.loads((run / "eval" / name / "metrics.json").read_text())
        assert {k: metrics[k] for k in ("accuracy", "strict_format_rate", "n")} == \
            {k: stage[k] for k in ("accuracy", "strict_format_rate", "n")}
        assert stage["seconds"] >= stage["eval_seconds"] > 0
    assert report["stages"]["sft"]["train_seconds"] > 0 and report["stages"]["base"]["train_seconds"] == 0
    for png in ("rewards.png", "sft_loss.png", "stages.png", "lengths.png"):
        assert (run / png).stat().st_size > 1000
    assert "report.md" in done.stdout and "strict fmt" in done.stdout  # the table and where the report is
    assert f"[1/7] preparing data into {run / 'data'}\n" in done.stdout
    assert "Wall time per stage" in (run / "report.md").read_text()
    # Each stage against the one before, on the same 12 questions, from the predictions it wrote.
    assert [(c["before"], c["after"], c["questions"]) for c in report["comparisons"]] == [("base", "sft", 12),
                                                                                          ("sft", "grpo", 12)]
    for c in report["comparisons"]:
        stages = report["stages"]
        assert abs(c["change"] - (stages[c["after"]]["accuracy"] - stages[c["before"]]["accuracy"])) < 1e-3
        assert f"{c['before']} → {c['after']}: " in done.stdout
    assert "| sft → grpo | 12 |" in (run / "report.md").read_text()

    refused = cli(*args)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = cli(*args, "--resume")  # everything finished: nothing is trained or evaluated again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"[1/7] prepared data in {run / 'data'}\n" in resumed.stdout  # read as it is, not prepared again
    again = json.loads((run / "report.json").read_text())
    assert {n: s["accuracy"] for n, s in again["stages"].items()} == {n: s["accuracy"] for n, s in report["stages"].items()}
    assert "already finished" in resumed.stderr and "with another recipe" not in resumed.stderr
    # More GRPO steps on a finished run: kept as it finished, and said so where before only "already finished" was
    longer = cli(*args, "--resume", "grpo.max_steps=6")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert (f"{run / 'grpo'} already finished, with another recipe than this one (grpo.max_steps 2 -> 6); it is kept "
            "as it is: pass --overwrite to train it again with this recipe") in longer.stderr
    assert f"{run / 'sft'} already finished, with another" not in longer.stderr  # SFT never reads the grpo section
    # Another eval.limit: every evaluation answers again, so the stages are compared on the same questions; the
    # finished stages are kept without a warning, as they would train the same
    fewer = cli(*args, "--resume", "eval.limit=8")
    assert fewer.returncode == 0, fewer.stderr[-2000:]
    for name in ("base", "sft", "grpo"):
        assert (f"--resume: {run / 'eval' / name} was evaluated with other inputs than now (eval.limit 12 -> 8); "
                "evaluating it again") in fewer.stderr
    assert "already finished, with another" not in fewer.stderr
    assert [s["n"] for s in json.loads((run / "report.json").read_text())["stages"].values()] == [8, 8, 8]
    assert [c["questions"] for c in json.loads((run / "report.json").read_text())["comparisons"]] == [8, 8]
    # SFT trained again on its own: its evaluation is redone, and the GRPO trained from the SFT before is named
    retrained = cli("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=10", "eval.every_steps=0",
                    "--overwrite")
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    after = cli(*args, "--resume", "eval.limit=8")
    assert after.returncode == 0, after.stderr[-2000:]
    assert f"{run / 'eval' / 'sft'} was evaluated with other inputs than now (model.finished_at" in after.stderr
    assert f"{run / 'eval' / 'base'} was evaluated" not in after.stderr
    assert f"{run / 'eval' / 'grpo'} was evaluated" not in after.stderr
    assert f"{run / 'grpo'} already finished, with another recipe than this one (start model: an SFT output" \
        in after.stderr

    # A hand-edited evaluation whose rate is no number: one line naming it (a traceback in the summary's plot before)
    metrics = run / "eval" / "base" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"accuracy": ', '"accuracy": "x", "was": '))
    edited = cli(*args, "--resume", "eval.limit=8")
    assert edited.returncode == 2 and f"{metrics}: 'accuracy' is 'x', not a number" in edited.stderr, edited.stderr
