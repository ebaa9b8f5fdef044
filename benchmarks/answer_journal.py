"""What keeping an evaluation's answers on disk costs (`infer/answer_journal.py`): one evaluation with and without.

    python benchmarks/answer_journal.py                                   # the demo's base model, 2 CPU threads
    python benchmarks/answer_journal.py --model builtin:tiny-gpt2 --limit 32 --rounds 2   # a smoke run

The same questions are answered (a) as a held-out check does, keeping nothing, and (b) as `evaluate` does, each
finished batch appended to the journal with the generators' state and synced to disk, the key's prompt digest
taken first. The two alternate (a, b, b, a, ...) so that drift between rounds falls on both; the median of each
is printed with the ratio b / a. The weights' digest, which `evaluate` takes before its clock starts, as it
loads the model, is timed apart. Both ways must give the same completions, and the script says whether they did.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--model", default="builtin:demo-gpt2")
    parser.add_argument("--limit", type=int, default=128, help="test questions")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a, b) or (b, a)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="recipe key=value")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data.splits import load_split
    from gsm8k_tr.infer import answer_journal, evaluate
    from gsm8k_tr.run_folder import prepared_data

    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="journal-") as work:
        recipe = load_recipe(args.config, [f"output_dir={work}", *args.overrides])
        rows = load_split(prepared_data(recipe), "test")[:args.limit]
        model, tokenizer, _ = evaluate.load_for_inference(args.model, recipe, args.device)
        started = time.perf_counter()
        weights = answer_journal.weights_digest(model)
        digest_s = time.perf_counter() - started
        evaluate.evaluate(model, tokenizer, rows[:4], recipe, args.samples)  # warm-up
        seconds: dict[str, list[float]] = {"a": [], "b": []}
        answers: dict[str, list] = {}
        for round_ in range(args.rounds):
            for way in ("ab" if round_ % 2 == 0 else "ba"):
                output = Path(work) / f"eval-{round_}-{way}" if way == "b" else None
                started = time.perf_counter()
                _, records = evaluate.evaluate(model, tokenizer, rows, recipe, args.samples, output=output,
                                               weights=weights)
                seconds[way].append(time.perf_counter() - started)
                answers[way] = [record["completion"] for record in records]
                if output is not None:
                    answer_journal.finished(output)
        a, b = statistics.median(seconds["a"]), statistics.median(seconds["b"])
        batches = -(-len(rows) // recipe.eval.batch_size)
        print(f"{len(rows)} questions x {args.samples}, {batches} batches of {recipe.eval.batch_size}, "
              f"{args.model} on {args.device}")
        print(f"(a) nothing kept:   {a:.3f} s (median of {args.rounds}: "
              f"{', '.join(f'{s:.3f}' for s in seconds['a'])})")
        print(f"(b) answers kept:   {b:.3f} s (median of {args.rounds}: "
              f"{', '.join(f'{s:.3f}' for s in seconds['b'])}); {1000 * (b - a) / batches:+.1f} ms a batch")
        print(f"ratio b / a: {b / a:.3f}")
        print(f"weights' digest (before evaluate's clock): {digest_s:.3f} s for "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
        print(f"same completions: {answers['a'] == answers['b']}")
        return 0 if answers["a"] == answers["b"] else 1


if __name__ == "__main__":
    sys.exit(main())
