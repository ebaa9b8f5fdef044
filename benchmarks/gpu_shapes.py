"""Batch shapes, attention kernels, compiled training and the stop check: one ratio each.

    python benchmarks/gpu_shapes.py                # a CUDA GPU: GPT-2 Medium's shape, random weights, real rows
    python benchmarks/gpu_shapes.py --model /tmp/gc/model   # a model folder (gpu_check --keep's)
    python benchmarks/gpu_shapes.py --cpu          # the same on the CPU with builtin:tiny-gpt2: a smoke run

- sft: `--sft-steps` SFT steps (gpu_check's recipe: real GSM8K-TR rows when
  the shared sample is there, micro-batch auto) with every batch padded to
  its own longest row, against padded to a multiple of 64 tokens
  (`placement.pad_to_multiple_of`, the default on CUDA): trained tokens per
  second over the steps after the first, and the ratio; and padded to 64
  with attention kept off cuDNN's kernel (forward and backward), to tell
  cuDNN's per-shape set-up from its cost per call.
- sft-compiled: the same steps padded to 64 with the model under
  torch.compile (TrainingArguments' `torch_compile`, not a default): tokens
  per second over the steps after the first that compiled nothing, against
  the eager run padded to 64 counted the same way when sft ran before it
  (in this call, or an earlier one with the same `--work`),
  and the steps that compiled with their seconds (a new batch length or
  row count can compile again before the shapes turn dynamic).
- sft-order: SFT steps of `--order-split` micro-batches (default 4 x 8, the
  16 GB recipe's), the examples of each optimizer step split at random
  against grouped by length (transformers' `batch_rebalance`, the default
  when a step has several micro-batches: `train/batch_order.py`): real
  tokens per second over the steps after the first, and the tokens computed
  (padding included) per real token, for each.
- sft-split: the same optimizer steps (`--splits`, default 32 x 1, 16 x 2, 8 x 4 and 4 x 8: 32 examples a
  step, the real recipes' effective batch) cut into fewer or more micro-batches, each as the stage runs it
  (grouped by length where a step has several): real tokens per second over the steps after the first, each
  against 8 x 4 (the 24 GB recipe's fixed split; `per_device_train_batch_size: auto` takes the largest that
  fits), the tokens computed per real token, and the peak memory. A step of one micro-batch pays the host's
  work per micro-batch once, and pads all its rows to the longest.
- sft-padding-free: the same SFT steps as each stage pads them on this
  device, against TRL's `padding_free` (each micro-batch one row of its
  examples end to end, no padding; a recipe option, not a default): trained
  tokens per second over the steps after the first, and the ratio.
- decode: `--sequences` greedy answers to the training questions of
  gpu_check's data (the sample's real rows, so their real prompt lengths;
  generated problems without the sample), eager decoding in
  bfloat16 on a GPU, with torch's own choice of attention kernel against
  without cuDNN's (`placement.decoding_attention`, the default for eager
  decoding on CUDA): ms per decoding step, the ratio, and whether the tokens
  are the same.
- stop: the same rows decoded as GRPO's rollouts decode them on a GPU
  (compiled), with `generate` reading its stop flag after every step against
  a step late (`placement.stop_check`, the default on a GPU): ms per decoding
  step, the ratio, and whether the tokens are the same.

The SFT and decoding parts run each configuration in its own process, because cuDNN keeps
the graphs it has built for the life of a process: a second run in the same
one would find the first run's shapes set up. The data is prepared once, before
them, and each reads it (`prepare_once`). The stop check leaves nothing
behind, so its two settings alternate in one process (twice each, the fastest
counted) after one call that compiles. On a CPU none of the choices is made
(padding is only work there, there is no cuDNN, and nothing to overlap), so
`--cpu` checks that the script runs, not what the choices gain; the stop part
needs a GPU's events, and its code is run on the CPU by
`tests/test_gpu_shapes_benchmark.py` with those stood in for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import RECIPE, build_model, data_overrides, part_sft, prepared_data, sft_overrides, sync  # noqa: E402
from profile_steps import real_prompts  # noqa: E402


def _recipe(work: Path, model: str, steps: int, cpu: bool, *extra: str, data: Path | None = None) -> Any:
    """gpu_check's recipe (`sft_overrides`) into WORK with `extra` overrides, reading `data` where it holds prepared
    data (`prepare_once`)."""
    from gsm8k_tr.config import load_recipe

    return load_recipe(str(RECIPE), [*sft_overrides(work, model, data_overrides()[0], steps, cpu),
                                     *(prepared_data(data) if data else []), *extra])


def prepare_once(work: Path, model: str, cpu: bool) -> None:
    """The data every setting reads, prepared into WORK/data before the first setting's process: each preparing its
    own aligned the same real rows again, 10-15 s on 2 CPU cores each (5 settings on `--cpu`, 4 in `sft-split`)."""
    from gsm8k_tr.data import splits

    splits.ensure_prepared(_recipe(work, model, 1, cpu))


@contextmanager
def graphs_per_step() -> Iterator[list[int]]:
    """The number of graphs torch's compiler has compiled so far: on entering the block, then at the end of each SFT
    step in it."""
    import torch._dynamo.utils
    from transformers import TrainerCallback

    from gsm8k_tr.train import sft

    counts = [torch._dynamo.utils.counters["stats"]["unique_graphs"]]  # and one more at the end of each step

    class Note(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])

    original = sft.use_compact_progress

    def noting(trainer: Any) -> None:
        original(trainer)
        trainer.add_callback(Note())

    with patch.object(sft, "use_compact_progress", noting):
        yield counts


def without_compiling(history: list[dict[str, Any]], graphs: list[int]) -> dict[str, Any]:
    """Tokens/s over the steps after the first that compiled nothing, and the steps that compiled (step numbers and
    their seconds): a compiled run's steady rate apart from its compiles, which a run of a few steps cannot spread
    as a whole epoch would. Each entry of `history` is one step's log (logging_steps=1); `graphs` is
    `graphs_per_step`'s list."""
    logged = [h for h in history if "step_time" in h]
    compiling = [i for i in range(min(len(logged), len(graphs) - 1)) if graphs[i + 1] > graphs[i]]
    steady = [i for i in range(1, len(logged)) if i not in compiling]
    seconds = sum(logged[i]["step_time"] for i in steady)
    tokens = sum(logged[i]["num_tokens"] - logged[i - 1]["num_tokens"] for i in steady)
    return {"tokens_per_s_without_compiling": round(tokens / seconds) if seconds > 0 else None,
            "compiling_steps": [i + 1 for i in compiling],
            "compiling_s": round(sum(logged[i]["step_time"] for i in compiling), 1)}


@contextmanager
def computed_tokens() -> Iterator[dict[str, int]]:
    """Tokens in the SFT batches built in the block, padding included (`computed`), and those that are not padding
    (`real`)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    counts = {"computed": 0, "real": 0}
    original = DataCollatorForLanguageModeling.torch_call

    def counting(self: Any, examples: list[Any]) -> Any:
        batch = original(self, examples)
        counts["computed"] += batch["input_ids"].numel()
        counts["real"] += sum(len(e["input_ids"]) for e in examples)
        return batch

    with patch.object(DataCollatorForLanguageModeling, "torch_call", counting):
        yield counts


def run_sft(model: str, work: Path, multiple: int | str | None, steps: int, cpu: bool,
            kernels: list[str] | None = None, compiled: bool = False, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """SFT tokens/s with batches padded to `multiple` (None: each to its own longest row; "device": as the stage
    pads on this device), attention on `kernels` (None: torch's choice) for the whole run, backward included;
    `compiled`: the model under torch.compile (TrainingArguments' `torch_compile`), its steps that compiled counted
    apart; `extra`: more recipe overrides."""
    import torch

    from gsm8k_tr.infer import attention_kernels

    padding = [] if multiple == "device" else [f"sft.pad_to_multiple_of={multiple if multiple else 'null'}"]
    recipe = _recipe(work, model, steps, cpu, *padding, f"sft.torch_compile={str(compiled).lower()}", *extra,
                     data=work.parent / "data")  # a setting's folder in the call's
    with attention_kernels.only(kernels), graphs_per_step() as graphs, computed_tokens() as tokens:
        result = part_sft(recipe, torch.device("cpu" if cpu else "cuda"), parameters=1, rate=1.0)  # tokens/s only
    history = json.loads((Path(recipe.output_dir) / "sft" / "log_history.json").read_text())
    return {**{key: result[key] for key in ("tokens_per_s", "step_s", "first_step_s", "tokens_per_step",
                                            "micro_batch", "longest_batch", "peak_gib")},
            **without_compiling(history, graphs),
            "computed_per_real_token": round(tokens["computed"] / max(tokens["real"], 1), 3)}


def _decoder(model: str, work: Path, sequences: int, cpu: bool) -> tuple[Any, Any, Any, list[str]]:
    """(device, model, tokenizer, prompts) for the decoding parts: the model in inference precision, every row
    running to the limit (no stop token), so each configuration runs the same number of steps."""
    import torch

    from gsm8k_tr.infer import evaluate

    device, recipe = torch.device("cpu" if cpu else "cuda"), _recipe(work, model, 1, cpu, data=work.parent / "data")
    loaded, tokenizer, _ = evaluate.load_for_inference(model, recipe, str(device))  # as evaluation loads it
    loaded.eval().generation_config.eos_token_id = None
    return device, loaded, tokenizer, real_prompts(recipe, sequences)


def _timed(device: Any, loaded: Any, tokenizer: Any, prompts: list[str], tokens: int,
           decoding: str) -> tuple[float, list[str]]:
    """Seconds for `generation.generate` over `prompts` (one batch), and the answers."""
    from gsm8k_tr.infer import generation

    sync(device)
    started = time.perf_counter()
    out = generation.generate(loaded, tokenizer, prompts, tokens, batch_size=len(prompts), decoding=decoding)
    sync(device)
    return time.perf_counter() - started, [c[0].text for c in out]


def run_decode(model: str, work: Path, kernels: str, sequences: int, new_tokens: int, cpu: bool) -> dict[str, Any]:
    from gsm8k_tr import placement

    device, loaded, tokenizer, prompts = _decoder(model, work, sequences, cpu)
    chosen = (lambda device, how: None) if kernels == "torch" else placement.decoding_attention
    with patch.object(placement, "decoding_attention", chosen):
        _timed(device, loaded, tokenizer, prompts, 4, "eager")  # first use of the kernels and the allocator
        seconds, texts = _timed(device, loaded, tokenizer, prompts, new_tokens, "eager")
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    return {"ms_per_step": round(1000 * seconds / new_tokens, 2), "longest_prompt_tokens": longest,
            "kernels": chosen(device, "eager") or "torch's choice", "texts": texts}


STOP_CHECKS = ("every step", "deferred")


def run_stop(model: str, work: Path, sequences: int, new_tokens: int, cpu: bool, rounds: int = 2) -> dict[str, Any]:
    """Decoding as GRPO's rollouts run it on the device (compiled on a GPU) with the stop flag read after every
    step against a step late (`placement.stop_check`), alternating in one process (nothing here outlives a
    call), fastest of `rounds` each."""
    from gsm8k_tr import placement

    device, loaded, tokenizer, prompts = _decoder(model, work, sequences, cpu)
    how = "eager" if cpu else "compiled"
    _timed(device, loaded, tokenizer, prompts, new_tokens, how)  # compiles, for the very shape timed below
    best: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(rounds):
        for check in STOP_CHECKS:
            with patch.object(placement, "stop_check", lambda device, synced=False, check=check: check):
                seconds, texts[check] = _timed(device, loaded, tokenizer, prompts, new_tokens, how)
            best[check] = min(best.get(check, seconds), seconds)
    return {"decoding": how, "ms_per_step": {check: round(1000 * best[check] / new_tokens, 2) for check in STOP_CHECKS},
            "same_answers": sum(a == b for a, b in zip(*(texts[check] for check in STOP_CHECKS)))}


def child(args: argparse.Namespace) -> dict[str, Any]:
    from gsm8k_tr import placement

    what, setting = args.only
    if what == "sft-order":
        micro, accumulate = args.order_split
        return run_sft(args.model, Path(args.work) / f"{what}-{setting}", "device", args.sft_steps, args.cpu,
                       extra=(f"sft.per_device_train_batch_size={micro}", f"sft.gradient_accumulation_steps={accumulate}",
                              f"sft.train_sampling_strategy={setting}"))
    if what == "sft-split":
        micro, accumulate = setting.split("x")
        split = (f"sft.per_device_train_batch_size={micro}", f"sft.gradient_accumulation_steps={accumulate}")
        return run_sft(args.model, Path(args.work) / f"{what}-{setting}", "device", args.sft_steps, args.cpu,
                       extra=split)
    if what == "sft-padding-free":
        return run_sft(args.model, Path(args.work) / f"{what}-{setting}", "device", args.sft_steps, args.cpu,
                       extra=(f"sft.padding_free={setting}",))
    if what in ("sft", "sft-compiled"):
        multiple = setting.removesuffix("-no-cudnn")
        return run_sft(args.model, Path(args.work) / f"{what}-{setting}", None if multiple == "none" else int(multiple),
                       args.sft_steps, args.cpu,
                       list(placement.WITHOUT_CUDNN) if setting.endswith("-no-cudnn") else None,
                       compiled=what == "sft-compiled")
    if what == "stop":
        return run_stop(args.model, Path(args.work) / "stop", args.sequences, args.new_tokens, args.cpu)
    return run_decode(args.model, Path(args.work) / f"decode-{setting}", setting, args.sequences, args.new_tokens,
                      args.cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: GPT-2 Medium's shape, random weights)")
    parser.add_argument("--sft-steps", type=int, default=30, help="SFT steps per configuration (the first warms up)")
    parser.add_argument("--sequences", type=int, default=64, help="rows decoded together")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per row")
    parser.add_argument("--order-split", nargs=2, type=int, default=[4, 8], metavar=("MICRO", "ACCUMULATION"),
                        help="sft-order's micro-batch and gradient accumulation (default: 4 8)")
    parser.add_argument("--splits", nargs="+", default=["32x1", "16x2", "8x4", "4x8"], type=_split,
                        metavar="MICROxACCUMULATION", help="sft-split's splits of one optimizer step (default: 32x1 "
                        "16x2 8x4 4x8), each against 8x4 where it is among them, else against the first")
    parser.add_argument("--parts", nargs="+",
                        choices=["sft", "sft-compiled", "sft-order", "sft-split", "sft-padding-free", "decode", "stop"],
                        help="default: sft, decode and stop on a GPU; sft and decode with --cpu")
    parser.add_argument("--cpu", action="store_true", help="a smoke run on the CPU with builtin:tiny-gpt2")
    parser.add_argument("--work", help="the work folder, kept (default: a new temporary one); results of an earlier "
                        "call with the same folder are kept and compared with")
    parser.add_argument("--only", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(child(args)))
        return 0
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_shapes: this machine has no CUDA GPU (torch.cuda.is_available() is False); run it where "
              "nvidia-smi lists one, or pass --cpu for a smoke run", file=sys.stderr)
        return 2
    if args.cpu and "stop" in (args.parts or []):
        print("gpu_shapes: the stop part needs a GPU (a CPU has no events to wait on, and nothing to overlap); "
              "leave it out of --parts with --cpu", file=sys.stderr)
        return 2
    args.parts = args.parts or (["sft", "decode"] if args.cpu else ["sft", "decode", "stop"])
    work = Path(args.work or tempfile.mkdtemp(prefix="gsm8k-tr-gpu-shapes-"))
    model = args.model or ("builtin:tiny-gpt2" if args.cpu else str(work / "model"))
    if not args.model and not args.cpu and not (work / "model" / "config.json").is_file():
        build_model(work / "model")
    runs = {"sft": ("none", "64", "64-no-cudnn"), "sft-compiled": ("64",), "sft-order": ("random", "batch_rebalance"),
            "sft-split": tuple(args.splits), "sft-padding-free": ("false", "true"),
            "decode": ("torch", "placement"),
            "stop": ("both",)}
    prepare_once(work, model, args.cpu)
    saved = work / "gpu_shapes.json"  # an earlier call's results with the same --work: kept, and compared with
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}
    failed = []
    for part in args.parts:  # each setting saved and shown as soon as it is done: a time limit keeps what finished
        for setting in runs[part]:
            command = [sys.executable, __file__, "--only", part, setting, "--model", model, "--work", str(work),
                       "--sft-steps", str(args.sft_steps), "--sequences", str(args.sequences), "--new-tokens",
                       str(args.new_tokens), "--order-split", *map(str, args.order_split), "--splits", *args.splits,
                       *(["--cpu"] if args.cpu else [])]
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{part} {setting}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                failed.append(part)
                break
            results[f"{part}-{setting}"] = json.loads(line[7:])
            # each setting's figures as soon as it is done: a part of four fresh processes can outlast a time limit
            print(f"{part} {setting}: {line[7:]}", flush=True)
            saved.write_text(json.dumps(results, indent=1))
        else:
            print(report(part, results, args), flush=True)
    return 1 if failed else 0


def _split(text: str) -> str:
    """A `--splits` entry, MICROxACCUMULATION: two whole numbers of at least 1."""
    parts = text.split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give a split as MICROxACCUMULATION, e.g. 8x4")
    return text


def report(part: str, results: dict[str, Any], args: argparse.Namespace) -> str:
    """The line that says what one part measured."""
    if part == "sft":
        plain, padded, no_cudnn = results["sft-none"], results["sft-64"], results["sft-64-no-cudnn"]
        return (f"sft: {plain['tokens_per_s']} tokens/s padded to each batch's longest row, {padded['tokens_per_s']} "
                f"padded to a multiple of 64: {padded['tokens_per_s'] / max(plain['tokens_per_s'], 1):.2f}x "
                f"({args.sft_steps} steps; steps after the first; first step {plain['first_step_s']} s against "
                f"{padded['first_step_s']} s); padded to 64 without cuDNN's attention {no_cudnn['tokens_per_s']}: "
                f"{no_cudnn['tokens_per_s'] / max(padded['tokens_per_s'], 1):.2f}x the padded run with torch's choice")
    if part == "sft-compiled":
        compiled, eager = results["sft-compiled-64"], results.get("sft-64")
        steady, eager_steady = compiled["tokens_per_s_without_compiling"], (eager or {}).get(
            "tokens_per_s_without_compiling")
        against = (f": {steady / eager_steady:.2f}x the eager run padded to 64 ({eager_steady} tokens/s over its steps "
                   "that compiled nothing)" if steady and eager_steady else "")
        return (f"sft-compiled: padded to 64 under torch.compile, {steady} tokens/s "
                f"over the steps after the first that compiled nothing{against}; steps "
                f"{compiled['compiling_steps']} compiled, {compiled['compiling_s']} s in all ({args.sft_steps} steps; "
                f"{compiled['tokens_per_s']} tokens/s over every step after the first)")
    if part == "sft-order":
        plain, grouped = results["sft-order-random"], results["sft-order-batch_rebalance"]
        micro, accumulate = args.order_split
        return (f"sft-order: micro-batches of {micro} x {accumulate} a step: {plain['tokens_per_s']} tokens/s split at "
                f"random, {grouped['tokens_per_s']} grouped by length within each step: "
                f"{grouped['tokens_per_s'] / max(plain['tokens_per_s'], 1):.2f}x; tokens computed per real token "
                f"{plain['computed_per_real_token']} against {grouped['computed_per_real_token']} ({args.sft_steps} "
                "steps; steps after the first)")
    if part == "sft-split":
        base = "8x4" if "8x4" in args.splits else args.splits[0]
        rate = results[f"sft-split-{base}"]["tokens_per_s"]
        each = "; ".join(f"{split}: {r['tokens_per_s']} tokens/s ({r['tokens_per_s'] / max(rate, 1):.2f}x), "
                         f"{r['computed_per_real_token']} computed per real token"
                         + (f", peak {r['peak_gib']} GiB" if r.get("peak_gib") is not None else "")
                         for split in args.splits for r in [results[f"sft-split-{split}"]])
        return (f"sft-split: micro-batch x accumulation, each against {base}: {each} ({args.sft_steps} steps; steps "
                "after the first)")
    if part == "sft-padding-free":
        padded, free = results["sft-padding-free-false"], results["sft-padding-free-true"]
        return (f"sft-padding-free: {padded['tokens_per_s']} tokens/s padded as the stage pads on this device, "
                f"{free['tokens_per_s']} padding-free: {free['tokens_per_s'] / max(padded['tokens_per_s'], 1):.2f}x "
                f"({args.sft_steps} steps; steps after the first; micro-batch {padded['micro_batch']})")
    if part == "decode":
        torch_choice, ours = results["decode-torch"], results["decode-placement"]
        same = sum(a == b for a, b in zip(torch_choice.pop("texts"), ours.pop("texts")))
        return (f"decode: {torch_choice['ms_per_step']} ms/step with torch's choice of attention kernel, "
                f"{ours['ms_per_step']} ms/step with {ours['kernels']}: "
                f"{torch_choice['ms_per_step'] / ours['ms_per_step']:.2f}x; the same answers for "
                f"{same}/{args.sequences} (longest prompt {ours['longest_prompt_tokens']} tokens)")
    stop = results["stop-both"]
    each, late = (stop["ms_per_step"][check] for check in STOP_CHECKS)
    return (f"stop: {stop['decoding']} decoding, {args.sequences} rows: {each} ms/step reading the stop flag after "
            f"every step, {late} ms/step a step late: {each / late:.2f}x; the same answers for "
            f"{stop['same_answers']}/{args.sequences}")


if __name__ == "__main__":
    sys.exit(main())
