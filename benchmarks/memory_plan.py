"""The memory plan's estimate against measured peak memory, on CPU, for several model shapes.

    python benchmarks/memory_plan.py                 # every shape below: several minutes
    python benchmarks/memory_plan.py --shapes tiny demo
    python benchmarks/memory_plan.py --saved         # what a GPU keeps for backward, counted here: minutes
    python benchmarks/memory_plan.py --saved --shapes gpt2-medium --targets c_attn   # LoRA on some layers only
    python benchmarks/memory_plan.py --cpu-bf16 --phases sft grpo_training   # training under a CPU's bf16 autocast

Each phase runs in a fresh process: SFT (one training step: forward, backward
and an AdamW step on LoRA, GPT-2's dropout on, every token scored through
TRL's fused LM head as its SFTTrainer does), GRPO's generation (a batch of
rollouts with the KV cache) and GRPO's training step (no dropout, the same
tiled head). What is measured is the rise of resident memory over a
baseline taken after the imports (peak RSS, VmHWM, reset at the baseline),
with glibc told to hand every allocation over 64 KiB straight back to the
system, so resident memory follows live tensors. Models have random weights
built from their configs (so no file is mapped). Against it stands
`gsm8k_tr.train.memory.estimate` for the same phase, on CPU (float32 compute,
no CUDA runtime). Prints one row per shape and phase, and the ratio.
`--cpu-bf16` runs the training phases as a recipe's `bf16: true` runs them on
a CPU that computes in bf16 (torch's CPU autocast, as accelerate applies it)
against the CPU plan for it, which counts training in float32 (see
`memory.estimate`: counted in bf16 it fell short of these peaks).

`--saved` checks the plan for a GPU without one. Under bf16 mixed precision
on a GPU the resident-memory fit above does not carry over: activations are
bf16 and float32 by turns, PyTorch's fused attention keeps no probabilities,
dropout keeps a one-byte mask, and autocast keeps a bf16 copy of every frozen
matmul weight for the backward pass. So each training phase runs here under
torch's CPU autocast in bf16, with dropout taking the path CUDA takes
(`torch.native_dropout`, which keeps a boolean mask), attention dropout off
(the GPU's fused kernels keep only their random state, and with it off the
CPU takes its fused kernel too), and every tensor autograd saves for the
backward pass is counted once per storage (`torch.autograd.graph.
saved_tensors_hooks`), parameters left out. Counted per token: what the plan
calls activations; counted once: autocast's weight copies (`weight_casts`).
Against them stands `estimate` on a GPU in bf16. What this leaves out is
what a GPU allocates beside the saved tensors (the backward pass's
transient buffers, the allocator's rounding), which `gpu_check.py` measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
# name: (config source, micro-batch, sequence length, GRPO generation batch, prompt tokens, completion tokens)
SHAPES: dict[str, tuple[str, int, int, int, int, int]] = {
    "tiny": ("builtin:tiny-gpt2", 8, 256, 16, 96, 64),
    "demo": ("builtin:demo-gpt2", 8, 256, 16, 96, 64),
    "smollm2": ("builtin:smollm2-135m", 2, 256, 4, 128, 64),
    "gpt2-medium": ("gpt2-medium", 2, 256, 4, 128, 64),
    **{name: (name, 2, 256, 4, 128, 64) for name in ("qwen2.5-0.5b", "pythia-410m", "opt-350m", "gpt-neo-125m",
                                                       "phi3-like", "gemma-like")},
}
# Other layouts, random weights: (model type, config). Real models' shapes where they are small; Phi-3's and Gemma's
# layouts at 12 layers of 1024.
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2.5-0.5b": ("qwen2", {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                               "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                               "max_position_embeddings": 32768, "tie_word_embeddings": True}),
    "pythia-410m": ("gpt_neox", {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                 "num_attention_heads": 16, "vocab_size": 50304, "max_position_embeddings": 2048,
                                 "rotary_pct": 0.25}),
    "opt-350m": ("opt", {"hidden_size": 1024, "ffn_dim": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                         "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 512,
                         "do_layer_norm_before": False}),
    "gpt-neo-125m": ("gpt_neo", {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "window_size": 256,
                                 "attention_types": [[["global", "local"], 6]], "vocab_size": 50257,
                                 "max_position_embeddings": 2048}),
    "phi3-like": ("phi3", {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 12,
                           "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32064,
                           "max_position_embeddings": 2048, "pad_token_id": 0}),
    "gemma-like": ("gemma", {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 12,
                             "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 128, "vocab_size": 32000,
                             "max_position_embeddings": 2048}),
}
MIB = 2**20
SFT_HEAD_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL 1.16's SFTTrainer asks its fused LM head for


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _config(source: str) -> Any:
    from transformers import GPT2Config

    if source == "gpt2-medium":  # the real model's shape: 24 layers of 1024, GPT-2's vocabulary and context
        return GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257)
    if source in LAYOUTS:
        from transformers import AutoConfig

        model_type, values = LAYOUTS[source]
        return AutoConfig.for_model(model_type, **values)
    from gsm8k_tr import builtin

    return builtin.model_config(source)  # random weights are built from it: the trained ones are not needed


def _plan(shape: Any, phase: str, batch: int, length: int, lora_rank: int, lora_dropout: float, on_gpu: bool,
          generations: int = 0, targets: list[str] | None = None, mixed: bool | None = None) -> Any:
    """`memory.estimate` for one measured phase: `batch` rows of `length` tokens, float32 on a CPU or bf16 on a
    GPU (`mixed`: bf16 on a CPU too), the model's dropout on in SFT only, eager decoding, no held-out check and no
    vLLM."""
    from gsm8k_tr.train import memory

    mixed = on_gpu if mixed is None else mixed
    settings = {"micro_batch": batch, "gradient_accumulation_steps": 1, "length": length, "mixed_precision": mixed,
                "checkpointing": False, "dropout": phase == "sft", "lora_rank": lora_rank, "lora_targets": targets,
                "lora_dropout": lora_dropout > 0, "decoding": "eager", "generation_batch": generations,
                "eval_batch": 0, "eval_length": 0, "vllm": False, "vllm_share": 0.0}
    return memory.estimate(shape, "sft" if phase == "sft" else "grpo", settings, on_gpu=on_gpu)


def measure(shape: str, phase: str, lora_dropout: float, targets: list[str] | None = None,
            bf16: bool = False) -> dict[str, Any]:
    """Run one phase in this process; return its peak memory rise (MiB) and the estimate's parts. `bf16`: a
    training phase under the CPU's bf16 autocast."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from gsm8k_tr.config import LoraConfig
    from gsm8k_tr.train import memory
    from gsm8k_tr.train.lora import lora_config

    source, batch, length, generations, prompt, completion = SHAPES[shape]
    config = _config(source)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    baseline = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak counts from here
    if phase != "sft":  # GRPO turns dropout off
        for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "dropout", "hidden_dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if phase != "grpo_generation":  # both trainers score through TRL's fused LM head, SFT with its metrics' outputs
        add_fused_lm_head(model, outputs=SFT_HEAD_OUTPUTS if phase == "sft" else ("log_probs",))
    lora = LoraConfig(r=16, alpha=32, dropout=lora_dropout, target_modules=targets)
    model = get_peft_model(model, lora_config(lora, model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = config.vocab_size
    if phase == "grpo_generation":
        model.eval()
        ids = torch.randint(5, vocab, (generations, prompt))
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=completion,
                           min_new_tokens=completion, do_sample=True, pad_token_id=0, use_cache=True)
    else:
        model.train()
        ids = torch.randint(5, vocab, (batch, length))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, fused_lm_head=True).loss
        loss.backward()
        optimizer.step()
    peak = (_rss_kib("VmHWM") - baseline) / 1024
    shape_info = memory.Shape.from_config(config)
    generating = phase == "grpo_generation"
    plan = _plan(shape_info, phase, batch, prompt + completion if generating else length, lora.r, lora_dropout,
                 on_gpu=False, generations=generations if generating else 0, targets=targets, mixed=bf16)
    parts = {k: v * 1024 for k, v in plan.parts.items()}  # MiB
    fixed = parts["weights"] + parts["lora"] + parts["runtime"]
    if phase == "grpo_generation":
        estimated = fixed + parts["kv_cache"] + generations * vocab * 4 / MIB
    else:
        estimated = fixed + parts["activations"] + parts["weight_casts"] + parts["logits"]
    return {"shape": shape, "phase": phase, "measured_mib": round(peak, 1), "estimated_mib": round(estimated, 1),
            "parts_mib": {k: round(v, 1) for k, v in parts.items()}, "parameters": shape_info.parameters}


def count_saved(shape: str, phase: str, lora_dropout: float, batch: int = 3, length: int = 200,
                targets: list[str] | None = None) -> dict[str, Any]:
    """What autograd keeps for the backward pass of one `phase` micro-batch, counted as a GPU in bf16 would keep it
    (see the module's docstring), beside the plan's activations and weight casts for a GPU; bytes per token and
    layer, and MiB."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from gsm8k_tr.config import LoraConfig
    from gsm8k_tr.train import memory
    from gsm8k_tr.train.lora import lora_config

    config = _config(SHAPES[shape][0])
    for key in ("attn_pdrop", "attention_dropout"):  # a GPU's fused attention keeps no dropout mask
        if hasattr(config, key):
            setattr(config, key, 0.0)
    if phase != "sft":  # GRPO turns the model's dropout off
        for key in ("resid_pdrop", "embd_pdrop", "dropout", "hidden_dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
    torch.manual_seed(0)
    # The attention transformers picks, as the stages load the model: SDPA where the model has it (GPT-Neo has not)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    add_fused_lm_head(model, outputs=SFT_HEAD_OUTPUTS if phase == "sft" else ("log_probs",))
    lora = LoraConfig(r=16, alpha=32, dropout=lora_dropout, target_modules=targets)
    model = get_peft_model(model, lora_config(lora, model))
    model.train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    token_dims = {batch, batch * length, batch * (length - 1)}  # rows, tokens, scored tokens
    collision = token_dims & {d for s in weight_shapes for d in s}
    assert not collision, f"pick another batch or length: {collision} is also a weight's size"
    counted: dict[int, tuple[str, int]] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in parameters or key in counted or storage.nbytes() == 0:
            return tensor
        kind = ("per_token" if tensor.dim() and tensor.shape[0] in token_dims
                else "weight_casts" if tuple(tensor.shape) in weight_shapes else "other")
        counted[key] = (kind, storage.nbytes())
        return tensor

    def gpu_dropout(x: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        return torch.native_dropout(x, p, True)[0] if training and p > 0 else x  # CUDA's path: a boolean mask

    ids = torch.randint(5, config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, : length // 4] = 0  # a left-padded row, as the trainers' batches have
    with patch("torch.nn.functional.dropout", gpu_dropout), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, attention_mask=mask, labels=ids, fused_lm_head=True)
    totals = {kind: sum(n for k, n in counted.values() if k == kind) for kind in ("per_token", "weight_casts", "other")}
    shape_info = memory.Shape.from_config(config)
    plan = _plan(shape_info, phase, batch, length, lora.r, lora_dropout, on_gpu=True, targets=targets)
    per_token_layer = batch * length * shape_info.layers
    return {"shape": shape, "phase": phase, "lora_dropout": lora_dropout,
            "counted_bytes_per_token_layer": round(totals["per_token"] / per_token_layer, 1),
            "planned_bytes_per_token_layer": round(plan.parts["activations"] * 2**30 / per_token_layer, 1),
            "counted_weight_casts_mib": round(totals["weight_casts"] / MIB, 2),
            "planned_weight_casts_mib": round(plan.parts["weight_casts"] * 1024, 2),
            "other_mib": round(totals["other"] / MIB, 2)}


def main_saved(shapes: list[str], lora_dropouts: list[float], targets: list[str] | None = None) -> None:
    """`--saved`: one row per shape, phase and LoRA dropout; the ratio of plan to count."""
    import torch

    torch.set_num_threads(2)
    print(f"{'shape':<12} {'phase':<14} {'LoRA dropout':>12} {'B/token/layer counted':>22} {'planned':>8} {'ratio':>6} "
          f"{'weight casts MiB counted':>25} {'planned':>8}")
    rows = []
    for shape in shapes:
        for phase in ("sft", "grpo_training"):
            for dropout in lora_dropouts:
                row = count_saved(shape, phase, dropout, targets=targets)
                rows.append(row)
                ratio = row["planned_bytes_per_token_layer"] / row["counted_bytes_per_token_layer"]
                print(f"{shape:<12} {phase:<14} {dropout:>12} {row['counted_bytes_per_token_layer']:>22.1f} "
                      f"{row['planned_bytes_per_token_layer']:>8.1f} {ratio:>6.2f} "
                      f"{row['counted_weight_casts_mib']:>25.1f} {row['planned_weight_casts_mib']:>8.1f}")
    worst = max(abs(r["planned_bytes_per_token_layer"] / r["counted_bytes_per_token_layer"] - 1) for r in rows)
    print(f"largest relative error of the activations: {worst:.0%}")
    Path(ROOT / "runs").mkdir(exist_ok=True)
    (ROOT / "runs" / "memory_plan_saved.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--phases", nargs="+", default=["sft", "grpo_generation", "grpo_training"],
                        choices=["sft", "grpo_generation", "grpo_training"])
    parser.add_argument("--saved", action="store_true",
                        help="count what a GPU in bf16 keeps for backward (see the docstring) instead of measuring RSS")
    parser.add_argument("--lora-dropout", nargs="+", type=float, default=[0.05],
                        help="LoRA dropout of the adapters (default: 0.05, the recipes'); --saved takes several")
    parser.add_argument("--targets", nargs="+", metavar="NAME",
                        help="LoRA on these layers only (lora.target_modules; default: every linear layer)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="the training phases under the CPU's bf16 autocast, against the CPU plan for them")
    parser.add_argument("--only", nargs=3, metavar=("SHAPE", "PHASE", "LORA_DROPOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_bf16 and not args.only and "grpo_generation" in args.phases:
        parser.error("--cpu-bf16 measures the training phases: give --phases sft grpo_training")
    if args.saved:
        main_saved(args.shapes, args.lora_dropout, args.targets)
        return
    if args.only:
        print("RESULT " + json.dumps(measure(args.only[0], args.only[1], float(args.only[2]), args.targets,
                                             args.cpu_bf16)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "TRANSFORMERS_VERBOSITY": "error",
           "GSM8K_TR_CACHE": os.environ.get("GSM8K_TR_CACHE", str(ROOT / ".cache" / "models"))}
    print(f"{'shape':<12} {'phase':<16} {'estimated MiB':>14} {'measured MiB':>13} {'ratio':>6}")
    rows = []
    for shape in args.shapes:
        for phase in args.phases:
            done = subprocess.run([sys.executable, __file__, "--only", shape, phase, str(args.lora_dropout[0]),
                                   *(["--targets", *args.targets] if args.targets else []),
                                   *(["--cpu-bf16"] if args.cpu_bf16 else [])],
                                  capture_output=True, text=True, env=env)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{shape:<12} {phase:<16} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(line[7:])
            rows.append(row)
            ratio = row["estimated_mib"] / row["measured_mib"]
            print(f"{shape:<12} {phase:<16} {row['estimated_mib']:>14.1f} {row['measured_mib']:>13.1f} {ratio:>6.2f}")
    worst = max((abs(r["estimated_mib"] / r["measured_mib"] - 1) for r in rows), default=0.0)
    print(f"largest relative error: {worst:.0%}")
    Path(ROOT / "runs").mkdir(exist_ok=True)
    name = "memory_plan_cpu_bf16.json" if args.cpu_bf16 else "memory_plan.json"
    (ROOT / "runs" / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
