"""kill -9 a real training process at a step boundary, mid-checkpoint and mid-merge, or stop it with SIGTERM or Ctrl-C;
--resume loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE

pytestmark = pytest.mark.slow

STEPS = {"sft": 30, "grpo": 4}
SAVE = {"sft": 10, "grpo": 2}


def _args(stage: str, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gsm8k_tr", stage, "--config", str(TINY_RECIPE), f"output_dir={run}",
            f"{stage}.max_steps={STEPS[stage]}", f"{stage}.save_steps={SAVE[stage]}", "eval.every_steps=0", *extra]


def _run(stage: str, run: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GSM8K_TR_FAULT"}
    if fault:
        env["GSM8K_TR_FAULT"] = fault
    return subprocess.run(_args(stage, run, *extra), capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _finished(run: Path, stage: str) -> None:
    manifest = json.loads((run / stage / "manifest.json").read_text())
    assert manifest["global_step"] == STEPS[stage]
    history = json.loads((run / stage / "log_history.json").read_text())
    assert history[-1]["step"] == STEPS[stage]
    assert (run / stage / "merged" / "model.safetensors").is_file()
    assert not list((run / stage).glob(".*tmp*"))  # no temporary folder left behind


def _sft_done(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert _run("sft", run).returncode == 0
    return run


def test_kill_at_a_step_boundary_then_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(_args("sft", run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    first = run / "sft" / "checkpoints" / f"checkpoint-{SAVE['sft']}"
    deadline = time.time() + 300
    while not first.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # just after a checkpoint landed: training is between steps
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "sft" / "manifest.json").exists()
    resumed = _run("sft", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    _finished(run, "sft")
    resumed_from = json.loads((run / "sft" / "manifest.json").read_text())["resumed_from"]
    assert resumed_from and int(resumed_from.rsplit("-", 1)[1]) in (10, 20)  # not from the start


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_kill_during_checkpoint_save_then_resume(stage: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    run = _sft_done(tmp_path) if stage == "grpo" else tmp_path / "run"
    killed = _run(stage, run, fault="kill-during-save")
    assert killed.returncode == -signal.SIGKILL
    checkpoints = run / stage / "checkpoints"
    # The checkpoint being written is only in the staging folder: nothing half-written looks complete.
    assert not (checkpoints / f"checkpoint-{SAVE[stage]}").exists()
    assert (checkpoints / ".saving" / f"checkpoint-{SAVE[stage]}").is_dir()
    resumed = _run(stage, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _finished(run, stage)
    assert not (checkpoints / ".saving").exists()


def test_kill_during_the_final_merge_then_resume_past_a_half_written_checkpoint(tmp_path: Path,
                                                                                tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    killed = _run("sft", run, fault="kill-during-merge")
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "sft" / "manifest.json").exists() and not (run / "sft" / "merged").exists()
    # A half-written checkpoint, as versions before atomic saves could leave one: resume must pass it by.
    broken = run / "sft" / "checkpoints" / "checkpoint-999"
    broken.mkdir()
    (broken / "trainer_state.json").write_text('{"global_step": 99')  # cut off mid-write
    resumed = _run("sft", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping" in resumed.stderr and "checkpoint-999" in resumed.stderr
    _finished(run, "sft")
    manifest = json.loads((run / "sft" / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith(f"checkpoint-{STEPS['sft']}")  # nothing trained twice


def test_a_resume_that_changes_what_the_checkpoints_were_trained_as_is_refused(tmp_path: Path, tiny_model_dir: Path,
                                                                              recwarn) -> None:
    # A killed run leaves checkpoints and no manifest. Resumed with another LoRA rank it stopped in a traceback
    # (PEFT's size mismatch); resumed after its SFT start was trained again, GRPO went on with an adapter trained on
    # the other model, without a word.
    from conftest import run_cli

    run = tmp_path / "run"
    sft = ["--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=4", "sft.save_steps=2"]
    assert run_cli("sft", *sft).returncode == 0
    assert (run / "sft" / "checkpoints" / "recipe.yaml").is_file()
    (run / "sft" / "manifest.json").unlink()
    done = run_cli("sft", *sft, "lora.r=4", "--resume")
    assert done.returncode == 2 and "began with another recipe (lora.r 8 -> 4)" in done.stderr, done.stderr
    done = run_cli("sft", *sft[:3], "sft.max_steps=6", "sft.save_steps=2", "--resume")  # more steps: named, and on
    assert done.returncode == 0 and "sft.max_steps 4 -> 6" in done.stderr, done.stderr
    assert json.loads((run / "sft" / "manifest.json").read_text())["global_step"] == 6

    grpo = ["--config", str(TINY_RECIPE), f"output_dir={run}", "grpo.max_steps=2", "grpo.save_steps=1",
            "eval.every_steps=0", "grpo.activation_checkpointing=true"]
    recwarn.clear()
    assert run_cli("grpo", *grpo).returncode == 0
    # without the FutureWarnings that TRL's own use of transformers' deprecated names gives (cli.main): around each
    # generation it reads `is_gradient_checkpointing` and, with checkpointing on, calls `gradient_checkpointing_*`
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message)]
    (run / "grpo" / "manifest.json").unlink()
    assert run_cli("sft", *sft, "--overwrite").returncode == 0
    done = run_cli("grpo", *grpo, "--resume")
    assert done.returncode == 2 and "its checkpoints belong to another model" in done.stderr, done.stderr


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_sigterm_or_ctrl_c_saves_the_step_it_stops_at_and_resume_goes_on_from_it(number: int, tmp_path: Path,
                                                                                     tiny_model_dir: Path) -> None:
    # Before, a Ctrl-C or a scheduler's SIGTERM lost every step since the last periodic checkpoint (none here).
    run, log = tmp_path / "run", tmp_path / "output.txt"
    args = _args("sft", run, "sft.max_steps=100000", "sft.save_steps=100000", "sft.logging_steps=1")  # later wins
    with log.open("w") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)  # steps are on stdout
        deadline = time.time() + 300
        while "step 3:" not in log.read_text(errors="replace") and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        process.send_signal(number)  # training is under way
        assert process.wait(timeout=300) == 128 + number
    lines = log.read_text(errors="replace").strip().splitlines()
    checkpoints = run / "sft" / "checkpoints"
    saved = [p for p in checkpoints.iterdir() if p.name.startswith("checkpoint-")]
    assert len(saved) == 1, lines[-5:]
    step = int(saved[0].name.rsplit("-", 1)[1])
    assert json.loads((saved[0] / "trainer_state.json").read_text())["global_step"] == step >= 3
    assert lines[-1] == (f"gsm8k-tr sft: stopped by {signal.Signals(number).name} at step {step}; its checkpoint is "
                         f"saved ({checkpoints}/checkpoint-{step}): run the same command with --resume to continue")
    assert not (run / "sft" / "manifest.json").exists() and not (run / "sft" / "merged").exists()  # not finished
    if number == signal.SIGTERM:
        resumed = _run("sft", run, "--resume", f"sft.max_steps={step + 2}")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        manifest = json.loads((run / "sft" / "manifest.json").read_text())
        assert manifest["global_step"] == step + 2 and manifest["resumed_from"].endswith(f"checkpoint-{step}")
