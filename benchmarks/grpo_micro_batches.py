"""GRPO micro-batches cut to their own longest prompt and completion, against TRL's uncut ones: one ratio.

    python benchmarks/grpo_micro_batches.py --start runs/demo/sft      # after make demo
    python benchmarks/grpo_micro_batches.py --split 8 8 --steps 6 --rounds 2

`--steps` GRPO steps of the demo recipe from the same SFT start, with the
step's 64 completions trained in `--split` micro-batches (default 8 x 8; the
demo itself trains all 64 in one, where there is nothing to cut), each
configuration in its own process, alternating `--rounds` times:
- cut: `train/micro_batches.py`, the default;
- uncut: TRL's own loss on the micro-batches as TRL splits them.
It prints the seconds a step spends outside generation (the training
forward and backward; steps after the first), the tokens the loss scored per
step (rows x columns, padding included), the ratio of each, and the largest
difference between the two runs' logged losses (the same seed samples the
same completions, so the losses should agree to float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from rollouts import DEMO, sft_start  # noqa: E402

CONFIGS = ("cut", "uncut")


def run(config: str, start: str, steps: int, split: tuple[int, int], work: Path) -> dict[str, Any]:
    """`steps` demo GRPO steps in this process, micro-batches `config` ("cut" or "uncut")."""
    import trl

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import grpo
    from gsm8k_tr.train.micro_batches import TrimmedMicroBatches

    scored = []
    original = trl.GRPOTrainer._compute_loss

    def counting(self: Any, model: Any, inputs: dict[str, Any]) -> Any:
        scored.append(inputs["prompt_ids"].numel() + inputs["completion_ids"].numel())
        return original(self, model, inputs)

    uncut = patch.object(TrimmedMicroBatches, "_compute_loss", lambda self, model, inputs: counting(self, model,
                                                                                                      inputs))
    micro, accumulate = split
    recipe = load_recipe(str(DEMO), [f"output_dir={work / config}", f"model.sft_output={start}",
                                     f"grpo.max_steps={steps}", "eval.every_steps=0", "grpo.logging_steps=1",
                                     "grpo.save_steps=100000", "grpo.report_to=[]",
                                     f"grpo.per_device_train_batch_size={micro}",
                                     f"grpo.gradient_accumulation_steps={accumulate}"])
    with patch.object(trl.GRPOTrainer, "_compute_loss", counting), (uncut if config == "uncut" else _nothing()):
        grpo.main(recipe, overwrite=True)
    history = json.loads((work / config / "grpo" / "log_history.json").read_text())
    logged = [h for h in history if "step_time" in h]
    later = logged[1:]  # the first step warms up
    training = sum(h["step_time"] - h["time/generation_s"] for h in later) / len(later)
    per_step = sum(scored[accumulate:]) / max(len(logged) - 1, 1)
    return {"config": config, "training_s": round(training, 3), "scored_tokens_per_step": round(per_step),
            "losses": [h["loss"] for h in logged]}


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", help="the SFT output GRPO starts from (default: 150 demo SFT steps, trained first)")
    parser.add_argument("--steps", type=int, default=6, help="GRPO steps per run (the first warms up)")
    parser.add_argument("--split", nargs=2, type=int, default=[8, 8], metavar=("MICRO", "ACCUMULATION"),
                        help="the micro-batch and gradient accumulation of the step's completions (default: 8 8)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration, alternating")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--only", nargs=2, metavar=("CONFIG", "START"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="gsm8k-tr-micro-batches-"))
    if args.only:
        print("RESULT " + json.dumps(run(args.only[0], args.only[1], args.steps, tuple(args.split), work)))
        return
    start = args.start or sft_start(work)
    results: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):  # alternating, so a slow spell of the machine falls on both
        for config in CONFIGS:
            done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--split", *map(str, args.split),
                                   "--work", str(work), "--only", config, start], capture_output=True, text=True,
                                  env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"GRPO with {config} micro-batches failed:\n{done.stderr[-3000:]}")
            results[config].append(json.loads(line.removeprefix("RESULT ")))
    mean = {config: {key: sum(r[key] for r in runs) / len(runs) for key in ("training_s", "scored_tokens_per_step")}
            for config, runs in results.items()}
    gap = max(abs(a - b) for r_cut, r_uncut in zip(results["cut"], results["uncut"])
              for a, b in zip(r_cut["losses"], r_uncut["losses"]))
    micro, accumulate = args.split
    print(f"GRPO, demo recipe, {args.rounds} x {args.steps} steps, 64 completions a step in {micro} x {accumulate} "
          f"micro-batches, from {start}:")
    for config in CONFIGS:
        m = mean[config]
        print(f"  {config:<6} training {m['training_s']:.3f} s/step (runs: "
              f"{', '.join(str(r['training_s']) for r in results[config])}), {m['scored_tokens_per_step']:.0f} tokens "
              "scored a step")
    print(f"  ratio uncut/cut: training time {mean['uncut']['training_s'] / mean['cut']['training_s']:.2f}x, tokens "
          f"scored {mean['uncut']['scored_tokens_per_step'] / mean['cut']['scored_tokens_per_step']:.2f}x; the largest "
          f"difference between the logged losses: {gap:.2e}")


if __name__ == "__main__":
    main()
