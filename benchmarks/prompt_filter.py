"""GRPO with and without the prompt filter, from one SFT model with one seed: accuracy against generated tokens.

    python benchmarks/prompt_filter.py                       # the demo recipe: about 20 minutes on 2 CPU cores
    python benchmarks/prompt_filter.py --steps 150 --samples 8 --every 10

(a) GRPO on every training prompt; (b) GRPO on the prompts the SFT model
answers right sometimes but not always (`prompt_filter.samples` answers
each). Both start from the same SFT output and run the same steps with the
same seed, grading greedy answers to the validation split every `--every`
steps, then the test split at the end. Compute is counted as generated
tokens: GRPO's completions (from TRL's logged mean completion length, every
step) and, for (b), the filter's own sampling. Prints the final accuracies,
and the steps and tokens each run needed to reach (a)'s final validation
accuracy. Writes runs/prompt-filter/result.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def curve(run: Path, completions_per_step: int, offset: int) -> list[dict[str, float]]:
    """(step, generated tokens so far, validation accuracy) at each held-out check."""
    history = json.loads((run / "grpo" / "log_history.json").read_text())
    tokens, out = offset, []
    by_step: dict[int, float] = {}
    for entry in history:
        if "completions/mean_length" in entry:
            by_step[entry["step"]] = entry["completions/mean_length"] * completions_per_step
    for entry in sorted((e for e in history if "eval/accuracy" in e), key=lambda e: e["step"]):
        tokens = offset + sum(v for s, v in by_step.items() if s <= entry["step"])
        out.append({"step": entry["step"], "tokens": tokens, "accuracy": entry["eval/accuracy"]})
    return out


def first_reaching(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in points if p["accuracy"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps for both runs (default: the recipe's)")
    parser.add_argument("--samples", type=int, default=8, help="filter: answers per training prompt")
    parser.add_argument("--every", type=int, default=10, help="held-out check every N steps")
    parser.add_argument("--output", default=str(ROOT / "runs" / "prompt-filter"))
    parser.add_argument("overrides", nargs="*", help="recipe overrides for both runs, key=value")
    args = parser.parse_args()

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate
    from gsm8k_tr.pipeline import TRAINING_STAGES

    out = Path(args.output)
    base = [f"output_dir={out / 'sft-run'}", f"eval.every_steps={args.every}", "grpo.logging_steps=1",
            "eval.held_out_size=10000", *args.overrides]
    if args.steps:
        base.append(f"grpo.max_steps={args.steps}")
    sft_recipe = load_recipe(args.config, base)
    TRAINING_STAGES["sft"](sft_recipe, resume=True)
    results: dict[str, Any] = {}
    for name, extra in (("unfiltered", ["prompt_filter.samples=0"]), ("filtered", [f"prompt_filter.samples={args.samples}"])):
        recipe = load_recipe(args.config, [*base, f"output_dir={out / name}", f"model.sft_output={out / 'sft-run' / 'sft'}",
                                           *extra])
        manifest = TRAINING_STAGES["grpo"](recipe, resume=True)
        per_step = recipe.grpo.get("per_device_train_batch_size", 8) * recipe.grpo.get("gradient_accumulation_steps", 1)
        spent = (manifest.get("prompt_filter") or {}).get("generated_tokens", 0)
        test = evaluate.main(str(out / name / "grpo"), recipe, output=str(out / name / "eval-test"), overwrite=True)
        results[name] = {"curve": curve(out / name, per_step, spent), "filter": manifest.get("prompt_filter"),
                         "test_accuracy": test["accuracy"], "test_n": test["n"], "train_seconds": manifest["train_seconds"],
                         "steps": manifest["global_step"]}
    target = results["unfiltered"]["curve"][-1]["accuracy"]
    print(f"{'run':<11} {'test acc':>8} {'final val':>9} {'GRPO steps':>10} {'tokens':>10} {'filter tokens':>13} "
          f"{'train s':>7}  steps / tokens to reach {target:.3f}")
    for name, r in results.items():
        reach = first_reaching(r["curve"], target)
        filt = (r["filter"] or {}).get("generated_tokens", 0)
        print(f"{name:<11} {r['test_accuracy']:>8.3f} {r['curve'][-1]['accuracy']:>9.3f} {r['steps']:>10} "
              f"{r['curve'][-1]['tokens']:>10.0f} {filt:>13.0f} {r['train_seconds']:>7.0f}  "
              + (f"{reach['step']:.0f} / {reach['tokens']:.0f}" if reach else "not reached"))
    (out / "result.json").write_text(json.dumps({"target": target, **results}, indent=1))


if __name__ == "__main__":
    main()
