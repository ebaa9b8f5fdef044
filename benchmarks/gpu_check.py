"""Do the GPU paths work, how fast against what the card can do, and how much memory against the plan? One command.

    python benchmarks/gpu_check.py                  # 207 s on one H200, without vLLM
    python benchmarks/gpu_check.py --vllm           # also GRPO and evaluation with vLLM (pip install -e .[vllm])
    python benchmarks/gpu_check.py --both-decodings # also GRPO and evaluation with the decoding `auto` left out
    python benchmarks/gpu_check.py --also-decodings compiled-step   # also GRPO and evaluation decoded so
    python benchmarks/gpu_check.py --also-decodings compiled-step-per-row   # the same, grouped attention off
    python benchmarks/gpu_check.py --also-decodings continuous-batching     # GRPO with transformers' engine
    python benchmarks/gpu_check.py --cpu            # the same parts on the CPU with the tiny model: a smoke run

Model: a GPT-2 Medium-shaped model (24 layers of 1024, 355M parameters, a
1,024-token context) with random weights and a tokenizer laid out like the
real instruct model's (50,257 entries, eos `<|endoftext|>`, `<|stop|>` a
plain added token, no pad token). Data: the real GSM8K-TR rows of
`../shared/data/gsm8k_tr_sample` aligned with English GSM8K when they are
there (rows of their real lengths), else generated problems. Recipe:
recipes/turkish-gpt2-medium.yaml with `per_device_train_batch_size: auto`.

In one process (imports once), each part on the same model folder:
- matmul: the card's measured bf16 matmul rate (8192-square), the yardstick;
- sft: `--sft-steps` steps; trained tokens per second over the steps after
  the first (each step's time from SFT's logs), and the share of the matmul
  rate used at 4 x parameters FLOPs per token (LoRA: the forward pass and
  the activations' gradients; no base-weight gradients);
- grpo: a few steps; generated tokens per second in the rollouts and their
  share of the step;
- decode: ms per decoding step of 64 rollouts, today's path (adapter
  unmerged, dynamic cache) against `placement`'s eager fast path and, on a
  GPU, compiled decoding (a static cache and CUDA graphs,
  `infer/compiled_decoding.py`), and the bound of reading the bf16 weights
  once per step at the card's memory bandwidth, alone and with the KV cache
  at its mean length in the call (what attention must read);
- eval: `--questions` questions; generated tokens per second;
- GRPO and evaluation run with `decoding: auto` (compiled on a GPU with
  Triton), each printing its compile time apart (the first step, the first
  call); with `--both-decodings`, grpo-eager and eval-eager (or -compiled
  where auto is eager) run them the other way too, and compare the greedy
  answers with eval's; `--also-decodings` names further ways (grpo-NAME,
  eval-NAME).
Each training part's peak GPU memory is printed beside the memory plan at the
data's real lengths (the plan the stage itself ran, which assumes the longest
row in every batch) and beside the same plan at the largest batch the part
actually ran (rows x padded tokens), the like-for-like comparison. It exits non-zero if any
part fails, and with status 2 (one line) on a machine without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "turkish-gpt2-medium.yaml"
VOCAB = 50257
SAMPLE = [ROOT.parent / "shared" / "data", ROOT / ".shared-data"]  # the shared sample, or its copy beside the project
# Memory bandwidth (bytes/s) by card name, for the decoding bound; other cards print no bound.
BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12,
             "L4": 0.3e12, "T4": 0.32e12, "A10": 0.6e12, "4090": 1.0e12, "3090": 0.94e12}


def bandwidth(device: Any) -> float | None:
    """`device`'s memory bandwidth in bytes/s where BANDWIDTH knows its card, else None (a CPU, another card)."""
    if device.type != "cuda":
        return None
    name = __import__("torch").cuda.get_device_name(device)
    return next((bw for key, bw in BANDWIDTH.items() if key in name), None)


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


def data_overrides() -> tuple[list[str], str]:
    """Recipe overrides for the real rows when the shared sample is here, else generated problems."""
    for root in SAMPLE:
        sample, reference = root / "gsm8k_tr_sample" / "dev.csv", root / "gsm8k"
        if sample.is_file() and (reference / "train.jsonl").is_file():
            return [f"data.dataset={sample}", f"data.reference={reference}"], f"real GSM8K-TR rows ({sample})"
    return ["data.dataset=synthetic:600", "data.reference=none"], "generated problems (the shared sample is not here)"


def sft_overrides(work: Path, model: str, data: list[str], sft_steps: int, cpu: bool) -> list[str]:
    """The recipe overrides of gpu_check's SFT (and of the benchmarks that profile or vary it): `model` on `data`
    (`data_overrides`), `sft_steps` steps each logged with its time, micro-batch auto, no evaluation and no
    checkpoint in the way; on the CPU, rows cut to the tiny model's context."""
    return [f"output_dir={work}", f"model.name_or_path={model}", *data, "eval.every_steps=0",
            f"sft.max_steps={sft_steps}", "sft.save_steps=1000", "sft.logging_steps=1", "sft.report_to=[]",
            "sft.per_device_train_batch_size=auto", *(["sft.max_length=512"] if cpu else [])]


def matmul_rate(device: Any) -> float:
    """The measured matmul rate of the card in the dtype the project computes in there, FLOP/s: bf16 where the
    card has it natively, fp16 on a T4 or V100 (`placement.inference_dtype`), float32 on a CPU."""
    import torch

    from gsm8k_tr import placement

    n = 8192 if device.type == "cuda" else 1024
    dtype = placement.inference_dtype(device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started, runs = time.perf_counter(), 10
    for _ in range(runs):
        a @ b
    sync(device)
    return 2 * n**3 * runs / (time.perf_counter() - started)


def sync(device: Any) -> None:
    """Wait for the device's queued work, so that a host clock times it (a no-op on a CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _reset(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed_steps(history: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [h for h in history if key in h]


@contextmanager
def longest_batch(owner: Any, name: str, stage: str) -> Iterator[dict[str, int]]:
    """The largest (rows, tokens) batch the stage ran while in the block: SFT's collated batches (`owner.name` is
    the collator's call), GRPO's scored ones (`owner.name` is the scoring method, its third argument the ids, its
    fifth the completion's length, noted as `completion`, its sixth the rows it scores at once)."""
    seen = {"rows": 0, "tokens": 0}
    original = getattr(owner, name)

    def note(ids: Any, completion: int | None = None, chunk: int | None = None) -> None:
        rows, tokens = ids.shape
        rows = min(rows, chunk or rows)  # TRL scores a generation call's completions in chunks of `batch_size`
        if rows * tokens > seen["rows"] * seen["tokens"]:
            seen.update(rows=rows, tokens=tokens, **({"completion": int(completion)} if completion else {}))

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if stage == "sft":
            note(result["input_ids"])
        else:
            note(args[1], args[3] if len(args) > 3 else kwargs.get("logits_to_keep"),
                 args[4] if len(args) > 4 else kwargs.get("batch_size"))
        return result

    with patch.object(owner, name, recording):
        yield seen


def plan_at(recipe: Any, manifest: dict[str, Any], stage: str, seen: dict[str, int]) -> float | None:
    """The stage's memory plan (its own settings) at the largest batch it ran, in GiB: the like-for-like
    comparison with the measured peak (the stage's own plan assumes its longest row in every batch)."""
    from gsm8k_tr.train import memory
    from gsm8k_tr.train.plan import model_config

    plan = manifest.get("memory_plan")
    if not plan or not seen["tokens"]:
        return None
    settings = {**plan["settings"], "micro_batch": seen["rows"], "length": seen["tokens"]}
    if "completion" in seen:  # where the rollouts keep each prompt once, the plan counts the prompt apart
        settings["prompt_length"] = seen["tokens"] - seen["completion"]
    shape = memory.Shape.from_config(model_config(recipe))
    return round(memory.estimate(shape, stage, settings, on_gpu=True).peak_gib, 2)


def part_sft(recipe: Any, device: Any, parameters: int, rate: float) -> dict[str, Any]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from gsm8k_tr.train import sft

    with longest_batch(DataCollatorForLanguageModeling, "torch_call", "sft") as seen:
        manifest = sft.main(recipe, overwrite=True)
    history = json.loads((Path(recipe.output_dir) / "sft" / "log_history.json").read_text())
    logged = _timed_steps(history, "step_time")  # one entry per step (logging_steps=1)
    first, last = logged[0], logged[-1]  # the first step warms up (CUDA's and cuBLAS's setup); rates from the rest
    seconds = sum(h["step_time"] for h in logged[1:])
    tokens = last["num_tokens"] - first["num_tokens"]
    per_s = tokens / seconds if seconds > 0 else 0.0
    return {"steps": manifest["global_step"], "micro_batch": manifest.get("micro_batch"),
            "step_s": round(seconds / max(len(logged) - 1, 1), 3), "first_step_s": round(first["step_time"], 2),
            "tokens_per_step": round(tokens / max(len(logged) - 1, 1)),
            "tokens_per_s": round(per_s), "matmul_share": round(per_s * 4 * parameters / rate, 4),
            "peak_gib": _peak(device), "plan_gib": (manifest.get("memory_plan") or {}).get("peak_gib"),
            "longest_batch": seen, "plan_at_longest_batch_gib": plan_at(recipe, manifest, "sft", seen)}


def part_grpo(recipe: Any, device: Any) -> dict[str, Any]:
    import trl

    from gsm8k_tr.train import grpo

    with longest_batch(trl.GRPOTrainer, "_get_per_token_logps_and_entropies", "grpo") as seen:
        manifest = grpo.main(recipe, overwrite=True)
    history = json.loads((Path(recipe.output_dir) / "grpo" / "log_history.json").read_text())
    logged = _timed_steps(history, "step_time")[1:] or _timed_steps(history, "step_time")
    per_step = recipe.grpo.get("per_device_train_batch_size", 8)
    per_step = (per_step if isinstance(per_step, int) else 8) * recipe.grpo.get("gradient_accumulation_steps", 1)
    if manifest.get("micro_batch"):
        per_step = manifest["micro_batch"]["per_device_train_batch_size"] * \
            manifest["micro_batch"]["gradient_accumulation_steps"]
    step = sum(h["step_time"] for h in logged) / len(logged)
    first = _timed_steps(history, "step_time")[0]["step_time"]  # with compiled decoding: the compile
    # A call may generate several steps' completions (`generation_batch_size`); the steps between log no generation.
    calls = [h for h in logged if "time/generation_s" in h]
    per_call = recipe.grpo.get("generation_batch_size") or per_step
    generation = sum(h["time/generation_s"] for h in calls)
    generated = sum(h["completions/mean_length"] * per_call for h in calls)
    # each timed step too: a step that compiled again (a longer prompt than any before) shows, where a mean hides it
    return {"steps": manifest["global_step"], "step_s": round(step, 2), "first_step_s": round(first, 1),
            "step_times_s": [round(h["step_time"], 2) for h in logged],
            "generation_share": round(generation / (step * len(logged)), 3), "rollout_calls": len(calls),
            "generated_tokens_per_s": round(generated / generation) if generation else None,
            "rollouts": manifest.get("rollouts"),
            "micro_batch": manifest.get("micro_batch"), "peak_gib": _peak(device),
            "plan_gib": (manifest.get("memory_plan") or {}).get("peak_gib"), "longest_batch": seen,
            "plan_at_longest_batch_gib": plan_at(recipe, manifest, "grpo", seen)}


def part_held_out(recipe: Any, device: Any) -> dict[str, Any]:
    """GRPO with its held-out check after each step: `part_grpo`'s figures, and each check's step and accuracy (a
    check that fails to run stops the part)."""
    result = part_grpo(recipe, device)
    history = json.loads((Path(recipe.output_dir) / "grpo" / "log_history.json").read_text())
    checks = {h["step"]: h["eval/accuracy"] for h in history if "eval/accuracy" in h}
    if len(checks) != result["steps"]:
        raise RuntimeError(f"{len(checks)} held-out checks logged in {result['steps']} steps: {checks}")
    return {**result, "held_out": checks}


def part_decode(model: str, device: Any, parameters: int, sequences: int, new_tokens: int,
                compiled: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rollouts import decode

    result = decode(model, sequences, new_tokens, repeats=2, compiled=compiled)
    rate = bandwidth(device)
    if rate:  # what a decoding step must read at least, at the card's memory bandwidth
        from transformers import AutoConfig

        from gsm8k_tr.train import memory

        shape = memory.Shape.from_config(AutoConfig.from_pretrained(model))
        # the bf16 keys and values attention reads, at the cache's mean length over the call
        cache = memory.kv_cache_bytes(shape, sequences * (result["prompt_tokens"] + new_tokens / 2), 2)
        result["weight_read_bound_ms"] = round(1000 * 2 * parameters / rate, 3)
        result["read_bound_ms"] = round(1000 * (2 * parameters + cache) / rate, 3)
    return result


def part_eval(model: str, recipe: Any, questions: int, work: Path, backend: str = "hf",
              label: str | None = None) -> dict[str, Any]:
    from gsm8k_tr import placement
    from gsm8k_tr.infer import evaluate

    label = label or f"eval-{backend}"
    first = None
    metrics = evaluate.main(model, recipe, limit=questions, output=str(work / label), overwrite=True, backend=backend)
    if metrics.get("decoding") in placement.COMPILED_DECODINGS:  # that call compiled; time a second one
        first = metrics
        metrics = evaluate.main(model, recipe, limit=questions, output=str(work / label), overwrite=True)
    tokens = metrics["mean_completion_tokens"] * metrics["n"]
    seconds = max(metrics["seconds"], 1e-3)  # never a division by a time that rounded to zero
    result = {"questions_per_s": round(metrics["n"] / seconds, 2),
              "generated_tokens_per_s": round(tokens / seconds), "dtype": metrics["dtype"],
              "decoding": metrics.get("decoding"), "accuracy": metrics.get("accuracy")}
    if first is not None:
        result["first_call_s"] = first["seconds"]
    if label != "eval-hf" and (work / "eval-hf" / "predictions.jsonl").is_file():  # eval's greedy answers?
        answers = [[json.loads(line)["completion"] for line in (work / folder / "predictions.jsonl").open()]
                   for folder in ("eval-hf", label)]
        result["same_completions"] = f"{sum(a == b for a, b in zip(*answers))}/{len(answers[0])}"
    return result


BASE_PARTS = ("sft", "grpo", "decode", "eval")
# A decoding named with this suffix runs with grouped attention off (each row its own copy of its prompt), where
# placement would turn it on: compiled-step ran GRPO at 0.81x compiled on an H200 with it on, and alone, without it,
# at 1.47x; this measures which of the two differences costs it there.
PER_ROW = "-per-row"
# Rollout engines TRL offers besides `generate`, named as ways: GRPO only (evaluation decodes as before).
ENGINES = {"continuous-batching": "grpo.use_transformers_continuous_batching=true"}
DECODINGS = ("eager", "compiled", "compiled-step", f"compiled-step{PER_ROW}", *ENGINES)


def way_overrides(way: str) -> list[str]:
    """The recipe overrides that run GRPO (and evaluation) the `--also-decodings` way `way`: a decoding (grouped
    attention set apart by `per_row`), or an engine's key."""
    return [ENGINES[way]] if way in ENGINES else [f"decoding={way.removesuffix(PER_ROW)}"]


def per_row(way: str, run: Any) -> Any:
    """`run`, with grouped attention off throughout where `way` ends in PER_ROW (placement's rule replaced, so the
    rollouts, evaluation and the memory plan all see it off); `run` itself otherwise."""
    if not way.endswith(PER_ROW):
        return run

    def without_grouping() -> Any:
        from gsm8k_tr import placement

        with patch.object(placement, "grouped_attention", lambda *_: False):
            return run()
    return without_grouping


def prepared_data(folder: Path) -> list[str]:
    """`data.dataset=FOLDER` where FOLDER holds data that `prepare` wrote (read as it is:
    `data.splits.prepared_folder`), else nothing. A run that reads it does not align the same real rows again: about
    10-15 s on 2 CPU cores each time, most of it indexing English GSM8K."""
    from gsm8k_tr.data.splits import is_prepared

    return [f"data.dataset={folder}"] if is_prepared(folder) else []


def also_recipe(common: list[str], work: Path, folder: str, *extra: str) -> Any:
    """The recipe of an `--also-*` run into WORK/FOLDER: gpu_check's own (`common`) with `extra`, from SFT's model,
    reading the data the first run prepared (WORK/data) where it is there (`prepared_data`)."""
    from gsm8k_tr.config import load_recipe

    return load_recipe(str(RECIPE), [*common, f"output_dir={work / folder}", f"model.sft_output={work / 'sft'}",
                                     *prepared_data(work / "data"), *extra])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps (the first warms up)")
    parser.add_argument("--sft-steps", type=int, default=10, help="SFT steps (the first warms up)")
    parser.add_argument("--questions", type=int, default=64, help="evaluation questions")
    parser.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=False,
                        help="also GRPO and evaluation with vLLM (installed extra)")
    parser.add_argument("--both-decodings", action="store_true",
                        help="also GRPO and evaluation with the decoding that `auto` does not choose here")
    parser.add_argument("--also-decodings", nargs="+", default=[], choices=DECODINGS,
                        help=f"also GRPO and evaluation with these decodings ({PER_ROW}: grouped attention off; "
                             f"{', '.join(ENGINES)}: GRPO's rollouts by that engine, no evaluation)")
    parser.add_argument("--also-generation-batches", nargs="+", type=int, default=[], metavar="N",
                        help="also GRPO with N completions generated in one call (TRL's generation_batch_size; the "
                             "recipe generates 64, one optimizer step's): 128 feeds two steps")
    parser.add_argument("--held-out", type=int, default=0, metavar="N",
                        help="also 2 GRPO steps with the in-training held-out check on N validation questions after "
                             "each (eval.every_steps, on in the real recipes), decoded as the rollouts are")
    parser.add_argument("--parts", nargs="+", choices=BASE_PARTS, default=list(BASE_PARTS),
                        help="the parts to run (each with its --also-* runs; grpo and eval need sft's model)")
    parser.add_argument("--cpu", action="store_true", help="a smoke run on the CPU with builtin:tiny-gpt2")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: this machine has no CUDA GPU (torch.cuda.is_available() is False); run it where "
              "nvidia-smi lists one, or pass --cpu for a smoke run", file=sys.stderr)
        return 2
    from gsm8k_tr.config import load_recipe

    started = time.perf_counter()
    work = Path(args.keep or tempfile.mkdtemp(prefix="gsm8k-tr-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        model, tokens = "builtin:tiny-gpt2", 48  # its context is 512 tokens
    else:
        model, tokens = str(work / "model"), 384
        if not (work / "model" / "config.json").is_file():
            build_model(work / "model")
    data, where = data_overrides()
    common = [*sft_overrides(work, model, data, args.sft_steps, args.cpu), f"grpo.max_steps={args.steps}",
              "grpo.save_steps=1000", "grpo.logging_steps=1", "grpo.report_to=[]",
              "grpo.per_device_train_batch_size=auto", f"grpo.max_completion_length={tokens}",
              f"eval.max_new_tokens={tokens}"]
    recipe = load_recipe(str(RECIPE), common)
    from gsm8k_tr import placement
    from gsm8k_tr.train.plan import model_config

    parameters = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_config(
        model_config(recipe)).parameters())
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    rate = matmul_rate(device)
    print(f"{name}; torch {torch.__version__}; model {parameters / 1e6:.0f}M parameters; data: {where}; "
          f"measured {str(placement.inference_dtype(device)).removeprefix('torch.')} matmul rate {rate / 1e12:.1f} TFLOP/s")
    parts: list[tuple[str, Any]] = [
        ("sft", lambda: part_sft(recipe, device, parameters, rate)),
        ("grpo", lambda: part_grpo(recipe, device)),
        ("decode", lambda: part_decode(model, device, parameters, 16 if args.cpu else 64, 16 if args.cpu else 64,
                                       None if not args.cpu else args.both_decodings)),
        ("eval", lambda: part_eval(str(work / "sft"), recipe, args.questions, work)),
    ]
    chosen = placement.decoding(recipe.decoding, device)
    other = "eager" if chosen == "compiled" else "compiled"
    others = list(dict.fromkeys([*([other] if args.both_decodings else []), *args.also_decodings]))
    for way in others:
        parts.append((f"grpo-{way}", per_row(way, lambda way=way: part_grpo(
            also_recipe(common, work, way, *way_overrides(way)), device))))
        if way not in ENGINES:
            parts.append((f"eval-{way}", per_row(way, lambda way=way: part_eval(
                str(work / "sft"), also_recipe(common, work, way, *way_overrides(way)), args.questions, work,
                label=f"eval-{way}"))))
    for rows in args.also_generation_batches:  # completions one update old or more: docs/benchmarks.md
        parts.append((f"grpo-rows-{rows}", lambda rows=rows: part_grpo(
            also_recipe(common, work, f"rows-{rows}", f"grpo.generation_batch_size={rows}"), device)))
    if args.held_out:
        parts.append(("grpo-held-out", lambda: part_held_out(also_recipe(
            common, work, "held-out", "grpo.max_steps=2", "eval.every_steps=1", f"eval.held_out_size={args.held_out}"),
            device)))
    if args.vllm:
        parts += [("grpo-vllm", lambda: part_grpo(also_recipe(common, work, "vllm", "grpo.use_vllm=true"), device)),
                  ("eval-vllm", lambda: part_eval(str(work / "sft"), recipe, args.questions, work, "vllm"))]
    parts = [(part, run) for part, run in parts if part.split("-")[0] in args.parts]
    results: dict[str, Any] = {"device": name, "matmul_tflops": round(rate / 1e12, 1), "data": where,
                               "parameters": parameters}
    failed = []
    for part, run in parts:
        _reset(device)
        part_started = time.perf_counter()
        try:
            results[part] = {**run(), "seconds": round(time.perf_counter() - part_started, 1)}
        except Exception as error:  # one failed part must not hide the others' numbers
            failed.append(part)
            results[part] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        print(f"{part}: {json.dumps(results[part])}", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    sft_, grpo_, decode_, eval_ = (results.get(k, {}) for k in ("sft", "grpo", "decode", "eval"))
    print(f"SFT: {sft_.get('tokens_per_s')} tokens/s, {100 * (sft_.get('matmul_share') or 0):.1f}% of the matmul rate "
          f"(micro-batch {(sft_.get('micro_batch') or {}).get('per_device_train_batch_size')}); peak "
          f"{sft_.get('peak_gib')} GiB, plan {sft_.get('plan_gib')} GiB at the longest row, "
          f"{sft_.get('plan_at_longest_batch_gib')} GiB at the largest batch run {sft_.get('longest_batch')}")
    print(f"GRPO ({chosen}): {grpo_.get('step_s')} s/step, {grpo_.get('generated_tokens_per_s')} generated tokens/s "
          f"in rollouts, generating {100 * (grpo_.get('generation_share') or 0):.0f}% of a step, first step "
          f"{grpo_.get('first_step_s')} s; peak {grpo_.get('peak_gib')} GiB, plan {grpo_.get('plan_gib')} GiB, "
          f"{grpo_.get('plan_at_longest_batch_gib')} GiB at the largest batch scored {grpo_.get('longest_batch')}")
    if "today" in decode_:
        print(f"decode: today {decode_['today']['ms_per_step']} ms/step, eager fast {decode_['fast']['ms_per_step']} "
              f"ms/step ({decode_['ratio']}x), compiled {(decode_.get('fast, compiled') or {}).get('ms_per_step', '-')}"
              f" ms/step; bound: reading the weights {decode_.get('weight_read_bound_ms', '-')} ms, and the KV "
              f"cache too {decode_.get('read_bound_ms', '-')} ms")
    print(f"eval ({chosen}): {eval_.get('generated_tokens_per_s')} generated tokens/s, {eval_.get('questions_per_s')} "
          f"questions/s, first call {eval_.get('first_call_s', '-')} s")
    for way in others:
        grpo_o, eval_o = results.get(f"grpo-{way}", {}), results.get(f"eval-{way}", {})
        evaluation = "" if way in ENGINES else (
            f", eval {eval_o.get('generated_tokens_per_s')} generated tokens/s (first call "
            f"{eval_o.get('first_call_s', '-')} s), completions the same as eval's: {eval_o.get('same_completions')}")
        print(f"{way}: GRPO {grpo_o.get('step_s')} s/step ({grpo_o.get('generated_tokens_per_s')} generated "
              f"tokens/s; first step {grpo_o.get('first_step_s')} s){evaluation}")
    for rows in args.also_generation_batches:
        grpo_r = results.get(f"grpo-rows-{rows}", {})
        print(f"{rows} completions a call: GRPO {grpo_r.get('step_s')} s/step against {grpo_.get('step_s')} "
              f"({grpo_r.get('generated_tokens_per_s')} generated tokens/s against "
              f"{grpo_.get('generated_tokens_per_s')}); peak {grpo_r.get('peak_gib')} GiB, "
              f"plan {grpo_r.get('plan_gib')}")
    if args.held_out:
        held = results.get("grpo-held-out", {})
        print(f"GRPO with held-out checks: {held.get('held_out')}; {held.get('step_s')} s/step, peak "
              f"{held.get('peak_gib')} GiB, plan {held.get('plan_gib')} GiB")
    print(f"gpu_check: {results['seconds']:.0f} s in all")
    (work / "gpu_check.json").write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"gpu_check: {len(failed)} part(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
