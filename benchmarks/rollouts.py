"""Rollouts: today's path against the fast one, same model, prompts and seed, in one run.

    python benchmarks/rollouts.py                          # decoding: builtin:demo-gpt2; GRPO steps on the demo
    python benchmarks/rollouts.py --gpt2-medium --sequences 16 --new-tokens 32   # and a GPT-2 Medium-shaped model
    python benchmarks/rollouts.py --grpo-steps 0           # decoding only
    python benchmarks/rollouts.py --grpo-steps 0 --compiled  # and compiled decoding (on by default on a GPU)

(a) today: a PEFT model with the LoRA adapter unmerged, transformers' dynamic
    KV cache, GPT-2's `gelu_new` as written (six elementwise ops), and in the
    loss TRL's fused LM head over every position (its choice off Triton).
(b) fast: what `gsm8k_tr.placement` chooses on this machine: the adapter
    merged while generating (`train/rollouts.py`), `gelu_pytorch_tanh`
    (one kernel), the KV cache written in place (`infer/kv_cache.py`) and
    filled once per distinct prompt (`infer/shared_prefill.py`; on a CPU
    kept once per group, `infer/grouped_attention.py`), on a
    CPU one random number per sampled token (`infer/sampling.py`), on a GPU
    eager attention without cuDNN's kernel (`infer/attention_kernels.py`) and
    the stop flag read a step late (`infer/stop_check.py`), and the LM
    head over the completion tokens only (`train/scoring.py`). Decoding also
    times (b) with transformers' dynamic cache and (b) with torch's sampling,
    to show what the cache and the sampler each give, and with `--compiled`
    (the default on a GPU) (b) with compiled decoding (`decoding: compiled`:
    a static cache and torch.compile, CUDA graphs on a GPU; prompts padded to
    a multiple of 64 tokens; `infer/compiled_decoding.py`), timed after a
    first call that compiles.

Decoding: a batch of `--sequences` left-padded prompts (8 questions repeated
to fill it) decodes `--new-tokens` tokens, with a LoRA adapter whose B
matrices are random (as after training), greedy so the two paths can be
compared token for token, then sampled as GRPO samples. It prints ms per
decoding step and completions per second for each, and the ratio.

GRPO: `--grpo-steps` steps of the demo recipe from the same SFT start, each
path in its own process; it prints seconds per step (the first is a warm-up)
and the share spent generating, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def use_todays_path() -> None:
    """Turn the fast path off in this process: unmerged adapter in TRL's float32 rollouts, eager decoding with
    transformers' own cache, gelu_new as written, torch's sampling, and TRL's LM head over every position in the
    loss."""
    from gsm8k_tr import modeling, placement

    def todays_rollouts(sharded: bool, vllm: bool, cache_implementation: str | None = None, *args: Any,
                        **kwargs: Any) -> dict[str, Any]:  # placement.rollout_path's signature, every choice off
        return {"merge_lora": False, "weights_dtype": None, "decoding": "eager",
                "kv_cache": placement.kv_cache(cache_implementation), "shared_prefill": False,
                "grouped_attention": False, "sampler": "multinomial", "attention": None, "stop_check": "every step"}

    placement.kv_cache = lambda cache_implementation=None: cache_implementation or "dynamic"
    placement.rollout_path = todays_rollouts
    modeling.fused_activation = lambda activation: None
    placement.compact_scoring = lambda device: False
    placement.row_sampling = lambda device: False


def gpt2_medium(folder: Path) -> str:
    """A random GPT-2 Medium (355M, 50,257-entry vocabulary) saved as a model folder, as gpu_check builds it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import build_model

    if not (folder / "config.json").is_file():
        build_model(folder)
    return str(folder)


def decode(model_name: str, sequences: int, new_tokens: int, repeats: int,
           compiled: bool | None = None) -> dict[str, Any]:
    """ms per decoding step for (a), (b), (b) with the dynamic cache, (b) with torch's sampling and, if `compiled`
    (None: on a GPU), (b) with compiled decoding, alternating, on one model with a trained-looking adapter."""
    import peft
    import torch
    from transformers import GenerationConfig

    from gsm8k_tr import modeling, placement
    from gsm8k_tr.config import LoraConfig, ModelConfig, PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import attention_kernels, compiled_decoding, stop_check
    from gsm8k_tr.infer.kv_cache import growing_cache
    from gsm8k_tr.infer.sampling import one_draw_per_row
    from gsm8k_tr.train.lora import lora_config
    from gsm8k_tr.train.rollouts import merged_adapter

    cfg = ModelConfig(name_or_path=model_name)
    device = placement.inference_device()
    paths: dict[str, Any] = {}
    for label, fused in (("today", False), ("fast", True)):
        modeling.fused_activation = placement.fused_activation if fused else (lambda activation: None)
        tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
        modeling.configure_tokens(tokenizer, model, cfg.stop_token)
        model = peft.get_peft_model(model, lora_config(LoraConfig(), model, dropout=0.0)).to(device).eval()
        with torch.no_grad():  # the same adapter in both, with B away from its zero start, as after training
            generator = torch.Generator().manual_seed(0)
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        paths[label] = model
    paths["fast, dynamic cache"] = paths["fast, torch sampling"] = paths["fast"]
    if compiled if compiled is not None else device.type == "cuda":
        paths["fast, compiled"] = paths["fast"]
    growing, row_sampling = placement.kv_cache() == "growing", placement.row_sampling(device)
    grouped = placement.rollout_path(False, False, None, device, "eager")["grouped_attention"]
    rows = synth.make_problems(8, seed=5)
    prompts = [build_prompt(r["question"], PromptConfig()) for r in rows]
    tokenizer.padding_side = "left"
    rows_text = [prompts[i % len(prompts)] for i in range(sequences)]
    batch = tokenizer(rows_text, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    padded = tokenizer(rows_text, return_tensors="pt", padding=True, add_special_tokens=False,
                       pad_to_multiple_of=compiled_decoding.PROMPT_MULTIPLE).to(device)
    autocast = torch.autocast(device.type, dtype=placement.inference_dtype(device), enabled=device.type == "cuda")

    def run(label: str, sample: bool) -> tuple[float, list[list[int]]]:
        config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=sample,
                                  temperature=0.7 if sample else None, top_k=0 if sample else None,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        inputs = batch
        if label == "fast, compiled":
            config, inputs = compiled_decoding.generation_config(config, device), padded
        model = paths[label]
        torch.manual_seed(0)
        with (torch.no_grad(), autocast, merged_adapter(model) if label != "today" else nullcontext(),
              growing_cache(model, share_prompts=True, grouped=grouped)
              if label not in ("fast, dynamic cache", "today", "fast, compiled") and growing else nullcontext(),
              one_draw_per_row(label != "fast, torch sampling" and label != "today" and row_sampling),
              # the fast paths' attention kernels and stop check as the rollouts run them on this device
              attention_kernels.only(None if label == "today" else placement.decoding_attention(
                  device, "compiled" if label == "fast, compiled" else "eager")),
              stop_check.deferred(label != "today" and placement.stop_check(device) == "deferred")):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = model.generate(**inputs, generation_config=config)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return time.perf_counter() - started, out[:, inputs["input_ids"].shape[1]:].tolist()

    warm_up = {}
    for label in paths:  # warm-up: first allocations, kernels, and compiling
        warm_up[label] = round(run(label, True)[0], 2)
    greedy = {label: run(label, False)[1] for label in paths}
    seconds: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(repeats):
        for label in paths:
            seconds[label].append(run(label, True)[0])
    result = {"model": model_name, "device": str(device), "sequences": sequences, "new_tokens": new_tokens,
              "prompt_tokens": batch["input_ids"].shape[1], "identical_greedy_tokens":
              min(sum(a == b for a, b in zip(greedy["today"], greedy[label])) for label in paths),
              "threads": torch.get_num_threads(), "kv_cache": placement.kv_cache(),
              "sampler": "inverse_cdf" if row_sampling else "multinomial", "first_call_s": warm_up}
    for label, times in seconds.items():
        best = min(times)
        result[label] = {"ms_per_step": round(1000 * best / new_tokens, 2),
                         "completions_per_s": round(sequences / best, 1),
                         "tokens_per_s": round(sequences * new_tokens / best)}
    result["ratio"] = round(result["today"]["ms_per_step"] / result["fast"]["ms_per_step"], 2)
    if "fast, compiled" in paths:
        result["compiled_ratio"] = round(result["fast"]["ms_per_step"] / result["fast, compiled"]["ms_per_step"], 2)
    return result


def grpo_steps(path: str, start: str, steps: int, work: Path) -> dict[str, Any]:
    """`steps` demo GRPO steps from `start` on one path, in this process."""
    if path == "today":
        use_todays_path()
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import grpo

    recipe = load_recipe(str(DEMO), [f"output_dir={work / path}", f"model.sft_output={start}",
                                     f"grpo.max_steps={steps}", "eval.every_steps=0", "grpo.logging_steps=1",
                                     "grpo.save_steps=100000", "grpo.report_to=[]"])
    manifest = grpo.main(recipe, overwrite=True)
    history = json.loads((work / path / "grpo" / "log_history.json").read_text())
    logged = [h for h in history if "step_time" in h][1:]  # the first step warms up
    step = sum(h["step_time"] for h in logged) / len(logged)
    generation = sum(h["time/generation_s"] for h in logged) / len(logged)
    length = sum(h["completions/mean_length"] for h in logged) / len(logged)
    return {"path": path, "steps": steps, "step_s": round(step, 3), "generation_s": round(generation, 3),
            "generation_share": round(generation / step, 3), "mean_completion_tokens": round(length, 1),
            "rollouts": manifest.get("rollouts"), "lm_head_positions": manifest.get("lm_head_positions")}


def grpo_child(command: list[str], path: str) -> dict[str, Any]:
    """Run `command` (a benchmark's GRPO run on one path) in its own process and return the result it prints on its
    `RESULT ` line; exit with its error output where it printed none."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"GRPO on the {path} path failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def sft_start(work: Path) -> str:
    """A short demo SFT run to start GRPO from (its answers have the format, so completions stop as in training)."""
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import sft

    recipe = load_recipe(str(DEMO), [f"output_dir={work / 'start'}", "sft.max_steps=150", "sft.eval_strategy=no",
                                     "sft.load_best_model_at_end=false", "eval.sft_patience=0", "sft.report_to=[]"])
    sft.main(recipe, overwrite=True)
    return str(work / "start" / "sft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:demo-gpt2")
    parser.add_argument("--gpt2-medium", action="store_true", help="also a random GPT-2 Medium-shaped model")
    parser.add_argument("--sequences", type=int, default=64, help="completions decoded together (GRPO: 8 x 8)")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (the fastest counts)")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=None,
                        help="also time compiled decoding (default: on a GPU)")
    parser.add_argument("--grpo-steps", type=int, default=8, help="demo GRPO steps per path (0: skip)")
    parser.add_argument("--rounds", type=int, default=2, help="GRPO runs per path, alternating")
    parser.add_argument("--start", help="the SFT output GRPO starts from (default: 150 demo SFT steps, trained first)")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--only", nargs=2, metavar=("PATH", "START"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="gsm8k-tr-rollouts-"))
    if args.only:
        print("RESULT " + json.dumps(grpo_steps(args.only[0], args.only[1], args.grpo_steps, work)))
        return
    models = [args.model] + ([gpt2_medium(work / "gpt2-medium")] if args.gpt2_medium else [])
    for name in models:
        sequences, tokens = (args.sequences, args.new_tokens) if name == args.model else (16, 32)
        if name != args.model and (args.sequences, args.new_tokens) != (64, 96):
            sequences, tokens = args.sequences, args.new_tokens
        r = decode(name, sequences, tokens, args.repeats, args.compiled)
        print(f"decoding, {Path(r['model']).name} on {r['device']} ({r['threads']} threads): {r['sequences']} sequences, "
              f"{r['prompt_tokens']} prompt + {r['new_tokens']} new tokens")
        for label, name in (("today", "(a) today"), ("fast", "(b) fast"),
                            ("fast, dynamic cache", "    (b), dynamic cache"),
                            ("fast, torch sampling", "    (b), torch sampling"),
                            ("fast, compiled", "    (b), compiled")):
            if label not in r:
                continue
            print(f"  {name:<22} {r[label]['ms_per_step']:8.2f} ms/step "
                  f"{r[label]['completions_per_s']:8.1f} completions/s {r[label]['tokens_per_s']:8d} tokens/s")
        print(f"  ratio (a)/(b) ms per step: {r['ratio']:.2f}x (the {r['kv_cache']} cache alone: "
              f"{r['fast, dynamic cache']['ms_per_step'] / r['fast']['ms_per_step']:.2f}x, the {r['sampler']} sampler "
              f"alone: {r['fast, torch sampling']['ms_per_step'] / r['fast']['ms_per_step']:.2f}x); identical greedy "
              f"completions: {r['identical_greedy_tokens']}/{r['sequences']} (the fewest of any fast path)")
        if "compiled_ratio" in r:
            first = r["first_call_s"]
            print(f"  compiled decoding against (b): {r['compiled_ratio']:.2f}x per step, after a first call of "
                  f"{first['fast, compiled']:.1f} s (compiling; (b)'s first call: {first['fast']:.1f} s)")
    if args.grpo_steps:
        start = args.start or sft_start(work)
        runs: dict[str, list[dict[str, Any]]] = {"today": [], "fast": []}
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine falls on both paths
            for path in runs:
                runs[path].append(grpo_child([sys.executable, __file__, "--grpo-steps", str(args.grpo_steps),
                                              "--work", str(work), "--only", path, start], path))
        print(f"GRPO, demo recipe, {args.rounds} x {args.grpo_steps} steps of 8 x 8 completions from {start}:")
        mean = {}
        for path, results in runs.items():
            mean[path] = {key: sum(r[key] for r in results) / len(results)
                          for key in ("step_s", "generation_s", "mean_completion_tokens")}
            m = mean[path]
            print(f"  {path:<6} {m['step_s']:6.2f} s/step (runs: {', '.join(str(r['step_s']) for r in results)}), "
                  f"generating {m['generation_s']:.2f} s, {m['mean_completion_tokens']:.1f} tokens per completion; "
                  f"{results[0]['rollouts']}, LM head over {results[0]['lm_head_positions']} positions")
        print(f"  ratio today/fast seconds per step: {mean['today']['step_s'] / mean['fast']['step_s']:.2f}x "
              f"(generation {mean['today']['generation_s'] / mean['fast']['generation_s']:.2f}x)")


if __name__ == "__main__":
    main()
