"""How much GRPO could add: a model's greedy accuracy against its pass@k and maj@k, by problem kind.

    python benchmarks/headroom.py runs/demo/sft                       # the demo's test split, 8 samples at 0.7
    python benchmarks/headroom.py runs/demo/sft --samples 8 --temperature 1.0 --split validation

GRPO learns from groups of sampled answers in which some are right: pass@k
(some sample right) bounds what it can find, and maj@k (the most common
answer right) is what sharpening the sampled distribution towards its mode
would give greedy decoding. Kinds: the generated problems' templates
(`data.synth`) for the demo's data; otherwise one group. Prints a table and
writes `{model}/headroom.json`.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def kinds_of(recipe: Any) -> dict[str, str]:
    """Question → kind, for generated data (`synthetic:N`); empty otherwise."""
    from gsm8k_tr.data import synth

    spec = recipe.data.dataset
    if not spec.startswith("synthetic"):
        return {}
    count = int(spec.partition(":")[2] or 2000)
    return {row["question"]: row["kind"] for row in synth.make_problems(count)}


def by_kind(greedy: list[dict[str, Any]], sampled: list[dict[str, Any]], kinds: dict[str, str]) -> dict[str, Any]:
    """Greedy accuracy, pass@k and maj@k per kind and overall."""
    from gsm8k_tr.infer.evaluate import pass_at_k

    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for g, s in zip(greedy, sampled):
        groups[kinds.get(g["question"], "all")].append((g, s))
        if kinds:
            groups["all"].append((g, s))
    table = {}
    for kind, pairs in sorted(groups.items()):
        k = len(pairs[0][1]["samples"])
        table[kind] = {"n": len(pairs), "greedy": sum(g["correct"] for g, _ in pairs) / len(pairs),
                       "sampled": sum(x["correct"] for _, s in pairs for x in s["samples"]) / (k * len(pairs)),
                       "pass_at_k": sum(pass_at_k(k, sum(x["correct"] for x in s["samples"]), k)
                                        for _, s in pairs) / len(pairs),
                       "maj_at_k": sum(s["majority_correct"] for _, s in pairs) / len(pairs)}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a stage output (runs/x/sft) or model folder")
    parser.add_argument("--config", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (GRPO's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args()
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate

    model = Path(args.model)
    recipe = load_recipe(args.config, args.overrides)
    greedy_out, sampled_out = model / "headroom-greedy", model / "headroom-sampled"
    evaluate.main(str(model), recipe, split=args.split, output=str(greedy_out), overwrite=True)
    recipe.eval.temperature = args.temperature
    evaluate.main(str(model), recipe, split=args.split, samples=args.samples, output=str(sampled_out), overwrite=True)
    read = lambda folder: [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    table = by_kind(read(greedy_out), read(sampled_out), kinds_of(recipe))
    print(f"{args.model}, {args.split} split, {args.samples} samples at temperature {args.temperature}")
    print(f"{'kind':<9} {'n':>4} {'greedy':>7} {'sampled':>8} {'pass@k':>7} {'maj@k':>6}")
    for kind, row in table.items():
        print(f"{kind:<9} {row['n']:>4} {row['greedy']:>7.3f} {row['sampled']:>8.3f} {row['pass_at_k']:>7.3f} "
              f"{row['maj_at_k']:>6.3f}")
    (model / "headroom.json").write_text(json.dumps({"split": args.split, "samples": args.samples,
                                                     "temperature": args.temperature, "kinds": table}, indent=1))


if __name__ == "__main__":
    main()
