"""Where an SFT step and a decoding step (eager and compiled) spend their time: torch.profiler, one run.

    python benchmarks/profile_steps.py                      # a GPU: GPT-2 Medium's shape, random weights
    python benchmarks/profile_steps.py --model /tmp/gc/model   # a model folder (gpu_check --keep's)
    python benchmarks/profile_steps.py --cpu                # the same on the CPU with builtin:tiny-gpt2

- sft: steps 3 to 5 of the SFT stage (the recipe of gpu_check: real GSM8K-TR
  rows when the shared sample is there, micro-batch auto) under the profiler;
  per step: wall time, the time the device's kernels ran, kernel launches,
  the operators that took the most host and device time, and the reads of
  a tensor's value into Python by call site (`HostReads`: on a GPU each
  waits for the card, so the host cannot queue ahead of it).
- decode: `--sequences` greedy rollouts of `--new-tokens` tokens from real
  prompts, the model in bfloat16 on a GPU (as evaluation loads it), eager,
  with the growing KV cache and with transformers' dynamic one: ms per
  decoding step over the first, middle and last stretch of the generation
  (does a step slow down as the cache grows?), then the last 20 steps of a
  growing-cache call under the profiler, per step as for sft.
- decode-compiled: the same prompts decoded as GRPO's rollouts decode them on
  a GPU (sampled, compiled, a static cache, CUDA graphs, the stop flag read a
  step late): ms a step after the compiling call, then its last 20 steps
  under the profiler. The share of a step the device is busy says who sets
  the pace: the GPU, or the host's Python in `generate` between graph replays.
- decode-compiled-step: `decoding: compiled-step` at the rollouts' shape
  (groups of 8 rows a prompt, sampled), each group's prompt kept once
  (grouped attention, as placement chooses) and copied per row: ms a step,
  a whole call under the profiler with the kernels that took the most device
  time (a CUDA graph's replay shows kernels, not operators), and the bound of
  reading the weights and the static cache's every position once a step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import RECIPE, bandwidth, build_model, data_overrides, sft_overrides, sync  # noqa: E402

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch")


def summarize(profile: Any, steps: int, wall: float, device: Any) -> dict[str, Any]:
    """Per step: wall ms, device-kernel ms, launches, and the top operators by host time and by the device time of
    the kernels they launched.

    Device time is summed over the device's own events (kernels, copies) only, as torch's table does: an
    operator's self device time is its kernels' time again.
    """
    from torch.autograd import DeviceType

    events = profile.key_averages()
    on_device = device.type == "cuda"
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    operators = [e for e in events if e.device_type == DeviceType.CPU]
    top_host = sorted(operators, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    top_device = sorted(operators, key=lambda e: e.self_device_time_total, reverse=True)[:8] if on_device else []
    # The kernels themselves: a CUDA graph's replay launches them without the operators that recorded them.
    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA), key=lambda e: e.self_device_time_total,
                     reverse=True)[:8]
    return {"steps": steps, "wall_ms_per_step": round(1000 * wall / steps, 2),
            "device_kernel_ms_per_step": round(kernel_us / 1000 / steps, 2) if on_device else None,
            "device_busy_share": round(kernel_us / 1e6 / wall, 3) if on_device else None,
            "launches_per_step": round(launches / steps, 1),
            "top_host_ms_per_step": {e.key[:60]: round(e.self_cpu_time_total / 1000 / steps, 2) for e in top_host},
            "top_device_ms_per_step": {e.key[:60]: round(e.self_device_time_total / 1000 / steps, 2)
                                       for e in top_device},
            "top_kernels_ms_per_step": {e.key[:60]: round(e.self_device_time_total / 1000 / steps, 3)
                                        for e in kernels}}


READS = ("item", "tolist", "__bool__", "__float__", "__int__")  # what copies a tensor's value to the host


class HostReads:
    """Counts, by call site, the reads of a tensor's value on `device` into Python: each waits for the device to
    finish what was queued (a `cudaStreamSynchronize` in the profile). On a CPU every tensor counts, as those
    tensors are on the GPU in a GPU run. The call site is the first frame outside torch."""

    def __init__(self, device: Any) -> None:
        from collections import Counter

        self.device, self.counts = device, Counter()
        self.originals: dict[str, Any] = {}

    def __enter__(self) -> HostReads:
        import torch

        for name in READS:
            self.originals[name] = original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(original))
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, original: Any) -> Any:
        def read(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            if tensor.device.type == self.device.type:
                self.counts[_call_site()] += 1
            return original(tensor, *args, **kwargs)

        return read

    def per_step(self, steps: int) -> dict[str, float]:
        return {site: round(n / steps, 2) for site, n in self.counts.most_common()}


def _call_site() -> str:
    """`package/file.py:line function` of the first frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None and ("/torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    short = path.split("site-packages/")[-1].split("/src/")[-1].removeprefix(f"{ROOT}/")
    return f"{short}:{frame.f_lineno} {frame.f_code.co_name}"


def _activities(device: Any) -> list[Any]:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]


def part_sft(recipe: Any, device: Any) -> dict[str, Any]:
    """Steps 3-5 of the SFT stage under the profiler, through the stage's own trainer."""
    import torch
    from transformers import TrainerCallback

    from gsm8k_tr.train import sft

    first, last, found = 3, 5, {}

    class Profile(TrainerCallback):
        profile: Any = None
        reads: HostReads | None = None
        started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == first - 1:  # global_step counts the steps done: this one is step `first`
                sync(device)
                self.profile = torch.profiler.profile(activities=_activities(device))
                self.profile.__enter__()
                self.reads = HostReads(device).__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == last and self.profile is not None:
                sync(device)
                wall = time.perf_counter() - self.started
                self.reads.__exit__(None, None, None)
                self.profile.__exit__(None, None, None)
                steps = last - first + 1
                found.update(summarize(self.profile, steps, wall, device))
                reads = self.reads.per_step(steps)
                found.update({"micro_batches_per_step": args.gradient_accumulation_steps,
                              "host_reads_per_step": round(sum(reads.values()), 2), "host_reads_by_site": reads})

    original = sft.use_compact_progress

    def with_profile(trainer: Any) -> None:
        original(trainer)
        trainer.add_callback(Profile())

    with patch.object(sft, "use_compact_progress", with_profile):
        manifest = sft.main(recipe, overwrite=True)
    return {"micro_batch": manifest.get("micro_batch"), **found}


class StepTimes:
    """A stopping criterion that never stops, notes the time of each decoding step and steps a profiler's
    schedule."""

    def __init__(self, profile: Any = None) -> None:
        self.times: list[float] = []
        self.profile = profile

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.times.append(time.perf_counter())
        if self.profile is not None:
            self.profile.step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _decode_inputs(model_name: str, recipe: Any, device: Any, sequences: int,
                   multiple: int | None = None) -> tuple[Any, Any, Any]:
    """The model as evaluation loads it (bf16 or fp16 on a GPU), its tokenizer, and `sequences` real prompts
    left-padded (to a multiple of `multiple` tokens, as compiled decoding pads them)."""
    from gsm8k_tr.infer import evaluate

    model, tokenizer, _ = evaluate.load_for_inference(model_name, recipe, str(device))
    model.eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(real_prompts(recipe, sequences), return_tensors="pt", padding=True, add_special_tokens=False,
                      pad_to_multiple_of=multiple).to(device)
    return model, tokenizer, batch


def real_prompts(recipe: Any, count: int) -> list[str]:
    """`count` prompts of the recipe's training questions (the shared sample's real rows when gpu_check's data
    overrides found it), repeated if there are fewer."""
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.data.splits import load_split
    from gsm8k_tr.run_folder import prepared_data

    rows = load_split(prepared_data(recipe), "train")
    prompts = [build_prompt(r["question"], recipe.prompt) for r in rows[:count]]
    return [prompts[i % len(prompts)] for i in range(count)]


def _timed_generate(model: Any, batch: Any, config: Any, device: Any, profile: Any = None,
                    extra: dict[str, Any] | None = None) -> tuple[float, list[float]]:
    """One `generate` call: its seconds and the time each decoding step ended (stepping `profile`'s schedule)."""
    import torch
    from transformers import StoppingCriteriaList

    times = StepTimes(profile)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(**batch, generation_config=config, stopping_criteria=StoppingCriteriaList([times]),
                       **(extra or {}))
    sync(device)
    return time.perf_counter() - started, times.times


def _profile_last_steps(model: Any, batch: Any, config: Any, device: Any, new_tokens: int,
                        extra: Any = lambda: {}) -> dict[str, Any]:
    """The last 20 steps of a call under the profiler (where the cache is longest, and the trace stays small)."""
    import torch

    active = min(20, new_tokens // 4)
    schedule = torch.profiler.schedule(wait=new_tokens - active - 3, warmup=2, active=active, repeat=1)
    with torch.profiler.profile(activities=_activities(device), schedule=schedule) as profile:
        _, times = _timed_generate(model, batch, config, device, profile, extra())
    window = times[new_tokens - active - 2:new_tokens - 1]  # the stamps that open and close the profiled steps
    return summarize(profile, active, window[-1] - window[0], device)


def part_decode(model_name: str, recipe: Any, device: Any, sequences: int, new_tokens: int) -> dict[str, Any]:
    from transformers import GenerationConfig

    from gsm8k_tr.infer import kv_cache

    model, tokenizer, batch = _decode_inputs(model_name, recipe, device, sequences)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=None)

    def run(cache: str, profile: Any = None, tokens: int = new_tokens) -> tuple[float, list[float]]:
        call = GenerationConfig(**{**config.to_diff_dict(), "max_new_tokens": tokens, "min_new_tokens": tokens})
        extra = kv_cache.for_generation(model, batch["input_ids"], call) if cache == "growing" else {}
        return _timed_generate(model, batch, call, device, profile, extra)

    result: dict[str, Any] = {"sequences": sequences, "new_tokens": new_tokens,
                              "prompt_tokens": batch["input_ids"].shape[1], "dtype": str(model.dtype).split(".")[-1]}
    run("growing", tokens=8)  # warm-up
    third = new_tokens // 3
    for cache in ("growing", "dynamic"):
        seconds, times = run(cache)
        gaps = [b - a for a, b in zip(times, times[1:])]
        stretches = {"first": gaps[:third], "middle": gaps[third:2 * third], "last": gaps[2 * third:]}
        result[cache] = {"ms_per_step": round(1000 * seconds / new_tokens, 2),
                         **{f"{k}_ms": round(1000 * sum(v) / max(len(v), 1), 2) for k, v in stretches.items()}}
    result["profile_growing_last_steps"] = _profile_last_steps(
        model, batch, config, device, new_tokens, lambda: kv_cache.for_generation(model, batch["input_ids"], config))
    return result


def part_decode_compiled(model_name: str, recipe: Any, device: Any, sequences: int,
                         new_tokens: int) -> dict[str, Any]:
    """Compiled decoding as GRPO's rollouts run it (sampled at temperature 1, prompts padded to a multiple of 64,
    a static cache, CUDA graphs and the stop flag read a step late on a GPU): ms a step, and where a step's time
    goes once the graph replays. The device-busy share says whether the GPU or the host (generate's own Python
    between replays) sets the pace."""
    from transformers import GenerationConfig

    from gsm8k_tr import placement
    from gsm8k_tr.infer import compiled_decoding, stop_check

    model, tokenizer, batch = _decode_inputs(model_name, recipe, device, sequences, compiled_decoding.PROMPT_MULTIPLE)
    config = compiled_decoding.generation_config(
        GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                         top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=None), device)
    check = placement.stop_check(device)
    with stop_check.deferred(check == "deferred"):
        started = time.perf_counter()
        _timed_generate(model, batch, config, device)  # compiles, and records the graph
        first = time.perf_counter() - started
        seconds, _ = _timed_generate(model, batch, config, device)
        profiled = _profile_last_steps(model, batch, config, device, new_tokens)
    return {"sequences": sequences, "new_tokens": new_tokens, "prompt_tokens": batch["input_ids"].shape[1],
            "stop_check": check, "first_call_s": round(first, 1), "ms_per_step": round(1000 * seconds / new_tokens, 2),
            "generated_tokens_per_s": round(sequences * new_tokens / seconds), "profile_last_steps": profiled}


def part_decode_compiled_step(model_name: str, recipe: Any, device: Any, sequences: int, new_tokens: int,
                              group: int = 8) -> dict[str, Any]:
    """`decoding: compiled-step` at GRPO's rollouts' shape: `sequences / group` real prompts, each in `group`
    consecutive rows, sampled at temperature 1 with no stop token (prompts padded to a multiple of 64), grouped
    attention on (placement's choice for it) and off (a copy of the prompt a row). For each: the compiling call's
    seconds, ms a step of the next call, and a third call whole under the profiler (its prefill included, one
    forward among `new_tokens`), beside what a step must read in the cache's layout (all its positions, filled or
    not) and, on a card of known bandwidth, the time that takes."""
    import torch
    from transformers import GenerationConfig

    from gsm8k_tr import placement
    from gsm8k_tr.infer import attention_kernels, compiled_decoding, compiled_step

    prompts = max(sequences // group, 1)
    model, tokenizer, batch = _decode_inputs(model_name, recipe, device, prompts, compiled_decoding.PROMPT_MULTIPLE)
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0,
                              num_return_sequences=group, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    width = batch["input_ids"].shape[1]
    rows = prompts * group

    def call(grouped: bool) -> tuple[float, int]:
        """One call's seconds and the tokens each row got (fewer than `new_tokens` where every row stopped)."""
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode(), attention_kernels.only(placement.decoding_attention(device, "compiled-step")):
            out = compiled_step.generate(model, batch["input_ids"], batch["attention_mask"], config, grouped=grouped)
        sync(device)
        return time.perf_counter() - started, out.shape[1] - width

    from grouped_attention import cache_bytes  # a sibling that imports this module, so not at the top

    element = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) * element
    layout = cache_bytes(model.config, rows, prompts, width, new_tokens, element)
    rate = bandwidth(device)
    result: dict[str, Any] = {"rows": rows, "groups": prompts, "prompt_tokens": width, "new_tokens": new_tokens,
                              "dtype": str(model.dtype).split(".")[-1], "weight_bytes": weights}
    for way, grouped in (("grouped", True), ("copies", False)):
        first, _ = call(grouped)  # compiles, and records the graph
        seconds, steps = call(grouped)
        with torch.profiler.profile(activities=_activities(device)) as profile:
            wall, profiled = call(grouped)
        result[way] = {"first_call_s": round(first, 1), "steps": steps,
                       "ms_per_step": round(1000 * seconds / max(steps, 1), 3),
                       "generated_tokens_per_s": round(rows * steps / seconds),
                       "kv_bytes_per_step": layout[way],
                       "read_bound_ms": round(1000 * (weights + layout[way]) / rate, 3) if rate else None,
                       "profile_call": summarize(profile, max(profiled, 1), wall, device)}
    result["grouped_ratio"] = round(result["copies"]["ms_per_step"] / result["grouped"]["ms_per_step"], 2)
    return result


DECODE_PARTS = {"decode": part_decode, "decode-compiled": part_decode_compiled,
                "decode-compiled-step": part_decode_compiled_step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: build GPT-2 Medium's shape; --cpu: tiny)")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=384)
    parser.add_argument("--cpu", action="store_true", help="on the CPU, builtin:tiny-gpt2 unless --model")
    parser.add_argument("--parts", nargs="+", choices=("sft", *DECODE_PARTS),
                        default=["sft", *DECODE_PARTS])
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    import torch

    from gsm8k_tr.config import load_recipe

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gsm8k-tr-profile-") as tmp:
        work = Path(tmp)
        model = args.model or ("builtin:tiny-gpt2" if device.type == "cpu" else str(work / "model"))
        if not args.model and device.type == "cuda":
            build_model(work / "model")
        data, where = data_overrides()
        recipe = load_recipe(str(RECIPE), sft_overrides(work, model, data, 6, device.type == "cpu"))
        results["setup"] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                            "model": model, "data": where, "torch": torch.__version__}
        print(f"setup: {json.dumps(results['setup'])}", flush=True)
        for part in args.parts:
            started = time.perf_counter()
            results[part] = (part_sft(recipe, device) if part == "sft" else
                             DECODE_PARTS[part](model, recipe, device, args.sequences, args.new_tokens))
            results[part]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"{part}: {json.dumps(results[part])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
