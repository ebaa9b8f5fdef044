"""Decoding with transformers' compiled forward (`decoding: compiled`) against each whole step one compiled graph
(`decoding: compiled-step`), and eager decoding beside them: same model, same prompts, one run.

    python benchmarks/compiled_step.py --cpu                        # builtin:tiny-gpt2 on the CPU
    python benchmarks/compiled_step.py --cpu --model builtin:demo-gpt2
    python benchmarks/compiled_step.py --model /tmp/gc/model        # a GPU: gpu_check --keep's GPT-2 Medium shape

For each path (eager: the growing cache, as `decoding: eager` runs), as
GRPO's rollouts decode (`--sequences` real prompts padded to a multiple of
64, the model as evaluation loads it: bf16 or fp16 on a GPU):
the first call's seconds (compiled paths compile), then the fastest of `--rounds` calls of
`--new-tokens` sampled tokens at temperature 1 with no stop token (every call
runs every step), in ms a step and generated tokens per second; the greedy
tokens of each compiled path against eager's; and the operators a step runs outside the
compiled graph (torch.profiler, the difference between a long call and a
short one, so that the prefill cancels out), with the kernel launches among
them on a GPU. Prints the ratio of the two speeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import RECIPE, build_model, data_overrides, sft_overrides, sync  # noqa: E402
from profile_steps import LAUNCHES, _decode_inputs  # noqa: E402

PATHS = ("eager", "compiled", "compiled-step")


def configs(tokenizer: Any, new_tokens: int, device: Any, temperature: float) -> dict[str, Any]:
    """Each path's GenerationConfig: sampled at `temperature` (0: greedy), no stop token."""
    from transformers import GenerationConfig

    from gsm8k_tr.infer import compiled_decoding

    sampled = temperature > 0
    plain = GenerationConfig(max_new_tokens=new_tokens, do_sample=sampled, temperature=temperature if sampled else None,
                             top_k=0 if sampled else None, top_p=1.0 if sampled else None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    return {"eager": plain, "compiled": compiled_decoding.generation_config(plain, device), "compiled-step": plain}


def decode(path: str, model: Any, batch: Any, config: Any) -> Any:
    import torch

    from gsm8k_tr import placement
    from gsm8k_tr.infer import compiled_step, kv_cache, sampling

    # Sampled as generation and the rollouts sample on this device (one number a row on a CPU).
    with torch.inference_mode(), sampling.one_draw_per_row(config.do_sample and placement.row_sampling(model.device)):
        if path == "compiled-step":
            return compiled_step.generate(model, batch["input_ids"], batch["attention_mask"], config)
        cache = kv_cache.for_generation(model, batch["input_ids"], config) if path == "eager" else {}
        return model.generate(**batch, generation_config=config, **cache)


def outermost_ops(profile: Any) -> tuple[int, int]:
    """(aten operators not inside another one nor inside a compiled region, kernel launches outside CUDA graphs)."""
    ops = launches = 0
    for event in profile.events():
        if event.name in LAUNCHES[:-1]:
            parent, inside = event.cpu_parent, False
            while parent is not None and not inside:
                inside, parent = parent.name.startswith("Torch-Compiled Region"), parent.cpu_parent
            launches += not inside
        if not event.name.startswith("aten::"):
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None and not nested:
            nested = parent.name.startswith(("aten::", "Torch-Compiled Region"))
            parent = parent.cpu_parent
        ops += not nested
    return ops, launches


def ops_per_step(path: str, model: Any, batch: Any, config: Any, device: Any) -> dict[str, float]:
    """Operators and launches a decoding step runs outside the compiled graph: a call of N steps less one of 8."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    counted = []
    for steps in (8, config.max_new_tokens):
        short = type(config)(**{**config.to_diff_dict(), "max_new_tokens": steps})
        with torch.profiler.profile(activities=activities) as profile:
            decode(path, model, batch, short)
            sync(device)
        counted.append(outermost_ops(profile))
    span = config.max_new_tokens - 8
    return {"ops_outside_graph": round((counted[1][0] - counted[0][0]) / span, 1),
            "launches_outside_graph": (round((counted[1][1] - counted[0][1]) / span, 1)
                                       if device.type == "cuda" else None)}


def measure(model: Any, batch: Any, tokenizer: Any, device: Any, new_tokens: int, rounds: int) -> dict[str, Any]:
    rows = batch["input_ids"].shape[0]
    results: dict[str, Any] = {}
    greedy = configs(tokenizer, new_tokens, device, 0.0)
    sampled = configs(tokenizer, new_tokens, device, 1.0)
    tokens = {}
    for path in PATHS:
        started = time.perf_counter()
        tokens[path] = decode(path, model, batch, greedy[path])  # compiles
        sync(device)
        first = time.perf_counter() - started
        decode(path, model, batch, sampled[path])  # a sampled graph of its own, where the temperature is in it
        best = float("inf")
        for _ in range(rounds):
            sync(device)
            started = time.perf_counter()
            decode(path, model, batch, sampled[path])
            sync(device)
            best = min(best, time.perf_counter() - started)
        results[path] = {"first_call_s": round(first, 1), "ms_per_step": round(1000 * best / new_tokens, 2),
                         "generated_tokens_per_s": round(rows * new_tokens / best),
                         **(ops_per_step(path, model, batch, sampled[path], device) if path != "eager" else {})}
        print(f"{path}: {json.dumps(results[path])}", flush=True)
    width = batch["input_ids"].shape[1]
    for path in PATHS[1:]:
        same = (tokens["eager"][:, width:] == tokens[path][:, width:]).all(dim=1)
        results[path]["same_greedy_rows_as_eager"] = f"{int(same.sum())}/{rows}"
    results["ratio"] = round(results["compiled"]["ms_per_step"] / results["compiled-step"]["ms_per_step"], 2)
    results["ratio_to_eager"] = round(results["eager"]["ms_per_step"] / results["compiled-step"]["ms_per_step"], 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder or builtin: name (default: GPT-2 Medium's shape on a GPU, "
                                        "builtin:tiny-gpt2 with --cpu)")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="on the CPU even where a GPU is")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    import torch

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    with tempfile.TemporaryDirectory(prefix="gsm8k-tr-step-") as tmp:
        model_name = args.model or ("builtin:tiny-gpt2" if device.type == "cpu" else str(Path(tmp) / "model"))
        if not args.model and device.type == "cuda":
            build_model(Path(model_name))
        data, where = data_overrides()
        recipe = load_recipe(str(RECIPE), sft_overrides(Path(tmp), model_name, data, 6, device.type == "cpu"))
        model, tokenizer, batch = _decode_inputs(model_name, recipe, device, args.sequences, PROMPT_MULTIPLE)
        setup = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "model": model_name,
                 "dtype": str(model.dtype).split(".")[-1], "data": where, "sequences": args.sequences,
                 "prompt_tokens": batch["input_ids"].shape[1], "new_tokens": args.new_tokens,
                 "torch": torch.__version__}
        print(f"setup: {json.dumps(setup)}", flush=True)
        results = {"setup": setup, **measure(model, batch, tokenizer, device, args.new_tokens, args.rounds)}
    print(f"compiled-step is {results['ratio']}x the speed of transformers' compiled generate "
          f"({results['compiled-step']['ms_per_step']} against {results['compiled']['ms_per_step']} ms a step) and "
          f"{results['ratio_to_eager']}x eager's ({results['eager']['ms_per_step']}); greedy rows as eager's: "
          f"compiled {results['compiled']['same_greedy_rows_as_eager']}, "
          f"compiled-step {results['compiled-step']['same_greedy_rows_as_eager']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
