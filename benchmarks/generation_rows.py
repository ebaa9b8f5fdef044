"""Rollouts of several GRPO steps generated in one call (GRPOConfig's `steps_per_generation`): decoding 64 rows
against 128 and 256, the device's own decoding path, same model and prompts, one run.

    python benchmarks/generation_rows.py --cpu                          # builtin:tiny-gpt2 on the CPU
    python benchmarks/generation_rows.py --cpu --model builtin:demo-gpt2
    python benchmarks/generation_rows.py --model /tmp/gc/model          # a GPU: gpu_check --keep's GPT-2 Medium shape

The real recipe's GRPO step generates 64 completions (8 prompts x 8). On a
GPU a decoding step of 64 rows of a 355M model waits on the host and on
kernel launches, not on reading the weights (about 5 ms a step compiled on an
H200 against 1.3 ms to read the weights and the static cache once), so more
rows in the same step should cost little more time. TRL's
`steps_per_generation` (in micro-steps; the default is
`gradient_accumulation_steps`, one optimizer step) generates the completions
of several optimizer steps in one call; the later steps then train on
completions one or more updates old, which TRL's clipped importance ratio
accounts for. This measures what that could buy before any recipe uses it:
for each row count, ms a decoding step, generated tokens per second and (on a
GPU) the peak memory, sampled at temperature 1 with no stop token so that
every call runs every step, the fastest of `--rounds` calls after one that
compiles. Prints each row count's tokens/s against the first's.
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

from compiled_step import configs, decode  # noqa: E402
from gpu_check import RECIPE, build_model, data_overrides, sft_overrides, sync  # noqa: E402
from profile_steps import _decode_inputs, real_prompts  # noqa: E402


def one(path: str, model: Any, batch: Any, tokenizer: Any, device: Any, new_tokens: int, rounds: int) -> dict[str, Any]:
    """One row count on `path`: the first call's seconds, then the fastest of `rounds` sampled calls."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = configs(tokenizer, new_tokens, device, 1.0)[path]
    sync(device)
    started = time.perf_counter()
    decode(path, model, batch, config)  # compiles, on a compiled path
    sync(device)
    first = time.perf_counter() - started
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        started = time.perf_counter()
        decode(path, model, batch, config)
        sync(device)
        best = min(best, time.perf_counter() - started)
    rows = batch["input_ids"].shape[0]
    return {"rows": rows, "first_call_s": round(first, 1), "ms_per_step": round(1000 * best / new_tokens, 2),
            "generated_tokens_per_s": round(rows * new_tokens / best),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def measure(model_name: str | None, rows: list[int], new_tokens: int, rounds: int, decoding: str = "auto",
            cpu: bool = False) -> dict[str, Any]:
    """Each row count in `rows` on the device's `decoding` path; the counts after the first rated against it."""
    import torch

    from gsm8k_tr import placement
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE

    device = torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")
    path = placement.decoding(decoding, device)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gsm8k-tr-rows-") as tmp:
        name = model_name or ("builtin:tiny-gpt2" if device.type == "cpu" else str(Path(tmp) / "model"))
        if not model_name and device.type == "cuda":
            build_model(Path(name))
        data, where = data_overrides()
        recipe = load_recipe(str(RECIPE), sft_overrides(Path(tmp), name, data, 6, device.type == "cpu"))
        model, tokenizer, _ = _decode_inputs(name, recipe, device, 1)
        # Every row count at the same width, that of the most rows' prompts, so that the rows alone differ: a call
        # of more prompts is padded to its longest, which costs too (the width is in the setup).
        width = tokenizer(real_prompts(recipe, max(rows)), return_tensors="pt", padding=True, add_special_tokens=False,
                          pad_to_multiple_of=PROMPT_MULTIPLE)["input_ids"].shape[1]
        context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        if context is not None and width + new_tokens > context:
            raise SystemExit(f"prompts of {width} tokens and {new_tokens} new ones are past {name}'s context of "
                             f"{context}; lower --new-tokens or the largest of --rows")
        results["setup"] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                            "model": name, "dtype": str(model.dtype).split(".")[-1], "data": where,
                            "decoding": path, "prompt_tokens": width, "new_tokens": new_tokens,
                            "torch": torch.__version__}
        print(f"setup: {json.dumps(results['setup'])}", flush=True)
        for count in rows:
            batch = tokenizer(real_prompts(recipe, count), return_tensors="pt", padding="max_length",
                              max_length=width, add_special_tokens=False).to(device)
            results[str(count)] = one(path, model, batch, tokenizer, device, new_tokens, rounds)
            print(f"{count} rows: {json.dumps(results[str(count)])}", flush=True)
    base = results[str(rows[0])]
    for count in rows[1:]:
        found = results[str(count)]
        found["tokens_per_s_ratio"] = round(found["generated_tokens_per_s"] / base["generated_tokens_per_s"], 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder or builtin: name (default: GPT-2 Medium's shape on a GPU, "
                                        "builtin:tiny-gpt2 with --cpu)")
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256],
                        help="rows decoded together; the first is the baseline (GRPO's step: 64)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decoding", default="auto", choices=("auto", "eager", "compiled", "compiled-step"),
                        help="the recipe's `decoding` (auto: what this device runs)")
    parser.add_argument("--cpu", action="store_true", help="on the CPU even where a GPU is")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    results = measure(args.model, args.rows, args.new_tokens, args.rounds, args.decoding, args.cpu)
    base = results[str(args.rows[0])]
    for count in args.rows[1:]:
        found = results[str(count)]
        print(f"{count} rows: {found['tokens_per_s_ratio']}x the generated tokens/s of {args.rows[0]} rows "
              f"({found['generated_tokens_per_s']:,} against {base['generated_tokens_per_s']:,}; "
              f"{found['ms_per_step']} against {base['ms_per_step']} ms a step, "
              f"{results['setup']['decoding']} decoding)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
