"""`eval.grpo_keep_best`: GRPO saves the adapter of its best held-out check, its start among them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, as_killed, tensors
from conftest import same_tensors as same

from gsm8k_tr.config import load_recipe
from gsm8k_tr.train.held_out import HeldOutCheck

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sft_output(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SFT run to start from: from the base model every answer is wrong, and GRPO learns nothing."""
    from gsm8k_tr.train import sft

    run = tmp_path_factory.mktemp("keep-best") / "run"
    sft.main(load_recipe(str(TINY_RECIPE), [f"output_dir={run}"]))
    return run / "sft"


def _grpo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accuracy: dict[int, float], keep: bool,
          start: Path, resume: bool = False) -> Path:
    """GRPO for 5 steps, checked every 2, with the held-out accuracy scripted by step."""
    from gsm8k_tr.train import grpo

    def scripted(check: HeldOutCheck) -> dict[str, float]:
        return {**dict.fromkeys(HeldOutCheck.KEYS, 0.0), "accuracy": accuracy[check.trainer.state.global_step]}

    monkeypatch.setattr(HeldOutCheck, "measure", scripted)
    run = tmp_path / ("kept" if keep else "last")
    grpo.main(load_recipe(str(TINY_RECIPE), [
        f"output_dir={run}", f"model.sft_output={start}", "grpo.max_steps=5", "grpo.save_steps=2",
        "grpo.save_total_limit=10", "eval.every_steps=2", f"eval.grpo_keep_best={str(keep).lower()}"]),
        resume=resume)
    return run / "grpo"


@pytest.mark.parametrize("accuracy, kept", [
    ({0: 0.3, 2: 0.8, 4: 0.5, 5: 0.6}, 2),  # GRPO peaked at step 2 and went downhill: step 2's adapter is saved
    ({0: 0.3, 2: 0.5, 4: 0.8, 5: 0.8}, 5),  # a tie goes to the later, more trained step: the last one here
    ({0: 0.9, 2: 0.5, 4: 0.5, 5: 0.6}, 0),  # never better than its start: the start itself (the adapter does nothing)
])
def test_grpo_saves_its_best_held_out_check(accuracy: dict[int, float], kept: int, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, sft_output: Path) -> None:
    folder = _grpo(tmp_path, monkeypatch, accuracy, keep=True, start=sft_output)
    saved = tensors(folder / "adapter" / "adapter_model.safetensors")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["held_out_kept"] == {"kept_step": kept, "kept_held_out_accuracy": accuracy[kept],
                                         "last_step": 5, "last_held_out_accuracy": accuracy[5]}
    from gsm8k_tr import report

    text = report.main(str(folder.parent)).read_text()
    assert f"GRPO kept the adapter of its best held-out check, step {kept} " in text
    history = json.loads((folder / "log_history.json").read_text())
    assert [e["step"] for e in history if "eval/accuracy" in e] == [0, 2, 4, 5]  # the start and the last step too
    if kept == 0:
        assert all(not v.any() for k, v in saved.items() if "lora_B" in k)  # LoRA's B starts at zero: no change
    else:  # the trainer's own checkpoint of that step holds the same adapter
        assert same(saved, tensors(folder / "checkpoints" / f"checkpoint-{kept}" / "adapter_model.safetensors"))
    if kept != 5:
        assert not same(saved, tensors(folder / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors"))


def test_without_it_grpo_saves_its_last_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             sft_output: Path) -> None:
    folder = _grpo(tmp_path, monkeypatch, {2: 0.8, 4: 0.5}, keep=False, start=sft_output)
    saved = tensors(folder / "adapter" / "adapter_model.safetensors")
    assert same(saved, tensors(folder / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors"))
    assert json.loads((folder / "manifest.json").read_text())["held_out_kept"] is None
    assert not (folder / "checkpoints" / "best-held-out").exists()


def test_a_best_check_past_the_resumed_checkpoint_is_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               sft_output: Path) -> None:
    # Killed after step 4's check was kept but before checkpoint-4 was in place: the run resumes from checkpoint-2 and
    # trains steps 3-5 again. Step 4's kept weights belong to the lost steps; keeping them would save an adapter
    # that no checkpoint of the finished run holds.
    folder = _grpo(tmp_path, monkeypatch, {0: 0.3, 2: 0.5, 4: 0.9, 5: 0.6}, keep=True, start=sft_output)
    as_killed(folder, "checkpoints/checkpoint-4", "checkpoints/checkpoint-5")
    assert json.loads((folder / "checkpoints" / "best-held-out" / "best.json").read_text())["step"] == 4
    _grpo(tmp_path, monkeypatch, {4: 0.4, 5: 0.6}, keep=True, start=sft_output, resume=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["held_out_kept"]["kept_step"] == 5
    saved = tensors(folder / "adapter" / "adapter_model.safetensors")
    assert same(saved, tensors(folder / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors"))


def test_a_resume_that_finds_the_run_finished_still_saves_the_kept_check(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         sft_output: Path) -> None:
    # Killed during the final save: the resume trains nothing (its last checkpoint is the last step), so no check
    # runs; the adapter saved must still be the kept one, not the last checkpoint's.
    folder = _grpo(tmp_path, monkeypatch, {0: 0.3, 2: 0.8, 4: 0.5, 5: 0.6}, keep=True, start=sft_output)
    as_killed(folder)
    (folder / "checkpoints" / "best-held-out" / "adapter_config.json").unlink()  # kept as earlier versions kept it
    _grpo(tmp_path, monkeypatch, {}, keep=True, start=sft_output, resume=True)
    saved = tensors(folder / "adapter" / "adapter_model.safetensors")
    assert same(saved, tensors(folder / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors"))
    assert json.loads((folder / "manifest.json").read_text())["held_out_kept"]["kept_step"] == 2
