"""What runs where: every per-device choice, decided here once, and recorded in each stage's manifest.

Open this module to learn what a run does on a machine:

- **training precision** (`training_precision`): bf16 on a GPU that has it natively (`native_bf16`: not a T4 or V100,
  where torch's own check says yes and emulates it), fp16 on other GPUs, fp32 on a CPU (TRL would force bf16), bf16
  there only when the recipe asks and the CPU computes in it (`cpu_bf16`); a recipe's keys as TRL reads them
  (`precision_rule`); the memory plan counts the same, for a GPU it is not on too (`planned_mixed_precision`);
- **inference** (`inference_device`, `inference_dtype`): CUDA, else MPS, else the CPU, or what
  `--device`/`eval.device` ask for; bf16 weights on a GPU that has it, fp16 on other GPUs, float32 on a CPU;
- **several processes** (`accelerate_kind`): the distributed type accelerate's Accelerator will train with.
  `PartialState` reports `MULTI_GPU` under an FSDP launch; only `AcceleratorState`, which the Accelerator builds,
  switches to FSDP (and to DeepSpeed for a one-process launch), so the launch checks ask here;
- **GRPO rollouts** (`rollouts`): the LoRA adapter merged into the weights while generating (one matmul per layer
  instead of three and the adapter's adds), on every device where the weights are whole on each process (not under
  FSDP or DeepSpeed, not with vLLM, which gets merged weights from TRL); the KV cache written in place (`kv_cache`:
  transformers' dynamic cache without its per-step concatenation; a static cache measured no faster on a CPU);
- **decoding** (`decoding`): each decoding step as one compiled graph with a static cache (CUDA graphs;
  `infer/compiled_decoding.py`) on a CUDA GPU, measured 9.7x the eager GRPO step on an H200, and in eager PyTorch
  elsewhere and for a single generation batch, in GRPO's rollouts and every evaluation; a recipe's `decoding` can
  force either, or ask for the whole step (the forward, the draw and the stop bookkeeping) as one compiled graph
  (`compiled-step`, `infer/compiled_step.py`; 1.17x on an H200's evaluation); eager for a model that does not decode in
  one graph (GPT-Neo, sliding-window layers), on a GPU without a C compiler for Triton (a compiled decoding asked for
  there is one line), and for the rest of the process once compiling failed (`compile_failed`);
- **rollout precision** (`rollout_path`): under bf16/fp16 training, GRPO's rollouts run under the trainer's autocast
  with the frozen matmul weights in that dtype for the call (TRL's decoded in float32);
- **prefill** (`rollout_path`): a GRPO group's prompt prefilled once for all its completions, where the cache is the
  growing one and the weights are whole on each process;
- **sampling** (`row_sampling`): one random number per row by inverse CDF on a CPU, where torch's `multinomial` draws
  one per vocabulary entry, one at a time; torch's own on a GPU;
- **batch shapes** (`pad_to_multiple_of`): SFT's and GRPO's batches padded to a multiple of 128 tokens on a CUDA GPU:
  cuDNN's attention sets up each length once, and none is 64 modulo 128, where its backward gives NaN;
- **attention in eager decoding** (`decoding_attention`): on a CUDA GPU, torch's attention kernels without cuDNN's,
  whose set-up would be redone at every step as the keys grow by one token;
- **the stop check** (`stop_check`): on a GPU, `generate` reads whether every row has stopped one step late, so the
  host queues the next step instead of waiting for the card (`infer/stop_check.py`);
- **the LM head in the loss** (`compact_scoring`): TRL's fused LM head over the scored tokens only, also off Triton
  (TRL projects every position there);
- **kernels** (`fused_activation`): GPT-2's tanh GELU (`gelu_new`, six elementwise ops in Python) as PyTorch's one
  fused op, the same function; transformers' Hub kernels off everywhere (`modeling.load_model`);
- **vLLM** (`require_vllm`): the optional extra and a CUDA GPU; **data loading** (`pin_memory`): pinned only with one;
- **memory** (`accelerator_memory`, `available_host_memory`): the GPU's free memory, or the host's on a CPU.

Each stage's manifest records the choices it ran with (`device`, `precision`, `distributed_type`, `lm_head_positions`,
`pad_to_multiple_of`; GRPO's `rollouts`), beside the micro-batch, which is the memory plan's decision
(`train/fitting.py`: on a CPU an auto SFT micro-batch takes at most 4 rows; 32 x 1 trained 0.50-0.61x as fast as 8 x 4).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from typing import Any

from gsm8k_tr.errors import UserError, compiler_failure
from gsm8k_tr.toolchain import has_triton, require_c_compiler

log = logging.getLogger(__name__)

GIB = 2**30


def _torch() -> Any:
    import torch

    return torch


def has_cuda() -> bool:
    """Whether a CUDA GPU is there."""
    return bool(_torch().cuda.is_available())


def native_bf16() -> bool:
    """Whether the CUDA GPU here computes in bf16 itself (compute capability 8.0 or newer: A100, L4, RTX 30xx, H100).
    torch's `is_bf16_supported()` says yes on a T4, V100 or RTX 20xx too, where bf16 is emulated through float32:
    slower than fp16, without cuBLAS's bf16 kernels. Its `including_emulation=False` asks what is asked here."""
    torch = _torch()
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument
        return torch.version.hip is not None or torch.cuda.get_device_capability()[0] >= 8


def cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 itself: AVX-512 BF16 or AMX (AMD Zen 4, Intel Xeon since Cooper Lake), where
    a decoding step's matmul ran 2.2x float32, emulated elsewhere and 1.6-3.2x slower (docs/benchmarks.md); or Arm's
    BF16 extension (Neoverse V1, V2: Graviton 3, 4), not yet measured. torch's own checks, private: absent is no."""
    if platform.machine().lower() in ("aarch64", "arm64"):  # cpuinfo's BF16 flag there (on x86 it means AVX-512 only)
        return bool(getattr(_torch().ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return any(getattr(_torch().cpu, c, lambda: 0)() for c in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def training_precision(section: dict[str, Any], name: str) -> dict[str, bool]:
    """TRL's `bf16`/`fp16` for a stage: the recipe's when set (checked against this machine), else by device:
    bf16 where the GPU has it natively, fp16 (with a gradient scaler) on other GPUs, fp32 on a CPU (the same numbers
    on every CPU); a recipe's bf16 also on a CPU that computes in it (`cpu_bf16`)."""
    torch = _torch()
    cuda, native = torch.cuda.is_available(), native_bf16()
    if section.get("bf16") and not cuda:
        if not cpu_bf16():
            raise UserError(f"recipe key '{name}.bf16' is true but this machine has no CUDA GPU and its CPU no bf16 "
                            "instructions (AVX-512 BF16, AMX or Arm's BF16), where bf16 runs slower than fp32; "
                            "remove it")
        return {"bf16": True, "fp16": False, "use_cpu": True}  # transformers takes bf16 on a CPU only with use_cpu
    if section.get("bf16") and not torch.cuda.is_bf16_supported():
        raise UserError(f"recipe key '{name}.bf16' is true but this GPU has no bf16; remove it")
    if section.get("bf16") and not native:
        log.warning("recipe key '%s.bf16': this GPU has no bf16 arithmetic of its own (compute capability below 8.0), "
                    "so torch emulates it through float32, slower than fp16; remove the key to train in fp16", name)
    if section.get("fp16") and not cuda:
        raise UserError(f"recipe key '{name}.fp16' is true but there is no GPU; remove it (fp32 is used on CPU)")
    return precision_rule(section, cuda, native)


def precision_rule(section: dict[str, Any], cuda: bool, native: bool) -> dict[str, bool]:
    """`training_precision`'s rule alone, for a machine described by `cuda` and `native` (`native_bf16`): by device
    where the recipe sets neither key; else the recipe's, as TRL reads them: `bf16: false` alone is fp32, and
    `fp16: false` alone leaves bf16 on (where the GPU has it natively; fp32 elsewhere)."""
    bf16, fp16 = section.get("bf16"), section.get("fp16")
    if bf16 is None and fp16 is None:
        return {"bf16": cuda and native, "fp16": cuda and not native}
    if bf16 is None:
        return {"bf16": cuda and native and not fp16, "fp16": bool(fp16)}
    return {"bf16": bool(bf16), "fp16": bool(fp16)}


def planned_mixed_precision(section: dict[str, Any], on_gpu: bool, native: bool = True) -> bool:
    """Whether the memory plan counts a stage in bf16 or fp16 (the same bytes) as `training_precision` will run it:
    on a GPU by the rule, `native` saying whether it has bf16 (a GPU the plan is not on is taken to have it); on a
    CPU, bf16 only where this CPU computes in it (training refuses it elsewhere)."""
    flags = precision_rule(section, on_gpu, native)
    return (flags["bf16"] or flags["fp16"]) if on_gpu else (flags["bf16"] and cpu_bf16())


def device_name() -> str:
    """A short description of the device training runs on."""
    torch = _torch()
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def inference_device(requested: str | None = None) -> Any:
    """Where inference runs: `requested` (--device, eval.device) if given, else CUDA, else MPS, else CPU; under
    `accelerate launch` each process its own device."""
    torch = _torch()
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"device {requested!r} is not a device; use cuda, cuda:N, mps or cpu") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {requested!r} was asked for but this machine has no CUDA GPU; use cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"device {requested!r} was asked for but MPS is not available here; use cpu")
        return device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState().device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def inference_dtype(device: Any, requested: str = "auto") -> Any:
    """Inference weights: `requested`, else bf16 on a GPU with it (`native_bf16`), fp16 on another, float32 on a CPU."""
    torch = _torch()
    if requested not in DTYPES:
        raise UserError(f"recipe key 'eval.dtype' must be one of {', '.join(DTYPES)}, got {requested!r}")
    if requested != "auto":
        if requested == "bfloat16" and device.type == "cpu" and not cpu_bf16():
            log.warning("eval.dtype bfloat16: this CPU has no bf16 instructions (AVX-512 BF16, AMX or Arm's BF16), so "
                        "torch emulates them, slower than float32; remove the key to evaluate in float32")
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


# PartialState's types that AcceleratorState turns into FSDP under ACCELERATE_USE_FSDP (accelerate 1.x, state.py).
FSDP_CAPABLE = ("MULTI_GPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_NPU", "MULTI_XPU", "MULTI_HPU",
                "MULTI_NEURON")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def accelerate_kind(partial_kind: str, cpu: bool) -> str:
    """The distributed type the Accelerator will train with, from what `PartialState` reports. `AcceleratorState`
    (built by every trainer's Accelerator) changes it to DEEPSPEED whenever ACCELERATE_USE_DEEPSPEED is set and the
    run is not on the CPU (a one-process DeepSpeed launch is not DEEPSPEED in PartialState), and to FSDP when
    ACCELERATE_USE_FSDP is set and the type is a multi-device one: PartialState alone refuses every FSDP launch on
    GPUs. `tests/test_placement.py` holds this to accelerate's own AcceleratorState, launch by launch."""
    if _flag("ACCELERATE_USE_DEEPSPEED") and not cpu:
        return "DEEPSPEED"
    if partial_kind in FSDP_CAPABLE and _flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    return partial_kind


def requested_kind() -> str | None:
    """The sharding an accelerate launch asked for (its config sets these variables), or None."""
    return next((kind for kind, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"))
                 if _flag(env)), None)


def require_vllm(what: str, fallback: str) -> None:
    """Fail with one line when vLLM or a CUDA GPU is missing; `what` names the setting, `fallback` the way out."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"{what} needs vLLM, an optional extra: pip install -e .[vllm] (on a machine with a CUDA GPU), "
                        f"or {fallback}")
    if not has_cuda():
        raise UserError(f"{what} needs a CUDA GPU and this machine has none; {fallback}")


def pin_memory() -> bool:
    """Pinned host memory only speeds copies to a GPU; without one, torch's DataLoader warns at every stage."""
    return has_cuda()


def accelerator_memory() -> tuple[bool, float | None]:
    """(whether a CUDA GPU is there, its free memory in GiB); (False, None) on CPU."""
    torch = _torch()
    if not torch.cuda.is_available():
        return False, None
    free, _ = torch.cuda.mem_get_info()
    return True, free / GIB


def available_host_memory() -> float:
    """The memory the system has available now, in GiB (what a CPU run can use)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB
    except (ValueError, OSError, AttributeError):  # not Linux: assume a laptop's share
        return 8.0


def kv_cache(cache_implementation: str | None = None) -> str:
    """The KV cache of `generate` in GRPO's rollouts and every evaluation: "growing" (`infer/kv_cache.py`, the
    dynamic cache written in place instead of concatenated at every step; the same tokens), or a recipe's
    `cache_implementation` (GRPOConfig's, e.g. `static`, measured no faster on 2 CPU cores) as it says."""
    return cache_implementation or "growing"


def _device_type(device: Any) -> str:
    """"cpu", "cuda", ... of a torch device or a device name."""
    return getattr(device, "type", str(device))


COMPILED_DECODINGS = ("compiled", "compiled-step")  # the ways that compile, keeping a static cache between calls
DECODINGS = ("auto", "eager", *COMPILED_DECODINGS)
_refused: set[str] = set()  # compiled decodings asked for a model that cannot have them, each said once


def decoding(requested: str, device: Any, sharded: bool = False, batches: int | None = None,
             static_cache: bool = True) -> str:
    """How each decoding step runs on `device`: "eager", "compiled" (`infer/compiled_decoding.py`) or
    "compiled-step" (the whole step one graph, `infer/compiled_step.py`; only where a recipe asks for it).

    `requested` is the recipe's `decoding`. "auto" is compiled on CUDA where Triton can build kernels
    (`auto_compiles`) until compiling failed in this process (`compile_failed`), eager elsewhere and for a call of a
    single generation batch (`batches`), whose one compile (15-33 s) costs more than it saves. Eager where the
    weights are `sharded` (FSDP, ZeRO-3: gathered inside the forward, which a graph compiled for fixed weights does
    not follow) and where the model does not decode from a `static_cache` in one graph (GPT-Neo, sliding-window
    layers: `modeling.runs_on_static_cache`), said once where a recipe asked. A compiled decoding asked for on CUDA
    without a C compiler for Triton is one line."""
    if not static_cache and not sharded and requested in COMPILED_DECODINGS and requested not in _refused:
        _refused.add(requested)
        log.warning("decoding: %s needs a model that decodes from a static KV cache in one compiled graph; this "
                    "one does not (GPT-Neo's local attention, or sliding-window layers, a new graph at every step), "
                    "so it decodes eager", requested)
    if _device_type(device) == "cuda" and requested in COMPILED_DECODINGS and not sharded and static_cache:
        require_c_compiler(f"decoding: {requested}")
    compiles = requested == "auto" and compile_failure is None and auto_compiles(device)
    return decoding_rule(requested, compiles, sharded, batches, static_cache)


def auto_compiles(device: Any) -> bool:
    """Whether "auto" decodes compiled on `device`: a CUDA GPU where Triton can build kernels."""
    return _device_type(device) == "cuda" and has_triton()


compile_failure: str | None = None  # why compiling first failed in this process; "auto" decodes eager from then on


def compile_failed(requested: str, how: str, error: BaseException) -> bool:
    """Whether `error`, raised while decoding `how`, is torch's compiler failing on this machine (a
    `TorchDynamoException`: an Inductor lowering, a Triton kernel the card cannot build), so that the caller decodes
    the batch again eager. Under "auto", eager from then on in this process, said once: a speed-up never stops a run.
    Where the recipe asked for `how`, one line. False for any other error, which the caller raises."""
    reason = compiler_failure(error)
    if how not in COMPILED_DECODINGS or reason is None:
        return False
    if requested != "auto":
        raise UserError(f"decoding: {how} failed to compile on this machine ({reason}); set decoding: eager, or "
                        "auto, which decodes eager after such a failure") from error
    global compile_failure
    if compile_failure is None:
        log.warning("compiling the decoding step failed on this machine (%s); decoding eager from now on "
                    "(decoding: eager skips the attempt)", reason)
        compile_failure = reason
    return True


def decoding_rule(requested: str, compiles: bool, sharded: bool = False, batches: int | None = None,
                  static_cache: bool = True) -> str:
    """`decoding`'s choice where `compiles` says whether "auto" compiles (a CUDA GPU with Triton), without asking
    this machine: the memory plan asks it for the GPU it plans for."""
    if requested not in DECODINGS:  # the recipe check names the key; this is a caller's mistake
        raise ValueError(f"decoding must be one of {DECODINGS}, got {requested!r}")
    if sharded or requested == "eager" or not static_cache:
        return "eager"
    if requested in COMPILED_DECODINGS:
        return requested
    if batches is not None and batches <= 1:
        return "eager"
    return "compiled" if compiles else "eager"


def row_sampling(device: Any) -> bool:
    """Whether sampling in `generate` draws one random number per row (`infer/sampling.py`) instead of torch's one per
    vocabulary entry: on a CPU, where those come one at a time (a quarter of the demo's decoding step)."""
    return _device_type(device) == "cpu"


COMPUTE_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # accelerate's mixed precision: its compute dtype


def rollout_path(sharded: bool, vllm: bool, cache_implementation: str | None = None,
                 device: Any = "cpu", decoding_request: str = "auto", mixed_precision: str = "no",
                 static_cache: bool = True, continuous_batching: bool = False) -> dict[str, Any]:
    """How GRPO generates its rollouts with transformers on `device`, each field as the function of its name says,
    with vLLM's own in their place under vLLM. Where the weights are `sharded` (FSDP, DeepSpeed): no merge, no
    weight copies, no shared prefill or grouped attention. `merge_lora`: the adapter merged for the call and
    unmerged after (PEFT's `merge_adapter`, as TRL does before it syncs vLLM; `train/rollouts.py`). `weights_dtype`:
    under bf16 or fp16 `mixed_precision`, the frozen matmul weights in that dtype for the call. `kv_cache`: "static"
    when compiled. `shared_prefill`: with the growing cache, each group's prompt prefilled once for its rows
    (`infer/shared_prefill.py`); not where sharded, since a process whose rows happen not to repeat would skip the
    extra forward that its peers run, and FSDP's gathers would wait for it. `sampler`: as `row_sampling` says.
    `static_cache`: whether the policy decodes right from a static cache (`decoding`). Under vLLM or transformers'
    `continuous_batching` (TRL's `use_transformers_continuous_batching`), that engine's own path, none of these."""
    for engine, on in (("vllm", vllm), ("continuous-batching", continuous_batching)):
        if on:
            return {"merge_lora": False, "weights_dtype": None, "decoding": engine, "kv_cache": engine,
                    "shared_prefill": False, "grouped_attention": False, "sampler": engine, "attention": None,
                    "stop_check": engine}
    how = decoding(decoding_request, device, sharded, static_cache=static_cache)
    cache = "static" if how != "eager" else kv_cache(cache_implementation)
    return {"merge_lora": not sharded, "weights_dtype": None if sharded else COMPUTE_DTYPES.get(str(mixed_precision)),
            "decoding": how, "kv_cache": cache,
            "shared_prefill": cache == "growing" and not sharded,
            "grouped_attention": not sharded and grouped_attention(device, how, cache),
            "sampler": "inverse_cdf" if row_sampling(device) else "multinomial",
            "attention": decoding_attention(device, how), "stop_check": stop_check(device, sharded)}


def grouped_attention(device: Any, how: str, cache: str) -> bool:
    """Whether rows that repeat a prompt keep it once in the KV cache, read once per step, when `generate` on `device`
    decodes `how` with the `cache` `kv_cache` names (`infer/grouped_attention.py` says why): with compiled-step,
    and eager with the growing cache on a CPU; not in eager decoding on a GPU, bound there by the launches it adds."""
    return how == "compiled-step" or (how == "eager" and cache == "growing" and _device_type(device) == "cpu")


SHAPE_MULTIPLE = 128  # tokens: 8 lengths in a 1,024-token context


def pad_to_multiple_of(context: int, cuda: bool | None = None, stage: str = "sft") -> int | None:
    """TRL's `pad_to_multiple_of` for a `stage`'s batches in a model of `context` tokens: 128 on a CUDA GPU, None
    (each batch padded to its own longest row) elsewhere; `cuda` plans for a CUDA GPU (True) or not.

    On sm90/sm100 (H100, H200, B200) torch's attention tries cuDNN's kernel first, which builds an execution graph per
    new shape (152 ms of a 462 ms SFT step on an H200); padded, a run sees a few lengths, all `cudnn_safe`. A CPU has no
    such cost (0.93x on 2 cores); MPS is left as it was. None for SFT where 128 does not divide the context: it passes
    no position ids, so a padded row past it would index past GPT-2's learned positions (GRPO's follow the mask)."""
    on_cuda = has_cuda() if cuda is None else cuda
    return SHAPE_MULTIPLE if on_cuda and (stage == "grpo" or context % SHAPE_MULTIPLE == 0) else None


def cudnn_safe(multiple: Any) -> bool:
    """Whether batches padded to `multiple` never run 64 modulo 128 tokens long, where cuDNN's sm90 attention backward
    gives NaN gradients for rows that attend to nothing, as GRPO's left padding makes (pytorch#196678)."""
    return isinstance(multiple, int) and multiple > 0 and multiple % SHAPE_MULTIPLE == 0


WITHOUT_CUDNN = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")  # torch's attention kernels but cuDNN's, its order


def decoding_attention(device: Any, how: str) -> list[str] | None:
    """torch's attention kernels (`SDPBackend` names, in order) for `generate` on `device` decoding `how`, or None
    for torch's own choice. Eager decoding on CUDA leaves cuDNN's out: each step's keys are one token longer, a new
    shape, for which cuDNN (tried first on sm90/sm100, see `pad_to_multiple_of`) would build a new execution graph at
    every step; flash or memory-efficient attention set up nothing per shape. Compiled decoding (one shape per call)
    and other devices keep torch's choice. Meant to explain eager decoding's 52 ms a step at the real prompt lengths
    on an H200 against 15 ms with 76-token prompts; not yet measured on a GPU (`benchmarks/gpu_shapes.py`)."""
    if _device_type(device) != "cuda" or how != "eager":
        return None
    return list(WITHOUT_CUDNN)


def stop_check(device: Any, synced: bool = False) -> str:
    """When `generate` on `device` reads whether every row has stopped: "deferred" (a step late, without waiting for
    the device; `infer/stop_check.py`) or "every step". Deferred on a CUDA GPU and on MPS (transformers' own choice
    there): the read after each step makes the host wait for the card before it queues the next; it is the one wait
    left in a compiled step (about 5 ms on an H200 against 0.8-1.3 ms for what it reads). Every step on a CPU (each
    operation done before Python goes on) and where processes are `synced` (FSDP, ZeRO-3: each step waits for the
    peers anyway). Not yet measured on a GPU (`benchmarks/gpu_shapes.py`)."""
    if synced or _device_type(device) not in ("cuda", "mps"):
        return "every step"
    return "deferred"


def compact_scoring(device: Any) -> bool:
    """Whether TRL's fused LM head on `device` should project only the positions that have a label. TRL does so on
    Triton devices and projects every position elsewhere, keeping tile shapes fixed for a compiler such as Neuron's
    (`train/scoring.py`). CPUs and MPS compile nothing: the demo's GRPO training pass took 0.82 s against 0.65 s, the
    same losses (docs/benchmarks.md). CUDA and XPU score compactly, Triton or not; XLA and Neuron keep TRL's choice."""
    return _device_type(device) in ("cpu", "mps", "cuda", "xpu")


def weights_whole() -> bool:
    """Whether each process holds the whole model (no FSDP or DeepSpeed sharding), so an adapter can be merged."""
    return requested_kind() is None


def rollouts(vllm: bool, cache_implementation: str | None, device: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The rollout path on this machine, for this launch, with the policy on `device` (`rollout_path`'s arguments)."""
    return rollout_path(not weights_whole(), vllm, cache_implementation, device, *args, **kwargs)


def fused_activation(activation: str | None) -> str | None:
    """The fused equivalent of a model's activation, or None to keep it. GPT-2's `gelu_new` is tanh GELU as six
    elementwise operations; `gelu_pytorch_tanh` is the same function as one kernel (outputs within 3e-7): on a CPU
    each op streams the activations through memory again, on a GPU each is a launch per layer and decoding step."""
    return "gelu_pytorch_tanh" if activation == "gelu_new" else None
