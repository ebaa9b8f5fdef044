"""GRPO's eager decoding with each group's prompt read once per group, against once per row, in one run.

    python benchmarks/grouped_attention.py                  # builtin:demo-gpt2, 8 prompts x 8 rollouts
    python benchmarks/grouped_attention.py --gpt2-medium    # a GPT-2 Medium-shaped model (random weights)
    python benchmarks/grouped_attention.py --grpo-steps 10 --start runs/demo/sft   # and demo GRPO steps
    python benchmarks/grouped_attention.py --model builtin:smollm2-135m --set model.stop_token=null
    python benchmarks/grouped_attention.py --decoding compiled-step   # in the whole compiled step's static cache
    python benchmarks/grouped_attention.py --samples --new-tokens 128  # evaluation's samples of each prompt

Eagerly, both paths prefill each distinct prompt once (`infer/shared_prefill.py`)
and write the KV cache in place (`infer/kv_cache.py`). With `--decoding
compiled-step` both decode in its compiled steps on a static cache
(`infer/compiled_step.py`; the first call of each compiles), and the copies
prefill every row, as compiled-step did before. They differ in what the
decoding steps read:
(a) copies: every row holds a copy of its prompt's keys and values, and
    torch's attention reads each row's;
(b) grouped: each group of rows holds one copy, read once per group
    (`infer/grouped_attention.py`).
The prompts are the shared sample's real GSM8K-TR rows when it is there
(gpu_check's data), else generated problems, each repeated `--group` times
in consecutive rows as TRL hands them to `generate`. Every row runs to
`--new-tokens` (no stop token). It prints ms per decoding step and generated
tokens/s of each (the fastest of `--rounds` sampled calls, alternating), the
ratio, how many greedy rows are the same, and the keys and values a step
reads on each path, counted at the last step.

With `--samples`, it instead draws `--group` samples of each prompt as
evaluation's `samples` and the prompt filter draw them (`infer/generation.py`,
stopping at the model's stop tokens) and prints seconds per call and whether
the completions are the same; on the per-row path generate prefills every
row there.

With `--grpo-steps`, it also runs that many steps of the demo recipe's GRPO
from `--start` on each path, each in its own process, alternating for
`--rounds` (`benchmarks/rollouts.py`'s runs), and prints seconds per step
(the first is a warm-up) and the time spent generating.
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

from gpu_check import build_model, sync  # noqa: E402
from gpu_shapes import _recipe  # noqa: E402
from profile_steps import real_prompts  # noqa: E402
from rollouts import grpo_child, grpo_steps  # noqa: E402

PATHS = {"copies": False, "grouped": True}  # path: grouped


def cache_bytes(config: Any, rows: int, groups: int, prompt: int, new: int, element: int) -> dict[str, int]:
    """Bytes of keys and values a decoding step reads at its last step on each path: every row's prompt and own
    tokens (copies), or each group's prompt once and every row's own tokens (grouped).

    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(num_hidden_layers=1, hidden_size=4, num_attention_heads=2)  # GPT-2: a KV head a head
    >>> cache_bytes(config, rows=4, groups=2, prompt=10, new=2, element=2)
    {'copies': 768, 'grouped': 448}
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads  # fewer under grouped-query attention
    width = kv_heads * getattr(config, "head_dim", None) if getattr(config, "head_dim", None) else (
        config.hidden_size * kv_heads // heads)
    per_position = 2 * config.num_hidden_layers * width * element  # keys and values, every layer
    return {"copies": rows * (prompt + new) * per_position,
            "grouped": (groups * prompt + rows * new) * per_position}


def _load(model_name: str, prompts: int, cpu: bool, overrides: tuple[str, ...]) -> tuple[Any, Any, Any, list[str]]:
    """(device, model, tokenizer, `prompts` real prompts): the model as evaluation loads it (bf16 on a GPU)."""
    import torch

    from gsm8k_tr.infer import evaluate

    device = torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")
    with tempfile.TemporaryDirectory() as work:
        recipe = _recipe(Path(work), model_name, 1, device.type == "cpu", *overrides)
        model, tokenizer, _ = evaluate.load_for_inference(model_name, recipe, str(device))
        texts = real_prompts(recipe, prompts)
    model.eval()
    tokenizer.padding_side = "left"
    return device, model, tokenizer, texts


def measure(model_name: str, prompts: int, group: int, new_tokens: int, rounds: int, cpu: bool,
            overrides: tuple[str, ...] = (), decoding: str = "eager") -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    from gsm8k_tr import placement
    from gsm8k_tr.infer import attention_kernels, compiled_step
    from gsm8k_tr.infer.compiled_decoding import PROMPT_MULTIPLE
    from gsm8k_tr.infer.kv_cache import growing_cache

    device, model, tokenizer, distinct = _load(model_name, prompts, cpu, overrides)
    texts = [text for text in distinct for _ in range(group)]
    step = decoding == "compiled-step"  # its prompts padded to a multiple of 64, as the rollouts pad them
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                      pad_to_multiple_of=PROMPT_MULTIPLE if step else None).to(device)

    def run(grouped: bool, sample: bool) -> tuple[float, Any]:
        # No stop token: every row runs to the limit (min_new_tokens too for generate, which compiled-step refuses).
        config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=None if step else new_tokens,
                                  do_sample=sample, temperature=0.7 if sample else None, top_k=0 if sample else None,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        torch.manual_seed(0)
        with torch.inference_mode(), attention_kernels.only(placement.decoding_attention(device, decoding)):
            sync(device)
            started = time.perf_counter()
            if step:
                out = compiled_step.generate(model, batch["input_ids"], batch["attention_mask"], config,
                                             grouped=grouped)
            else:
                with growing_cache(model, share_prompts=True, grouped=grouped):
                    out = model.generate(**batch, generation_config=config)
            sync(device)
        return time.perf_counter() - started, out[:, batch["input_ids"].shape[1]:]

    first = {path: round(run(grouped, True)[0], 2) for path, grouped in PATHS.items()}  # warm-up
    greedy = {path: run(grouped, False)[1] for path, grouped in PATHS.items()}
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path, grouped in PATHS.items():
            seconds[path].append(run(grouped, True)[0])
    rows, width = batch["input_ids"].shape
    element = next(model.parameters()).element_size()
    result: dict[str, Any] = {
        "model": model_name, "device": str(device), "decoding": decoding, "rows": rows, "groups": prompts,
        "prompt_tokens": width, "new_tokens": new_tokens, "dtype": str(next(model.parameters()).dtype),
        "threads": torch.get_num_threads(), "first_call_s": first,
        "same_greedy_rows": int((greedy["copies"] == greedy["grouped"]).all(-1).sum()),
        "kv_bytes_last_step": cache_bytes(model.config, rows, prompts, width, new_tokens, element)}
    for path, times in seconds.items():
        best = min(times)
        result[path] = {"ms_per_step": round(1000 * best / new_tokens, 2),
                        "tokens_per_s": round(rows * new_tokens / best)}
    result["ratio"] = round(result["copies"]["ms_per_step"] / result["grouped"]["ms_per_step"], 2)
    return result


def measure_samples(model_name: str, prompts: int, group: int, new_tokens: int, rounds: int, cpu: bool,
                    overrides: tuple[str, ...] = (), decoding: str = "eager") -> dict[str, Any]:
    """`group` samples of each of `prompts` prompts as evaluation and the prompt filter draw them
    (`infer/generation.py`, the model's stop tokens, at temperature 0.7), each prompt kept once or copied."""
    from unittest.mock import patch

    from gsm8k_tr import placement
    from gsm8k_tr.infer import generation

    device, model, tokenizer, distinct = _load(model_name, prompts, cpu, overrides)

    def run(grouped: bool) -> tuple[float, list[list[Any]]]:
        with patch.object(placement, "grouped_attention", lambda *args: grouped):
            sync(device)
            started = time.perf_counter()
            found = generation.generate(model, tokenizer, distinct, new_tokens, batch_size=prompts, temperature=0.7,
                                        samples=group, decoding=decoding)
            sync(device)
        return time.perf_counter() - started, found

    first = {path: round(run(grouped)[0], 2) for path, grouped in PATHS.items()}  # warm-up
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    found: dict[str, Any] = {}
    for _ in range(rounds):
        for path, grouped in PATHS.items():
            took, found[path] = run(grouped)
            seconds[path].append(took)
    texts = {path: [c.text for row in rows for c in row] for path, rows in found.items()}
    tokens = sum(c.tokens for row in found["grouped"] for c in row)
    result: dict[str, Any] = {"model": model_name, "device": str(device), "decoding": decoding, "prompts": prompts,
                              "samples": group, "max_new_tokens": new_tokens, "generated_tokens": tokens,
                              "first_call_s": first,
                              "same_completions": f"{sum(a == b for a, b in zip(texts['copies'], texts['grouped']))}"
                                                  f"/{len(texts['copies'])}"}
    for path, times in seconds.items():
        result[path] = {"s_per_call": round(min(times), 3), "tokens_per_s": round(tokens / min(times))}
    result["ratio"] = round(result["copies"]["s_per_call"] / result["grouped"]["s_per_call"], 2)
    return result


def grpo_on(path: str, start: str, steps: int, work: Path) -> dict[str, Any]:
    """`steps` demo GRPO steps from `start` in this process, the prompts kept once per group or copied (`path`)."""
    from gsm8k_tr import placement

    chosen = placement.rollout_path

    def rollout_path(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**chosen(*args, **kwargs), "grouped_attention": PATHS[path]}

    placement.rollout_path = rollout_path
    return grpo_steps(path, start, steps, work)


def compare_grpo(start: str, steps: int, rounds: int) -> dict[str, Any]:
    """Seconds per demo GRPO step (and generating) on each path, each run in its own process, alternating."""
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(rounds):
            for path in PATHS:
                runs[path].append(grpo_child([sys.executable, __file__, "--grpo-child", path, start, str(steps), work],
                                             path))
    result: dict[str, Any] = {}
    for path, results in runs.items():
        result[path] = {key: round(sum(r[key] for r in results) / len(results), 3)
                        for key in ("step_s", "generation_s", "mean_completion_tokens")}
        result[path]["runs_step_s"] = [r["step_s"] for r in results]
        result[path]["rollouts"] = results[0]["rollouts"]
    result["ratio"] = round(result["copies"]["step_s"] / result["grouped"]["step_s"], 2)
    result["generation_ratio"] = round(result["copies"]["generation_s"] / result["grouped"]["generation_s"], 2)
    return result


def main() -> int:
    if sys.argv[1:2] == ["--grpo-child"]:
        path, start, steps, work = sys.argv[2:6]
        print("RESULT " + json.dumps(grpo_on(path, start, int(steps), Path(work))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:demo-gpt2")
    parser.add_argument("--gpt2-medium", action="store_true", help="a random GPT-2 Medium (gpu_check's model)")
    parser.add_argument("--prompts", type=int, default=8, help="distinct prompts (groups)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt (num_generations)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="on the CPU even where a GPU is")
    parser.add_argument("--decoding", choices=("eager", "compiled-step"), default="eager",
                        help="eager: the growing cache, prefilled once per prompt; compiled-step: its static cache")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for the model (SmolLM2: model.stop_token=null)")
    parser.add_argument("--samples", action="store_true",
                        help="instead: --group samples of each prompt as evaluation draws them (infer/generation.py)")
    parser.add_argument("--grpo-steps", type=int, default=0, help="demo GRPO steps per path and round (0: none)")
    parser.add_argument("--start", default="runs/demo/sft", help="the SFT output the GRPO steps start from")
    args = parser.parse_args()
    model = args.model
    with tempfile.TemporaryDirectory() as work:
        if args.gpt2_medium:
            model = str(Path(work) / "gpt2-medium")
            build_model(Path(model))
        how = measure_samples if args.samples else measure
        result = how(model, args.prompts, args.group, args.new_tokens, args.rounds, args.cpu, tuple(args.set),
                     args.decoding)
    print(json.dumps(result, indent=1))
    if args.samples:
        print(f"grouped attention: {result['ratio']}x the samples per second of per-row copies "
              f"({result['copies']['s_per_call']} -> {result['grouped']['s_per_call']} s for {args.prompts} prompts "
              f"x {args.group} samples); {result['same_completions']} completions the same")
    else:
        print(f"grouped attention: {result['ratio']}x the decoding steps per second of per-row copies "
              f"({result['copies']['ms_per_step']} -> {result['grouped']['ms_per_step']} ms a step); "
              f"{result['same_greedy_rows']}/{result['rows']} greedy rows the same")
    if args.grpo_steps:
        grpo = compare_grpo(args.start, args.grpo_steps, args.rounds)
        print(json.dumps(grpo, indent=1))
        print(f"demo GRPO: {grpo['ratio']}x the steps per second of per-row copies ({grpo['copies']['step_s']} -> "
              f"{grpo['grouped']['step_s']} s a step; generating {grpo['generation_ratio']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
