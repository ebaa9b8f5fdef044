"""GRPO step throughput: this project's configuration against the original script's, same model and data.

    python benchmarks/grpo_step.py                      # tiny built-in GPT-2 on CPU, a few minutes on 2 cores
    python benchmarks/grpo_step.py --model builtin:demo-gpt2 --steps 6
    python benchmarks/grpo_step.py --random-gpt2-medium --completion-length 256    # GPU: the real shape (355M)

(a) ours: gsm8k_tr.train.grpo.GRPOTrainer with the stage's defaults: LoRA on every
    linear layer, activation checkpointing off (so generation keeps its KV
    cache), dropout off, one micro-batch per optimizer step, no reference
    model (beta 0), the position-ids fix.
(b) the original: plain trl.GRPOTrainer with the widely copied demo's
    settings: full-parameter updates, gradient checkpointing on, dropout on,
    beta 0.04 (TRL's old default, so a reference model is scored too),
    lr 5e-6, micro-batches of 4 with gradient accumulation, and the same
    completions per optimizer step as (a).

Each runs in its own subprocess (so peak memory is its own) on the same
prompts with the same seed. It prints completions per second, the share of
step time spent generating, and peak memory for each, then the ratio (a)/(b).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _setup(args: argparse.Namespace, work: Path) -> tuple[Any, Any, list[dict[str, Any]], list[Any], list[float], Any]:
    from gsm8k_tr import modeling
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data import examples as stage_rows
    from gsm8k_tr.data import splits
    from gsm8k_tr.grading.rewards import build_rewards

    recipe = load_recipe(str(ROOT / "recipes" / "tiny.yaml"), [f"output_dir={work}", f"model.name_or_path={args.model}",
                                                                 "data.dataset=synthetic:400"])
    folder = splits.ensure_prepared(recipe)
    rows = splits.load_split(folder, "train")
    if args.random_gpt2_medium:
        # Saved to a folder and loaded from there, as a user's model is: TRL builds (b)'s reference model from the
        # policy's name, which a model built in memory does not have.
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu_check import build_model

        folder = Path(tempfile.gettempdir()) / "gsm8k-tr-random-gpt2-medium"
        if not (folder / "config.json").is_file():
            build_model(folder)
        recipe.model.name_or_path = str(folder)
    tokenizer, model = modeling.load_tokenizer(recipe.model), modeling.load_model(recipe.model)
    modeling.configure_tokens(tokenizer, model, recipe.model.stop_token)
    count = modeling.token_counter(tokenizer)
    examples, _ = stage_rows.grpo_examples(rows, recipe, count, args.completion_length, modeling.context_length(model))
    funcs, weights = build_rewards(recipe.rewards, recipe.prompt.reasoning_tag, recipe.prompt.answer_tag)
    return recipe, (tokenizer, model), examples, funcs, weights, modeling


def _timed(cls: type) -> type:
    """Measure generation time on either trainer without changing what it does."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        generation_seconds = 0.0

        def _generate(self, prompts: list) -> Any:
            started = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                Timed.generation_seconds += time.perf_counter() - started

    return Timed


def run_one(which: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train `args.steps` GRPO steps with configuration `which` ("ours" or "original"); return the measurements."""
    import torch
    import trl
    from datasets import Dataset

    from gsm8k_tr import placement
    from gsm8k_tr.train import grpo
    from gsm8k_tr.train.trl_configs import GRPO_DEFAULTS, trl_config
    from gsm8k_tr.train.lora import lora_config

    work = Path(tempfile.mkdtemp(prefix=f"grpo-bench-{which}-"))
    recipe, (tokenizer, model), examples, funcs, weights, modeling = _setup(args, work)
    sizes = {"max_steps": args.steps + 1, "num_generations": args.generations,
             "max_completion_length": args.completion_length, "temperature": 1.0, "report_to": [],
             "save_strategy": "no", "logging_steps": 1, "seed": 0, "output_dir": str(work / "out"),
             "reward_weights": weights}
    per_step = args.prompts * args.generations
    if which == "ours":
        config = trl_config(trl.GRPOConfig, "grpo", {}, {**GRPO_DEFAULTS, **placement.training_precision({}, "grpo"),
                                                                 **sizes, "per_device_train_batch_size": per_step}, {})
        trainer = _timed(grpo.GRPOTrainer)(model=model, reward_funcs=funcs, args=config,
                                          train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                                          peft_config=lora_config(recipe.lora, model, dropout=0.0))
    else:
        micro = min(4, per_step)
        config = trl.GRPOConfig(**sizes, learning_rate=5e-6, beta=0.04, gradient_checkpointing=True,
                                per_device_train_batch_size=micro, gradient_accumulation_steps=per_step // micro,
                                disable_dropout=False, lr_scheduler_type="cosine", warmup_steps=0.1,
                                **placement.training_precision({}, "grpo"))
        trainer = _timed(trl.GRPOTrainer)(model=model, reward_funcs=funcs, args=config,
                                         train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    # The first step warms up (allocations, kernels) and is not counted.
    from transformers import TrainerCallback

    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 1:
                marks["start"], marks["gen"] = time.perf_counter(), type(trainer).generation_seconds

    trainer.add_callback(Clock())
    trainer.train()
    seconds = time.perf_counter() - marks["start"]
    generation = type(trainer).generation_seconds - marks["gen"]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    completions = args.steps * per_step
    return {"config": which, "steps": args.steps, "completions": completions, "seconds": round(seconds, 2),
            "completions_per_s": round(completions / seconds, 2), "step_s": round(seconds / args.steps, 2),
            "generation_share": round(generation / seconds, 3),
            "peak_memory_mib": round(peak), "memory": "GPU allocated" if torch.cuda.is_available() else "process RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:tiny-gpt2")
    parser.add_argument("--random-gpt2-medium", action="store_true",
                        help="a randomly initialised GPT-2 Medium (355M) with the model's tokenizer (GPU)")
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up step)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--only", choices=("ours", "original"), help=argparse.SUPPRESS)  # one configuration, in a subprocess
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_one(args.only, args)))
        return
    results = []
    for which in ("ours", "original"):
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", which], capture_output=True, text=True,
                              env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{which} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line.removeprefix("RESULT ")))
    print(f"{'config':<10} {'compl/s':>8} {'step s':>7} {'gen share':>10} {'peak MiB':>9}")
    for r in results:
        print(f"{r['config']:<10} {r['completions_per_s']:>8} {r['step_s']:>7} {r['generation_share']:>10.0%} "
              f"{r['peak_memory_mib']:>9}")
    ours, original = results
    print(f"ratio (a)/(b) completions per second: {ours['completions_per_s'] / original['completions_per_s']:.2f}x "
          f"({args.steps} steps of {args.prompts}x{args.generations} completions, {args.completion_length} tokens max, "
          f"model {args.model if not args.random_gpt2_medium else 'random GPT-2 Medium'})")


if __name__ == "__main__":
    main()
