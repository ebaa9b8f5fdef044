"""Greedy evaluation of a finished run four ways on one device, against the run's own answers, in one run.

    python benchmarks/eval_paths.py runs/demo                  # after `make demo`: its sft and grpo stages
    python benchmarks/eval_paths.py runs/demo --device cuda    # on a GPU, in its default dtype (bfloat16)

For each stage of the run (`{run}/sft`, `{run}/grpo`) whose evaluation is there
(`{run}/eval/{stage}`, the reference: the answers `make demo` graded, float32
on its machine), it answers the recipe's test split
(a) today: eager, transformers' dynamic KV cache;
(b) fast: eager, the KV cache written in place (`infer/kv_cache.py`);
(c) compiled: `decoding: compiled` (a static cache and torch.compile, CUDA
    graphs on a GPU);
(d) compiled-step: `decoding: compiled-step` (the whole decoding step one
    compiled graph, `infer/compiled_step.py`);
each timed on a second call after a first that warms up (and compiles), and
prints, for each, the accuracy, how many completions and graded answers match
the reference and (a), and generated tokens/s with the ratio to (a).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("today", "fast", "compiled", "compiled-step")


def _predictions(folder: Path) -> list[dict[str, Any]]:
    with open(folder / "predictions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _same(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, str]:
    """Matching completions, and matching graded answers (the extracted answer and its verdict), as "k/n"."""
    n = len(reference)
    completions = sum(a["completion"] == b["completion"] for a, b in zip(rows, reference))
    graded = sum((a["extracted"], a["correct"]) == (b["extracted"], b["correct"]) for a, b in zip(rows, reference))
    return {"completions": f"{completions}/{n}", "graded": f"{graded}/{n}"}


def answer(run: Path, stage: str, path: str, config: str, device: str | None, work: Path) -> dict[str, Any]:
    """Evaluate `{run}/{stage}` on the test split along `path`; its metrics, with the timed call's seconds."""
    from gsm8k_tr import placement
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate

    decoding = path if path in placement.COMPILED_DECODINGS else "eager"
    recipe = load_recipe(config, [f"output_dir={run}", f"decoding={decoding}"])
    todays_cache = lambda cache_implementation=None: cache_implementation or "dynamic"  # noqa: E731
    with patch.object(placement, "kv_cache", todays_cache) if path == "today" else nullcontext():
        started = time.perf_counter()  # a first call warms up (and compiles, for compiled decoding); untimed
        evaluate.main(str(run / stage), recipe, output=str(work / f"{stage}-{path}-first"), overwrite=True,
                      device=device)
        first = time.perf_counter() - started
        started = time.perf_counter()
        metrics = evaluate.main(str(run / stage), recipe, output=str(work / f"{stage}-{path}"), overwrite=True,
                                device=device)
        seconds = time.perf_counter() - started
    tokens = metrics["mean_completion_tokens"] * metrics["n"]
    return {"accuracy": round(metrics["accuracy"], 4), "dtype": metrics["dtype"], "device": metrics["device"],
            "decoding": metrics.get("decoding"), "seconds": round(seconds, 2),
            "generated_tokens_per_s": round(tokens / seconds), "first_call_s": round(first, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run's output folder (runs/demo after `make demo`)")
    parser.add_argument("--config", default=str(ROOT / "recipes" / "demo.yaml"), help="the run's recipe")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA, else MPS, else CPU)")
    parser.add_argument("--stages", nargs="+", default=["sft", "grpo"])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    run = Path(args.run)
    stages = [s for s in args.stages if (run / "eval" / s / "predictions.jsonl").is_file() and (run / s).is_dir()]
    if not stages:
        print(f"eval_paths: {run} has none of {', '.join(args.stages)} with its evaluation under {run}/eval/; "
              "run `make demo` (or the pipeline) first", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gsm8k-tr-eval-paths-") as tmp:
        work = Path(tmp)
        for stage in stages:
            reference = _predictions(run / "eval" / stage)
            for path in args.paths:
                result = answer(run, stage, path, args.config, args.device, work)
                rows = _predictions(work / f"{stage}-{path}")
                result["same_as_reference"] = _same(rows, reference)
                if path != "today" and "today" in args.paths:
                    result["same_as_today"] = _same(rows, _predictions(work / f"{stage}-today"))
                    result["speed_vs_today"] = round(
                        result["generated_tokens_per_s"] / results[f"{stage}/today"]["generated_tokens_per_s"], 2)
                results[f"{stage}/{path}"] = result
                print(f"{stage}/{path}: {json.dumps(result)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
