"""Do the GPU paths work, how fast, and how much memory? One command, about 10 minutes on one GPU.

    python benchmarks/gpu_check.py                    # HF generate, and vLLM too when the vllm extra is installed
    python benchmarks/gpu_check.py --steps 3 --questions 64 --no-vllm

Model: a GPT-2 Medium-shaped model (24 layers of 1024, 355M parameters, a
1,024-token context) with random weights and a tokenizer laid out like the
real instruct model's: 50,257 entries, eos `<|endoftext|>`, `<|stop|>` a plain
added token, no pad token. Lengths: the real recipe's
(recipes/turkish-gpt2-medium.yaml: SFT max_length 1024, GRPO completions of
384 tokens, micro-batches of 16), on generated problems.

It runs, each in its own process so each peak is its own: a few SFT steps; a
few GRPO steps generating with transformers, then with vLLM colocated (when
installed); and evaluation of `--questions` questions with transformers and
with vLLM. It prints, side by side: step time, the share of a GRPO step spent
generating, completions per second, evaluation questions per second, peak
GPU memory and `gsm8k-tr plan`'s estimate. It exits non-zero if any part
fails, and with status 2 (one line) on a machine without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "turkish-gpt2-medium.yaml"
VOCAB = 50257


def build_model(folder: Path) -> None:
    """A random GPT-2 Medium with a tokenizer like the real one's, saved as a model folder."""
    from tokenizers import AddedToken
    from transformers import GPT2Config, GPT2LMHeadModel

    from gsm8k_tr import builtin

    tokenizer = builtin.train_tokenizer(builtin.tokenizer_corpus())
    # Filler entries bring the vocabulary to GPT-2's size, so the LM head and the logits have the real shape.
    tokenizer.add_tokens([AddedToken(f"<|unused{i}|>", special=False, normalized=False)
                          for i in range(VOCAB - len(tokenizer))])
    config = GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def run_part(part: str, model: str, work: Path, steps: int, questions: int) -> dict[str, Any]:
    """One part, in this process: sft, grpo, grpo-vllm, eval or eval-vllm."""
    import torch

    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import plan

    common = [f"output_dir={work}", f"model.name_or_path={model}", "data.dataset=synthetic:600", "data.reference=none",
              "eval.every_steps=0", f"sft.max_steps={steps}", f"grpo.max_steps={steps}", "sft.save_steps=1000",
              "grpo.save_steps=1000", "sft.logging_steps=1", "grpo.logging_steps=1", "sft.report_to=[]",
              "grpo.report_to=[]"]
    if part == "grpo-vllm":
        common += ["grpo.use_vllm=true", "grpo.vllm_mode=colocate", f"model.sft_output={work / 'sft'}"]
    recipe = load_recipe(str(RECIPE), common)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result: dict[str, Any] = {"part": part}
    if part in ("sft", "grpo", "grpo-vllm"):
        from gsm8k_tr.pipeline import TRAINING_STAGES

        stage = "sft" if part == "sft" else "grpo"
        recipe.output_dir = str(work / part) if part == "grpo-vllm" else str(work)
        manifest = TRAINING_STAGES[stage](recipe, overwrite=True)
        history = json.loads((Path(recipe.output_dir) / stage / "log_history.json").read_text())
        steps_logged = [h for h in history if "step_time" in h or "loss" in h]
        step_time = [h["step_time"] for h in steps_logged if "step_time" in h][1:]  # the first step warms up
        result["step_s"] = sum(step_time) / len(step_time) if step_time else manifest["train_seconds"] / steps
        if stage == "grpo":
            generation = [h["time/generation_s"] for h in steps_logged if "time/generation_s" in h][1:]
            result["generation_share"] = sum(generation) / sum(step_time) if step_time and generation else None
            per_step = recipe.grpo.get("per_device_train_batch_size", 8) * recipe.grpo.get("gradient_accumulation_steps", 1)
            result["completions_per_s"] = per_step / result["step_s"]
        _, plans = plan.plan_recipe(recipe, torch.cuda.get_device_properties(0).total_memory / 2**30)
        result["plan_gib"] = plans[stage].peak_gib
    else:
        from gsm8k_tr.infer import evaluate

        metrics = evaluate.main(str(work / "sft"), recipe, limit=questions, output=str(work / f"eval-{part}"),
                                overwrite=True, backend="vllm" if part == "eval-vllm" else "hf")
        result["questions_per_s"] = metrics["n"] / metrics["seconds"]
        result["dtype"] = metrics["dtype"]
    result["seconds"] = time.perf_counter() - started
    result["peak_gib"] = _peak_gib()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="SFT and GRPO steps per part (the first warms up)")
    parser.add_argument("--questions", type=int, default=64, help="evaluation questions")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM parts even when vLLM is installed")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--part", nargs=3, metavar=("PART", "MODEL", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: this machine has no CUDA GPU (torch.cuda.is_available() is False); run it where "
              "nvidia-smi lists one", file=sys.stderr)
        return 2
    if args.part:
        part, model, work = args.part
        print("RESULT " + json.dumps(run_part(part, model, Path(work), args.steps, args.questions)))
        return 0

    work = Path(args.keep or tempfile.mkdtemp(prefix="gsm8k-tr-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").is_file():
        build_model(model)
    vllm = importlib.util.find_spec("vllm") is not None and not args.no_vllm
    parts = ["sft", "grpo", "eval"] + (["grpo-vllm", "eval-vllm"] if vllm else [])
    name = torch.cuda.get_device_name(0)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    print(f"{name}, {total:.0f} GiB; torch {torch.__version__}; vLLM: "
          f"{'yes' if vllm else 'not installed (pip install -e .[vllm])' if not args.no_vllm else 'skipped'}")
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    rows, failed = [], []
    for part in parts:
        done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--questions", str(args.questions),
                               "--part", part, str(model), str(work)], capture_output=True, text=True, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            failed.append(part)
            print(f"{part}: FAILED (exit {done.returncode}): {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")
            continue
        rows.append(json.loads(line[7:]))
    print(f"{'part':<10} {'step s':>7} {'gen share':>9} {'compl/s':>8} {'eval q/s':>8} {'peak GiB':>9} {'plan GiB':>9}")
    for r in rows:
        def cell(key: str, fmt: str) -> str:
            return format(r[key], fmt) if r.get(key) is not None else "-"
        print(f"{r['part']:<10} {cell('step_s', '7.2f'):>7} {cell('generation_share', '9.0%'):>9} "
              f"{cell('completions_per_s', '8.1f'):>8} {cell('questions_per_s', '8.1f'):>8} "
              f"{cell('peak_gib', '9.1f'):>9} {cell('plan_gib', '9.1f'):>9}")
    (work / "gpu_check.json").write_text(json.dumps({"device": name, "rows": rows, "failed": failed}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"gpu_check: {len(failed)} part(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
