"""DeepSpeed ZeRO: the models a ZeRO-3 launch must not split, and two CPU processes (gloo) through `accelerate launch`
with the shipped ZeRO-2 config and its ZeRO-3 variant, as on GPUs (`sharded_on_cpu.py`).

The launches need DeepSpeed, which ships no wheel (the test extra installs wheels only): `make test-deepspeed` installs
it beside the environment and runs this file. Without it they skip.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE, same_tensors, tensors
from test_sft_plateau import PLATEAU
from test_distributed import ADAPTER, SHARDED_ON_CPU, _failure, _killed_after_step_20, _launch, \
    keeps_the_scripted_best_check

ZERO2 = ROOT / "recipes" / "accelerate" / "zero2.yaml"
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed: make test-deepspeed")


class ZeroThree:
    """What transformers reads of the DeepSpeed config accelerate selects under a ZeRO-3 launch."""

    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}

    def is_zero3(self) -> bool:
        return True


def test_models_are_built_and_loaded_whole_under_a_zero3_launch(tiny_model_dir: Path) -> None:
    # Under ZeRO-3 transformers builds every model inside deepspeed.zero.Init, which splits each parameter as it is
    # made: the memory plan's meta model had empty 1-D Conv1D weights (a ValueError before training), the base that
    # the adapter is merged into after training was empty (a RuntimeError in PEFT's merge), and the pipeline hung
    # loading GRPO's model (`test_the_pipeline_runs_under_zero3`). DeepSpeed's engine splits the trained one.
    from transformers.integrations import deepspeed

    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig
    from gsm8k_tr.train import memory

    config, active = ModelConfig(name_or_path=str(tiny_model_dir)), ZeroThree()
    whole = modeling.load_model(config)
    deepspeed.set_hf_deepspeed_config(active)
    try:
        with modeling.whole_weights():
            assert not deepspeed.is_deepspeed_zero3_enabled()
        assert deepspeed.is_deepspeed_zero3_enabled()  # given back for the trainer
        shape = memory.Shape.from_config(whole.config)
        loaded = modeling.load_model(config)
    finally:
        deepspeed.unset_hf_deepspeed_config()
    assert shape.parameters == whole.num_parameters() and all(len(linear) == 3 for linear in shape.linears)
    assert same_tensors(loaded.state_dict(), whole.state_dict())


@pytest.fixture(scope="module")
def zero3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped ZeRO-2 config at stage 3: every weight split across the processes too."""
    config = tmp_path_factory.mktemp("zero3") / "zero3.yaml"
    config.write_text(ZERO2.read_text().replace("zero_stage: 2", "zero_stage: 3"))
    return config


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, zero3: Path) -> Path:
    """The tiny recipe's SFT under ZeRO-3 on two CPU processes."""
    run = tmp_path_factory.mktemp("zero3") / "run"
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", config=zero3,
                   program=(str(SHARDED_ON_CPU),))
    assert done.returncode == 0, _failure(done)
    return run


@pytest.mark.slow
@needs_deepspeed
def test_sft_under_zero2_and_zero3_trains_the_adapter_ddp_trains(zero3_run: Path, tmp_path: Path) -> None:
    # Under ZeRO-3 the memory plan failed before training and the merge after it (see the test above).
    import torch

    manifest = json.loads((zero3_run / "sft" / "manifest.json").read_text())
    assert (manifest["distributed_type"], manifest["processes"]) == ("DEEPSPEED", 2)
    for config, run in ((ZERO2, tmp_path / "zero2"), (None, tmp_path / "ddp")):
        done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={run}",
                       **({"config": config, "program": (str(SHARDED_ON_CPU),)} if config else {}))
        assert done.returncode == 0, _failure(done)
    whole = tensors(tmp_path / "ddp" / "sft" / "adapter" / ADAPTER)
    for run in (zero3_run, tmp_path / "zero2"):
        split = tensors(run / "sft" / "adapter" / ADAPTER)
        assert split.keys() == whole.keys()
        assert all(torch.allclose(split[k], whole[k], atol=1e-6) for k in whole)


@pytest.mark.slow
@needs_deepspeed
def test_sft_under_zero3_resumed_from_a_checkpoint_ends_where_it_would_have(zero3_run: Path, zero3: Path,
                                                                           tmp_path: Path) -> None:
    # Step 20 lies inside an epoch: DeepSpeed's engine state, each process's random state and the data order resume.
    run = tmp_path / "run"
    _killed_after_step_20(zero3_run, run)
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "--resume", config=zero3,
                   program=(str(SHARDED_ON_CPU),))
    assert done.returncode == 0, _failure(done)
    assert same_tensors(tensors(run / "sft" / "adapter" / ADAPTER), tensors(zero3_run / "sft" / "adapter" / ADAPTER))


@pytest.mark.slow
@needs_deepspeed
def test_grpo_under_zero3_keeps_its_best_check(zero3_run: Path, zero3: Path) -> None:
    # Before, eval.grpo_keep_best was turned off under ZeRO-3 with a warning. The kept adapter is now written as
    # transformers writes the final one: every process takes part in `trainer.save_model`.
    keeps_the_scripted_best_check(zero3_run, zero3, "DEEPSPEED")


@pytest.mark.slow
@needs_deepspeed
def test_the_pipeline_runs_under_zero3(zero3: Path, tmp_path: Path) -> None:
    # GRPO's model was loaded inside deepspeed.zero.Init once SFT's config had selected the plugin: its broadcasts
    # ran in the main process while the other waited for it to finish loading, and the launch hung.
    done = _launch("pipeline", "--config", str(TINY_RECIPE), f"output_dir={tmp_path / 'run'}", config=zero3,
                   program=(str(SHARDED_ON_CPU),))
    assert done.returncode == 0, _failure(done)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {stage: row["n"] for stage, row in report["stages"].items()} == {"base": 16, "sft": 16, "grpo": 16}
    for stage in ("sft", "grpo"):
        assert json.loads((tmp_path / "run" / stage / "manifest.json").read_text())["distributed_type"] == "DEEPSPEED"


@pytest.mark.slow
@needs_deepspeed
def test_sft_under_zero3_ends_with_its_best_evaluation(zero3: Path, tmp_path: Path) -> None:
    # Only the main process named the best checkpoint by its final path; the other still held the staging folder's,
    # and DeepSpeed's load of the best at the end stopped it ("Can't find a valid checkpoint").
    run = tmp_path / "run"
    done = _launch("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", *PLATEAU, config=zero3,
                   program=(str(SHARDED_ON_CPU),))
    assert done.returncode == 0, _failure(done)
    manifest = json.loads((run / "sft" / "manifest.json").read_text())
    assert manifest["loaded_best"] and manifest["stopped_early"]
    best = run / "sft" / "checkpoints" / f"checkpoint-{manifest['best_step']}"
    assert same_tensors(tensors(run / "sft" / "adapter" / ADAPTER), tensors(best / ADAPTER))
