"""Does generating several optimizer steps' rollouts in one call cost accuracy? GRPO from one SFT start, over seeds.

    python benchmarks/steps_per_generation.py --start runs/demo            # after make demo: seeds 42 43 44, x1 and x2
    python benchmarks/steps_per_generation.py --start runs/demo --seeds 42 43 44 45 46 --factors 1 2 4

TRL's `steps_per_generation` (in micro-steps; by default the gradient
accumulation, one optimizer step) generates the completions of that many
micro-steps in one call. On a GPU a decoding step of 64 rows is bound by its
launches, not its rows (docs/benchmarks.md, "GPU"), so a call of 128 rows
should cost little more a step than one of 64: the rollouts' lever on
generated tokens per second. It changes the algorithm: every optimizer step
after the first of a call trains on completions sampled by weights one or more
updates old, which TRL's clipped importance ratio accounts for (it scores the
generation batch once more without gradients for the ratio's denominator).
This measures what that costs in accuracy, where it can be measured without a
GPU: the same recipe, start, seeds and number of optimizer steps and
completions, with `steps_per_generation` at each `--factors` multiple of the
recipe's gradient accumulation (x1 is the recipe as it is).

For each seed and factor: GRPO from `{start}/sft` on `{start}/data` (the
in-training held-out check off), graded on the test split. Prints each run's
test accuracy, train seconds and rollout calls, each factor's mean over seeds,
and each factor against x1 question by question over all seeds (the pooled
exact sign test of `gsm8k-tr compare`). Writes `{output}/steps_per_generation.json`.
On a CPU the seconds are no guide to a GPU's: there a decoding step is
arithmetic, and more rows cost in proportion.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, start: Path, seed: int, factor: int, out: Path) -> dict[str, Any]:
    """GRPO from the start with `steps_per_generation` = factor x the gradient accumulation; its test accuracy."""
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate
    from gsm8k_tr.train import fitting, grpo

    folder = out / f"seed-{seed}-x{factor}"
    recipe = load_recipe(config, [f"output_dir={folder}", f"model.sft_output={start / 'sft'}",
                                  f"data.dataset={start / 'data'}", "eval.every_steps=0", f"seed={seed}"])
    if fitting.wants_auto(recipe.grpo):  # the split into micro-batches is chosen later
        raise SystemExit(f"{config}: grpo.per_device_train_batch_size must be a number here (steps_per_generation "
                         "counts micro-batches)")
    accumulation = int(recipe.grpo.get("gradient_accumulation_steps", 1))
    recipe.grpo["steps_per_generation"] = factor * accumulation
    manifest = grpo.main(recipe, resume=True)
    metrics = evaluate.main(str(folder / "grpo"), recipe, output=str(folder / "eval"), overwrite=True)
    steps = manifest["global_step"]
    return {"seed": seed, "factor": factor, "steps_per_generation": factor * accumulation, "steps": steps,
            "rollout_calls": -(-steps // factor), "seconds": manifest["train_seconds"],
            "test_accuracy": metrics["accuracy"], "eval": str(folder / "eval")}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per factor: mean and spread of test accuracy and seconds, and against x1 over the seeds, question by question."""
    from gsm8k_tr.infer.compare import folder_scores, pooled

    by_factor: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_factor.setdefault(r["factor"], []).append(r)
    base = {r["seed"]: r for r in by_factor.get(1, [])}
    found: dict[str, Any] = {}
    for factor, rows in sorted(by_factor.items()):
        accuracy = [r["test_accuracy"] for r in rows]
        entry = {"seeds": [r["seed"] for r in rows], "accuracy_mean": statistics.fmean(accuracy),
                 "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                 "seconds_mean": statistics.fmean(r["seconds"] for r in rows)}
        pairs = [(base[r["seed"]], r) for r in rows if factor != 1 and r["seed"] in base]
        if pairs:
            entry["minus_x1"] = [round(r["test_accuracy"] - b["test_accuracy"], 4) for b, r in pairs]
            together = pooled([(folder_scores(b["eval"]), folder_scores(r["eval"])) for b, r in pairs])
            entry["against_x1"] = together.as_dict() if together is not None else None
        found[f"x{factor}"] = entry
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--start", required=True, help="a run folder with sft/ and data/ (make demo's runs/demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2],
                        help="steps_per_generation as multiples of the gradient accumulation (1: the recipe's)")
    parser.add_argument("--output", default=str(ROOT / "runs" / "steps-per-generation"))
    args = parser.parse_args()
    start = Path(args.start)
    for needed in (start / "sft", start / "data"):
        if not needed.is_dir():
            parser.error(f"{needed} is not there: --start takes a run folder with sft/ and data/ (after make demo)")
    if any(f < 1 for f in args.factors):
        parser.error("--factors must be 1 or more")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    runs = []
    for seed in args.seeds:  # each seed's factors one after another, so that a slower spell hits them alike
        for factor in args.factors:
            runs.append(run(args.config, start, seed, factor, out))
            r = runs[-1]
            print(f"seed {seed} x{factor}: test {r['test_accuracy']:.3f}, {r['seconds']:.0f} s, "
                  f"{r['rollout_calls']} rollout calls", flush=True)
    found = summary(runs)
    for name, entry in found.items():
        line = (f"{name}: test {entry['accuracy_mean']:.3f} ± {entry['accuracy_std']:.3f}, "
                f"{entry['seconds_mean']:.0f} s")
        if entry.get("against_x1"):
            vs = entry["against_x1"]
            line += (f"; against x1 {entry['minus_x1']}, questions better / worse {vs['gained']} / {vs['lost']}, "
                     f"p = {vs['p_value']:.3g}")
        print(line)
    (out / "steps_per_generation.json").write_text(json.dumps(
        {"runs": runs, "summary": found, "minutes": (time.perf_counter() - began) / 60}, indent=1))


if __name__ == "__main__":
    main()
