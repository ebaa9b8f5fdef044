"""The memory plan's estimate against measured peak memory, on CPU, for several model shapes.

    python benchmarks/memory_plan.py                 # tiny, demo, SmolLM2 and GPT-2 Medium shapes: a few minutes
    python benchmarks/memory_plan.py --shapes tiny demo

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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# name: (config source, micro-batch, sequence length, GRPO generation batch, prompt tokens, completion tokens)
SHAPES: dict[str, tuple[str, int, int, int, int, int]] = {
    "tiny": ("builtin:tiny-gpt2", 8, 256, 16, 96, 64),
    "demo": ("builtin:demo-gpt2", 8, 256, 16, 96, 64),
    "smollm2": ("builtin:smollm2-135m", 2, 256, 4, 128, 64),
    "gpt2-medium": ("gpt2-medium", 2, 256, 4, 128, 64),
}
MIB = 2**20
SFT_HEAD_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL 1.16's SFTTrainer asks its fused LM head for


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _config(source: str) -> Any:
    from transformers import AutoConfig, GPT2Config

    if source == "gpt2-medium":  # the real model's shape: 24 layers of 1024, GPT-2's vocabulary and context
        return GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257)
    from gsm8k_tr import builtin

    return AutoConfig.from_pretrained(builtin.resolve(source))


def measure(shape: str, phase: str) -> dict[str, Any]:
    """Run one phase in this process; return its peak memory rise (MiB) and the estimate's parts."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from gsm8k_tr import modeling
    from gsm8k_tr.config import LoraConfig
    from gsm8k_tr.train import memory

    source, batch, length, generations, prompt, completion = SHAPES[shape]
    config = _config(source)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    baseline = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak counts from here
    if phase != "sft":  # GRPO turns dropout off
        for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if phase != "grpo_generation":  # both trainers score through TRL's fused LM head, SFT with its metrics' outputs
        add_fused_lm_head(model, outputs=SFT_HEAD_OUTPUTS if phase == "sft" else ("log_probs",))
    lora = LoraConfig(r=16, alpha=32, dropout=0.0)
    model = get_peft_model(model, modeling.lora_config(lora, model))
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
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, fused_lm_head=True).loss
        loss.backward()
        optimizer.step()
    peak = (_rss_kib("VmHWM") - baseline) / 1024
    shape_info = memory.Shape.from_config(config)
    stage = "sft" if phase == "sft" else "grpo"
    settings = {"micro_batch": batch, "gradient_accumulation_steps": 1, "length": length if phase != "grpo_generation"
                else prompt + completion, "mixed_precision": False, "checkpointing": False, "dropout": phase == "sft",
                "lora_rank": lora.r, "generation_batch": generations if phase == "grpo_generation" else 0,
                "eval_batch": 0, "eval_length": 0, "vllm": False, "vllm_share": 0.0}
    plan = memory.estimate(shape_info, stage, settings, on_gpu=False)
    parts = {k: v * 1024 for k, v in plan.parts.items()}  # MiB
    fixed = parts["weights"] + parts["lora"] + parts["runtime"]
    if phase == "grpo_generation":
        estimated = fixed + parts["kv_cache"] + generations * vocab * 4 / MIB
    else:
        estimated = fixed + parts["activations"] + parts["logits"]
    return {"shape": shape, "phase": phase, "measured_mib": round(peak, 1), "estimated_mib": round(estimated, 1),
            "parts_mib": {k: round(v, 1) for k, v in parts.items()}, "parameters": shape_info.parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--phases", nargs="+", default=["sft", "grpo_generation", "grpo_training"],
                        choices=["sft", "grpo_generation", "grpo_training"])
    parser.add_argument("--only", nargs=2, metavar=("SHAPE", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(measure(*args.only)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "TRANSFORMERS_VERBOSITY": "error",
           "GSM8K_TR_CACHE": os.environ.get("GSM8K_TR_CACHE", str(ROOT / ".cache" / "models"))}
    print(f"{'shape':<12} {'phase':<16} {'estimated MiB':>14} {'measured MiB':>13} {'ratio':>6}")
    rows = []
    for shape in args.shapes:
        for phase in args.phases:
            done = subprocess.run([sys.executable, __file__, "--only", shape, phase], capture_output=True, text=True,
                                  env=env)
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
    (ROOT / "runs" / "memory_plan.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
