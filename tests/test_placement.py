"""What runs where: the distributed type a launch trains with, held to accelerate's own AcceleratorState."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from gsm8k_tr import placement, toolchain
from gsm8k_tr.errors import UserError

LAUNCHES = [
    # (PartialState's type under the launch, on CPU, the variables the launch's config sets, what trains, the launch)
    ("MULTI_GPU", False, {"ACCELERATE_USE_FSDP": "true"}, "FSDP", "fsdp.yaml on GPUs, 1 or 8 processes"),
    ("MULTI_CPU", True, {"ACCELERATE_USE_FSDP": "true"}, "MULTI_CPU", "fsdp.yaml on CPUs: unsharded"),
    ("DEEPSPEED", False, {"ACCELERATE_USE_DEEPSPEED": "true"}, "DEEPSPEED", "zero2.yaml on GPUs (torchrun)"),
    ("NO", False, {"ACCELERATE_USE_DEEPSPEED": "true"}, "DEEPSPEED", "DeepSpeed in one process without torchrun"),
    ("MULTI_CPU", True, {"ACCELERATE_USE_DEEPSPEED": "true"}, "MULTI_CPU", "zero2.yaml on CPUs: unsharded"),
    ("MULTI_GPU", False, {}, "MULTI_GPU", "ddp.yaml on GPUs"),
    ("MULTI_CPU", True, {}, "MULTI_CPU", "ddp.yaml on CPUs"),
    ("NO", False, {"ACCELERATE_USE_FSDP": "true"}, "NO", "FSDP asked for, one plain process"),
]

# accelerate's AcceleratorState, built as the Accelerator builds it, over a PartialState of the given type.
ACCELERATE = """
import json, os, sys, torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, TorchDynamoPlugin
class Plugin:  # what AcceleratorState calls on a DeepSpeed plugin
    def set_mixed_precision(self, mixed_precision): pass
    def select(self, **kwargs): pass
found = []
for kind, cpu, env in json.loads(sys.argv[1]):
    os.environ.pop("ACCELERATE_USE_FSDP", None); os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    os.environ.update(env)
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._shared_state.update(distributed_type=DistributedType[kind], device=torch.device("cpu" if cpu else "cuda"),
                                      num_processes=1, process_index=0, local_process_index=0, backend=None,
                                      fork_launched=False, debug=False)
    state = AcceleratorState(cpu=cpu, dynamo_plugin=TorchDynamoPlugin(), deepspeed_plugin=Plugin(), _from_accelerator=True)
    found.append(str(state.distributed_type).rsplit(".", 1)[-1])
print(json.dumps(found))
"""


def test_the_kind_a_launch_trains_with_is_accelerates_own(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [[kind, cpu, env] for kind, cpu, env, _, _ in LAUNCHES]
    done = subprocess.run([sys.executable, "-c", ACCELERATE, json.dumps(cases)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    accelerates = json.loads(done.stdout.strip().splitlines()[-1])
    for (kind, cpu, env, expected, launch), theirs in zip(LAUNCHES, accelerates):
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert placement.accelerate_kind(kind, cpu) == theirs == expected, launch


def _state(kind: str, device: str, processes: int) -> SimpleNamespace:
    """What PartialState holds under a launch (its type is the one accelerate reports, not the Accelerator's)."""
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType[kind], device=torch.device(device),
                           num_processes=processes, process_index=0)


def test_an_fsdp_launch_on_gpus_passes_and_one_on_cpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from gsm8k_tr.processes import check_devices

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    check_devices(_state("MULTI_GPU", "cuda", 8))  # 8 GPUs: what the H200 run refused with 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    check_devices(_state("MULTI_GPU", "cuda", 1))
    with pytest.raises(UserError) as error:
        check_devices(_state("MULTI_CPU", "cpu", 2))
    assert "asks for FSDP, which accelerate runs only on CUDA GPUs" in str(error.value)
    assert "(MULTI_CPU, 2 process(es))" in str(error.value) and "\n" not in str(error.value)


def test_a_launch_is_logged_once_a_process(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gsm8k_tr import processes

    monkeypatch.setattr(processes, "_said", {})  # as a new process starts
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with caplog.at_level(logging.INFO, logger=processes.__name__):
        for _ in range(3):  # the pipeline, a stage's command and its main each check the launch
            processes.check_devices(_state("MULTI_CPU", "cpu", 2))
    assert [r.getMessage() for r in caplog.records] == ["process 0 of 2 (MULTI_CPU) on cpu"]


@pytest.mark.parametrize("activation,fused", [
    ("gelu_new", "gelu_pytorch_tanh"),  # GPT-2's: the same tanh GELU as one kernel
    ("gelu", None),                     # the exact GELU has no cheaper equal: kept
    ("silu", None),                     # Llama's
    (None, None),
])
def test_fused_activation(activation: str | None, fused: str | None) -> None:
    assert placement.fused_activation(activation) == fused


def test_gelu_new_and_its_fused_kernel_agree() -> None:
    from transformers.activations import ACT2FN

    x = torch.randn(64, 128) * 4
    assert torch.allclose(ACT2FN["gelu_new"](x), ACT2FN["gelu_pytorch_tanh"](x), atol=1e-6, rtol=0)


def test_models_load_without_hub_kernels(tiny_model_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    # transformers 5.25 loads models with Hub kernels unless told otherwise (fetched at load: not offline, and not
    # what was measured); every release this project admits accepts `use_kernels=False`, as 5.24's own default.
    from transformers import AutoModelForCausalLM

    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig

    asked = []
    load = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        asked.append(kwargs.get("use_kernels"))
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    model = modeling.load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    assert asked == [False] and not getattr(model, "use_kernels", False)


PATH_KEYS = ("merge_lora", "weights_dtype", "decoding", "kv_cache", "shared_prefill", "grouped_attention", "sampler",
             "attention", "stop_check")
NO_CUDNN = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
LATE, EACH = "deferred", "every step"  # the stop check: read a step late on a GPU, after every step elsewhere


@pytest.mark.parametrize("sharded,vllm,cache,device,decoding,precision,expected", [
    # All measured faster on CPU; fewer kernels and less memory traffic per decoding step on a GPU.
    (False, False, None, "cpu", "auto", "no", (True, None, "eager", "growing", True, True, "inverse_cdf", None, EACH)),
    # A GPU draws torch's per-entry random numbers in parallel; under bf16 the rollouts use bf16 weight copies;
    # CUDA decodes compiled, with its static cache (measured 9.7x faster on an H200), unless the recipe says eager.
    (False, False, None, "cuda", "auto", "bf16", (True, "bfloat16", "compiled", "static", False, False, "multinomial",
                                                 None, LATE)),
    (False, False, None, "cuda", "auto", "fp16", (True, "float16", "compiled", "static", False, False, "multinomial",
                                                 None, LATE)),
    # eager on CUDA: keys one token longer each step, so attention without cuDNN's per-shape set-up; the prompt
    # shared but copied to every row (grouped attention's extra launches are not measured against its bytes there)
    (False, False, None, "cuda", "eager", "bf16", (True, "bfloat16", "eager", "growing", True, False, "multinomial",
                                                  NO_CUDNN, LATE)),
    # FSDP/DeepSpeed: shards, no merge, no weight copies, and no extra forward that one process might skip;
    # each step waits on the peers anyway, so the stop check is read at every step
    (True, False, None, "cuda", "auto", "bf16", (False, None, "eager", "growing", False, False, "multinomial",
                                                 NO_CUDNN, EACH)),
    # vLLM gets merged weights from TRL itself, and decodes and samples itself
    (False, True, None, "cuda", "compiled", "bf16", (False, None, "vllm", "vllm", False, False, "vllm", None,
                                                     "vllm")),
    # a recipe's cache_implementation wins (and holds no prefill to share)
    (False, False, "static", "cpu", "eager", "no", (True, None, "eager", "static", False, False, "inverse_cdf", None,
                                                    EACH)),
    # compiled decoding, asked for by the recipe: its own static cache, on a CPU too
    (False, False, None, "cpu", "compiled", "no", (True, None, "compiled", "static", False, False, "inverse_cdf",
                                                       None, EACH)),
    # but not where each process gathers shards inside the forward
    (True, False, None, "cuda", "compiled", "bf16", (False, None, "eager", "growing", False, False, "multinomial",
                                                     NO_CUDNN, EACH)),
])
def test_the_rollout_path(sharded: bool, vllm: bool, cache: str | None, device: str, decoding: str, precision: str,
                          expected: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "has_triton", lambda: True)  # as on CUDA machines with torch's own wheels
    path = placement.rollout_path(sharded, vllm, cache, torch.device(device), decoding, precision)
    assert path == dict(zip(PATH_KEYS, expected))


@pytest.fixture
def no_c_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """A machine as slim container images are: Triton installed, no C compiler (no CC, no gcc or clang)."""
    import torch.utils._triton

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    return monkeypatch


def test_without_a_c_compiler_auto_decodes_eager_and_compiled_is_one_line(no_c_compiler) -> None:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import recipe_check

    assert toolchain.c_compiler() is None and not toolchain.has_triton()
    assert placement.decoding("auto", torch.device("cuda"), batches=4) == "eager"
    for how in placement.COMPILED_DECODINGS:
        with pytest.raises(UserError, match=f"decoding: {how} compiles kernels with Triton, which needs a C compiler"):
            placement.decoding(how, torch.device("cuda"))
        assert placement.decoding(how, torch.device("cuda"), sharded=True) == "eager"  # nothing compiles there
    assert placement.decoding("compiled", torch.device("cpu")) == "compiled"  # Triton is for GPUs only
    # Said by the recipe check, before training, on a GPU machine.
    no_c_compiler.setattr(placement, "has_cuda", lambda: True)
    recipe = load_recipe(None, [])
    recipe_check._compiling(recipe, SimpleNamespace(), SimpleNamespace())  # auto, nothing compiled: passes
    with pytest.raises(UserError, match="decoding: compiled compiles kernels"):
        recipe_check._compiling(load_recipe(None, ["decoding=compiled"]), SimpleNamespace(), SimpleNamespace())
    with pytest.raises(UserError, match="sft.torch_compile compiles kernels"):
        recipe_check._compiling(recipe, SimpleNamespace(torch_compile=True), SimpleNamespace())
    no_c_compiler.setattr(placement, "has_cuda", lambda: False)
    recipe_check._compiling(load_recipe(None, ["decoding=compiled"]), SimpleNamespace(), SimpleNamespace())
    # CC, as Triton reads it, or a compiler on the PATH.
    no_c_compiler.setenv("CC", "/opt/cc")
    assert toolchain.c_compiler() == "/opt/cc" and toolchain.has_triton()
    assert placement.decoding("auto", torch.device("cuda"), batches=4) == "compiled"


def test_a_model_that_transformers_does_not_compile_decodes_eager(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(placement, "has_triton", lambda: True)
    monkeypatch.setattr(placement, "_refused", set())
    cuda = torch.device("cuda")
    assert placement.decoding("auto", cuda, batches=4) == "compiled"
    with caplog.at_level("WARNING", logger="gsm8k_tr.placement"):
        assert placement.decoding("auto", cuda, batches=4, static_cache=False) == "eager"
        assert not caplog.records  # auto chooses: nothing asked for is refused
        for _ in range(2):
            assert placement.decoding("compiled-step", cuda, static_cache=False) == "eager"
    assert len(caplog.records) == 1 and "compiled-step needs a model" in caplog.text  # said once
    path = placement.rollout_path(False, False, None, cuda, "compiled", "bf16", static_cache=False)
    assert (path["decoding"], path["kv_cache"], path["attention"]) == ("eager", "growing", NO_CUDNN)


@pytest.mark.parametrize("cuda, context, expected", [
    (True, 1024, 128),   # a GPU: batch lengths in steps of 128, so attention's per-shape set-up is done once a
                         # length, and none is 64 modulo 128, where cuDNN's backward gives NaN (pytorch#196678)
    (False, 1024, None),  # a CPU: padding would only be work thrown away
    (True, 960, None),    # a context that 128 does not divide: a padded SFT row could pass the learned positions
])
def test_batches_are_padded_to_a_multiple_on_a_gpu_only(cuda: bool, context: int, expected: int | None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "has_cuda", lambda: cuda)
    assert placement.pad_to_multiple_of(context) == expected
    # GRPO's rows take their positions from the mask (train/positions.py), so any context pads them on a GPU
    assert placement.pad_to_multiple_of(context, stage="grpo") == (128 if cuda else None)


def test_the_attention_kernels_named_for_eager_decoding_exist() -> None:
    from torch.nn.attention import SDPBackend

    names = placement.decoding_attention(torch.device("cuda"), "eager")
    assert names and all(hasattr(SDPBackend, name) for name in names) and "CUDNN_ATTENTION" not in names
    assert placement.decoding_attention(torch.device("cuda"), "compiled") is None
    assert placement.decoding_attention(torch.device("cpu"), "eager") is None


@pytest.mark.parametrize("device, synced, expected", [
    ("cuda", False, "deferred"),   # the host queues the next step instead of waiting for the card
    ("mps", False, "deferred"),    # transformers' own choice on MPS
    ("cpu", False, "every step"),  # a CPU finishes each operation before Python goes on: nothing to overlap
    ("cuda", True, "every step"),  # synced processes wait for their peers' flags at every step anyway
])
def test_the_stop_check_is_deferred_on_gpus(device: str, synced: bool, expected: str) -> None:
    assert placement.stop_check(torch.device(device), synced) == expected
