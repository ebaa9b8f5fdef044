"""One device rule for inference (CUDA, else MPS, else CPU; --device and eval.device win), and its dtype."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE, run_cli

from gsm8k_tr import placement
from gsm8k_tr.errors import UserError


@pytest.mark.parametrize("cuda, mps, requested, expected", [
    (True, True, None, "cuda"),     # a CUDA GPU first
    (False, True, None, "mps"),     # then Apple's GPU
    (False, False, None, "cpu"),    # then the CPU
    (True, False, "cpu", "cpu"),    # --device / eval.device win over what is found
    (True, False, "cuda:1", "cuda:1"),
])
def test_the_device_rule(cuda: bool, mps: bool, requested: str | None, expected: str,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert str(placement.inference_device(requested)) == expected


@pytest.mark.parametrize("requested, message", [
    ("cuda", "no CUDA GPU"),
    ("mps", "MPS is not available"),
    ("gpu", "is not a device"),
])
def test_a_device_that_is_not_there_is_one_line(requested: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match=message):
        placement.inference_device(requested)


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """A CUDA GPU of a given compute capability, as torch's own `is_bf16_supported` sees it: bf16 tensors work on
    every card (emulated through float32 below 8.0, on a T4 or V100)."""
    from types import SimpleNamespace

    def place(major: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
        monkeypatch.setattr(torch.version, "hip", None)
    return place


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])  # T4 and V100; A100; H100
def test_bf16_only_on_a_gpu_that_computes_in_it(gpu, major: int, native: bool, caplog,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    gpu(major)
    assert torch.cuda.is_bf16_supported()  # torch's default answer is yes on every one of them
    assert placement.native_bf16() is native
    assert placement.training_precision({}, "sft") == {"bf16": native, "fp16": not native}  # fp16 with a scaler
    assert placement.inference_dtype(torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)
    # Asked for by the recipe, bf16 runs (emulated), and a T4 or V100 says it is slower than fp16.
    with caplog.at_level("WARNING", logger="gsm8k_tr.placement"):
        assert placement.training_precision({"bf16": True}, "grpo") == {"bf16": True, "fp16": False}
    assert ("emulates it through float32" in caplog.text) is not native
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # a torch without `including_emulation`
    assert placement.native_bf16() is native


@pytest.mark.parametrize("device, requested, expected", [
    ("cpu", "auto", torch.float32),
    ("cpu", "bfloat16", torch.bfloat16),  # eval.dtype wins
    ("mps", "auto", torch.float16),
])
def test_the_inference_dtype(device: str, requested: str, expected: torch.dtype) -> None:
    assert placement.inference_dtype(torch.device(device), requested) == expected


SECTIONS = [{}, {"bf16": True}, {"fp16": True}, {"bf16": False}, {"fp16": False}, {"bf16": False, "fp16": False},
            {"bf16": True, "fp16": False}, {"bf16": False, "fp16": True}]


# (bf16, fp16) each of SECTIONS trains in on an A100 or newer, and on a T4 or V100. Where the GPU has bf16 the recipe's
# keys read as TRL reads them ("bf16: Defaults to True if fp16 is not set"): `fp16: false` alone is bf16, `bf16:
# false` alone fp32. On a T4 the default is fp16, and `fp16: false` alone fp32 rather than TRL's emulated bf16.
NATIVE = [(1, 0), (1, 0), (0, 1), (0, 0), (1, 0), (0, 0), (1, 0), (0, 1)]
EMULATED = [(0, 1), (1, 0), (0, 1), (0, 0), (0, 0), (0, 0), (1, 0), (0, 1)]


@pytest.mark.parametrize("major, expected", [(7, EMULATED), (8, NATIVE)])
def test_the_precision_a_gpu_trains_in_and_the_plan_counts(gpu, major: int, expected: list) -> None:
    gpu(major)
    for section, (bf16, fp16) in zip(SECTIONS, expected, strict=True):
        trains = placement.training_precision(section, "sft")
        assert trains == {"bf16": bool(bf16), "fp16": bool(fp16)}, section
        # The memory plan counts half-precision bytes where the stage trains in bf16 or fp16, and only there.
        assert placement.planned_mixed_precision(section, True, placement.native_bf16()) is bool(bf16 or fp16), section


def test_where_the_gpu_has_bf16_the_keys_read_as_trl_reads_them(tmp_path: Path) -> None:
    # TRL's own config, built on the CPU (use_cpu lets bf16 through there; fp16: true is refused without a GPU).
    import trl

    for section, expected in zip(SECTIONS, NATIVE, strict=True):
        if not section.get("fp16"):
            config = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **section)
            assert (int(config.bf16), int(config.fp16)) == expected, section


@pytest.fixture(params=[False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def cpu_bf16(request, monkeypatch: pytest.MonkeyPatch) -> bool:
    """A CPU with or without bf16 instructions, as torch's own CPU checks report them."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: request.param)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return request.param


def test_bf16_on_a_cpu_only_where_asked_and_computed_in(cpu_bf16: bool, caplog, monkeypatch) -> None:
    # bf16 on a CPU with AVX-512 BF16 or AMX: 2.2x float32 on a decoding step's matmul; without them emulated,
    # 1.6-3.2x slower (docs/benchmarks.md). So a recipe may ask for it where the CPU has it; the default stays fp32,
    # the same numbers on every CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement.cpu_bf16() is cpu_bf16
    assert placement.training_precision({}, "sft") == {"bf16": False, "fp16": False}
    assert placement.inference_dtype(torch.device("cpu")) == torch.float32
    if cpu_bf16:  # transformers takes bf16 on a CPU only with use_cpu
        assert placement.training_precision({"bf16": True}, "grpo") == {"bf16": True, "fp16": False, "use_cpu": True}
    else:
        with pytest.raises(UserError, match="'grpo.bf16' is true but this machine has no CUDA GPU and its CPU no bf16 "
                                            "instructions"):
            placement.training_precision({"bf16": True}, "grpo")
    with caplog.at_level("WARNING"):
        assert placement.inference_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16  # eval.dtype wins
    assert ("this CPU has no bf16 instructions" in caplog.text) is not cpu_bf16
    # The plan counts what trains, and a bf16 that training refuses here as the float32 it would have to be.
    for section in SECTIONS:
        if section.get("fp16"):
            continue  # refused on every CPU
        mixed = placement.planned_mixed_precision(section, on_gpu=False)
        assert mixed is (bool(section.get("bf16")) and cpu_bf16), section
        if mixed:
            assert placement.training_precision(section, "sft")["bf16"]


@pytest.mark.parametrize("arm_bf16", [False, True])
def test_an_arm_cpu_computes_in_bf16_where_torch_reports_the_extension(arm_bf16: bool, monkeypatch) -> None:
    # On Arm, torch's oneDNN check reads cpuinfo's BF16 flag (Neoverse V1, V2); on x86 the same check means AVX-512
    # alone, where bf16 is emulated, so it is asked on Arm only, and the x86 checks are not asked there.
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: arm_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: not arm_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement.cpu_bf16() is arm_bf16
    if arm_bf16:
        assert placement.training_precision({"bf16": True}, "sft")["bf16"]
    else:
        with pytest.raises(UserError, match="AVX-512 BF16, AMX or Arm's BF16"):
            placement.training_precision({"bf16": True}, "sft")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")  # the x86 checks again
    assert placement.cpu_bf16() is not arm_bf16


def test_sft_and_grpo_train_in_bf16_on_a_cpu_that_has_it(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    # TrainingArguments refuses bf16 on a CPU unless use_cpu is set; accelerate then autocasts on the CPU, and
    # GRPO's rollouts take their weight copies in bf16. (Stood in for where this CPU has no bf16: it runs, slower.)
    monkeypatch.setattr(placement, "cpu_bf16", lambda: True)
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    run = ["--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "sft.max_steps=2", "sft.bf16=true",
           "grpo.max_steps=1", "grpo.bf16=true", "eval.every_steps=0"]
    for command in ("sft", "grpo"):
        done = run_cli(command, *run)
        assert done.returncode == 0, done.stderr[-2000:]
    sft = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    grpo = json.loads((tmp_path / "grpo" / "manifest.json").read_text())
    assert sft["precision"] == grpo["precision"] == "bf16"
    assert grpo["rollouts"]["weights_dtype"] == "bfloat16"
    losses = json.loads((tmp_path / "sft" / "log_history.json").read_text())
    assert all(math.isfinite(h["loss"]) for h in losses if "loss" in h)


def test_evaluate_records_its_device_and_dtype(tmp_path: Path, tiny_model_dir: Path) -> None:
    done = run_cli("evaluate", "--config", str(TINY_RECIPE), f"output_dir={tmp_path}", "--model", str(tiny_model_dir),
                   "--limit", "4", "--device", "cpu", "eval.dtype=bfloat16", "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["device"] == "cpu" and metrics["dtype"] == "bfloat16" and metrics["n"] == 4
    # and the per-device decoding choices it ran with (a CPU: eager, torch's kernels, the stop flag every step)
    assert (metrics["decoding"], metrics["attention"], metrics["stop_check"]) == ("eager", None, "every step")
    refused = run_cli("generate", "--config", str(TINY_RECIPE), "--model", str(tiny_model_dir), "--device", "cuda:7",
                      "Ali'nin 3 elması var.")
    if not torch.cuda.is_available():
        assert refused.returncode == 2 and "no CUDA GPU" in refused.stderr and "Traceback" not in refused.stderr
