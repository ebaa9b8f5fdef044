"""Whether a left-padded batch's backward pass stays finite at each padded length, with torch's attention as it
chooses and with cuDNN's attention left out.

GRPO scores left-padded batches: a row's padding positions attend to nothing, the case pytorch#196678 reports for
cuDNN's sm90 backward (H100, H200; torch 2.11 and later with cuDNN before 9.26): NaN query gradients at key lengths
of 64 modulo 128, where the last 128-wide key tile is half past the end. This builds a GPT-2 Medium-shaped model
(random weights, `--layers` blocks), left-pads `--rows` rows of random lengths to each `--lengths` value, takes the
mean log-probability of the real tokens' next tokens (GRPO's loss reads those alone) and counts non-finite
gradients. Each length twice: torch's own kernel choice, and without cuDNN's (flash, memory-efficient, math).

    python benchmarks/attention_nan.py                       # on a CUDA GPU, bf16
    python benchmarks/attention_nan.py --cpu --lengths 64 128   # a smoke run: a CPU has no cuDNN attention
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any


def nonfinite_gradients(model: Any, length: int, rows: int, device: Any, cudnn: bool) -> dict[str, Any]:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    generator = torch.Generator().manual_seed(length)
    real = torch.randint(length // 4, length + 1, (rows,), generator=generator)
    real[0] = length  # one row fills the batch, as the longest does
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=generator)
    mask = (torch.arange(length)[None, :] >= (length - real)[:, None]).long()  # left padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # as the project's scoring hook passes them
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    model.zero_grad(set_to_none=True)
    kernels = (contextlib.nullcontext() if cudnn else
               sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]))
    with kernels:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        scored = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(scored * mask[:, 1:]).sum() / mask[:, 1:].sum()
        loss.backward()
    bad = sum(int((~torch.isfinite(p.grad)).sum()) for p in model.parameters() if p.grad is not None)
    return {"loss": round(float(loss.detach()), 4), "nonfinite_gradients": bad}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[320, 384, 448, 512])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="GPT-2 Medium's blocks built (it has 24)")
    parser.add_argument("--cpu", action="store_true", help="a smoke run on the CPU in float32")
    args = parser.parse_args()
    import torch
    import transformers

    if not args.cpu and not torch.cuda.is_available():
        print("attention_nan: this machine has no CUDA GPU; pass --cpu for a smoke run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if args.cpu else torch.bfloat16
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers, n_embd=1024, n_head=16, n_positions=1024,
                                     attn_implementation="sdpa", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).to(device=device, dtype=dtype)  # no dropout: both ways alike
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    cudnn_version = torch.backends.cudnn.version() if device.type == "cuda" else None
    print(f"{name}; torch {torch.__version__}; cuDNN {cudnn_version}; {args.layers} GPT-2 Medium blocks, "
          f"{args.rows} left-padded rows, {str(dtype).removeprefix('torch.')}")
    failing = []
    for length in args.lengths:
        for cudnn in (True, False):
            result = {"length": length, "length_mod_128": length % 128,
                      "attention": "torch's choice" if cudnn else "without cuDNN",
                      **nonfinite_gradients(model, length, args.rows, device, cudnn)}
            print(json.dumps(result), flush=True)
            if result["nonfinite_gradients"]:
                failing.append(f"{length} ({result['attention']})")
    print("non-finite gradients at: " + (", ".join(failing) if failing else "no length"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
