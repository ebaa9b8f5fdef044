"""bf16 against float32 on a CPU, one run: a matmul, evaluation, SFT steps and GRPO steps, with their ratios.

    python benchmarks/cpu_bf16.py                                  # recipes/smollm2-cpu.yaml (needs ../shared/data)
    python benchmarks/cpu_bf16.py --config recipes/demo.yaml --parts eval sft

On a CPU with bf16 instructions (AVX-512 BF16 or AMX: `placement.cpu_bf16`)
a recipe may train in bf16 (`sft.bf16=true grpo.bf16=true`) and evaluate in
it (`eval.dtype=bfloat16`); the default stays float32, the same numbers on
every CPU. Each part runs both ways on the same model, rows and seed:

- matmul: a decoding step's linear layer (16 rows, SmolLM2's MLP) and a
  training-sized one, ms each way;
- eval: `--questions` greedy answers of the recipe's model on its
  evaluation split, float32 weights against bf16 ones: generated tokens/s
  and how many answers are the same;
- sft: `--sft-steps` SFT steps from the recipe's model, autocast in bf16
  against float32: the seconds of the steps after the first, and the losses;
- grpo: `--grpo-steps` GRPO steps from the float32 SFT's output: seconds a
  step and its generation's, completions' mean length.

Run alone: the CPU's other work moves every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("float32", "bfloat16")
PARTS = ("matmul", "eval", "sft", "grpo")


def part_matmul() -> dict[str, Any]:
    import torch

    found: dict[str, Any] = {}
    for name, rows, inner, outer in (("decoding step, 16 x 576 x 1536", 16, 576, 1536),
                                     ("training, 3072 x 576 x 1536", 3072, 576, 1536)):
        ms = {}
        for way in WAYS:
            dtype = getattr(torch, way)
            x, w = torch.randn(rows, inner, dtype=dtype), torch.randn(outer, inner, dtype=dtype)
            for _ in range(3):
                torch.nn.functional.linear(x, w)
            started, count = time.perf_counter(), 30
            for _ in range(count):
                torch.nn.functional.linear(x, w)
            ms[way] = round((time.perf_counter() - started) / count * 1000, 3)
        found[name] = {**ms, "speedup": round(ms["float32"] / ms["bfloat16"], 2)}
    return found


def part_eval(recipe: Any, questions: int) -> dict[str, Any]:
    import dataclasses

    from gsm8k_tr.data.splits import load_split
    from gsm8k_tr.infer import evaluate
    from gsm8k_tr.run_folder import prepared_data

    rows = load_split(prepared_data(recipe), recipe.eval.split)[:questions]
    found: dict[str, Any] = {}
    answers = {}
    for way in WAYS:
        run = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, dtype=way))
        model, tokenizer, _ = evaluate.load_for_inference(recipe.model.name_or_path, run, "cpu")
        evaluate.evaluate(model, tokenizer, rows[:2], run)  # warm-up
        started = time.perf_counter()
        result, records = evaluate.evaluate(model, tokenizer, rows, run)
        seconds = time.perf_counter() - started
        tokens = result["mean_completion_tokens"] * len(rows)
        found[way] = {"seconds": round(seconds, 1), "generated_tokens_per_s": round(tokens / seconds, 1),
                      "accuracy": result["accuracy"], "strict_format_rate": result["strict_format_rate"]}
        answers[way] = [r["completion"] for r in records]
    found["speedup"] = round(found["bfloat16"]["generated_tokens_per_s"] / found["float32"]["generated_tokens_per_s"], 2)
    found["same_answers"] = f"{sum(a == b for a, b in zip(*answers.values()))}/{len(rows)}"
    return found


def _history(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "log_history.json").read_text())


def part_sft(recipe_file: str, work: Path, steps: int, extra: list[str]) -> dict[str, Any]:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import sft

    found: dict[str, Any] = {}
    for way in WAYS:
        recipe = load_recipe(recipe_file, [f"output_dir={work / way}", f"sft.max_steps={steps}", "sft.logging_steps=1",
                                           "sft.save_steps=1000", "eval.every_steps=0", *extra,
                                           *(["sft.bf16=true"] if way == "bfloat16" else [])])
        manifest = sft.main(recipe, overwrite=True)
        history = _history(work / way / "sft")
        times = [h["step_time"] for h in history if "step_time" in h]
        found[way] = {"precision": manifest["precision"], "seconds_after_first": round(sum(times[1:]), 1),
                      "losses": [round(h["loss"], 3) for h in history if "loss" in h]}
    found["speedup"] = round(found["float32"]["seconds_after_first"] / found["bfloat16"]["seconds_after_first"], 2)
    return found


def part_grpo(recipe_file: str, work: Path, steps: int, extra: list[str]) -> dict[str, Any]:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import grpo

    start = work / "float32" / "sft"
    if not (start / "manifest.json").is_file():
        raise SystemExit("the grpo part starts from the sft part's float32 output: run --parts sft grpo")
    found: dict[str, Any] = {}
    for way in WAYS:
        folder = work / f"grpo-{way}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(start, folder / "sft")
        recipe = load_recipe(recipe_file, [f"output_dir={folder}", f"grpo.max_steps={steps}", "grpo.logging_steps=1",
                                           "grpo.save_steps=1000", "eval.every_steps=0", *extra,
                                           *(["grpo.bf16=true"] if way == "bfloat16" else [])])
        manifest = grpo.main(recipe, overwrite=True)
        logged = [h for h in _history(folder / "grpo") if "step_time" in h]
        found[way] = {"precision": manifest["precision"], "weights_dtype": manifest["rollouts"]["weights_dtype"],
                      "step_s": round(sum(h["step_time"] for h in logged) / len(logged), 1),
                      "generation_s": round(sum(h["time/generation_s"] for h in logged) / len(logged), 1),
                      "mean_length": round(sum(h["completions/mean_length"] for h in logged) / len(logged), 1)}
    found["speedup"] = round(found["float32"]["step_s"] / found["bfloat16"]["step_s"], 2)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "smollm2-cpu.yaml"))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--work", help="a folder for the runs (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args()
    import torch

    from gsm8k_tr import placement
    from gsm8k_tr.config import load_recipe

    if not placement.cpu_bf16():
        print("this CPU has no bf16 instructions (AVX-512 BF16 or AMX): bf16 is emulated here, slower than float32")
    work = Path(args.work or tempfile.mkdtemp(prefix="gsm8k-tr-cpu-bf16-"))
    recipe = load_recipe(args.config, [f"output_dir={work / 'eval'}", *args.overrides])
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_bf16": placement.cpu_bf16(),
                      "model": recipe.model.name_or_path}))
    results: dict[str, Any] = {}
    for part in args.parts:
        if part == "matmul":
            results[part] = part_matmul()
        elif part == "eval":
            results[part] = part_eval(recipe, args.questions)
        elif part == "sft":
            results[part] = part_sft(args.config, work, args.sft_steps, args.overrides)
        else:
            results[part] = part_grpo(args.config, work, args.grpo_steps, args.overrides)
        print(f"{part}: {json.dumps(results[part])}", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
