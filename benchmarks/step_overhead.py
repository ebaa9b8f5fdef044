"""The host's bookkeeping in an SFT step: the project's trainer against the same trainer counting as before.

    python benchmarks/step_overhead.py                     # 2 CPU cores: about a minute
    python benchmarks/step_overhead.py --accumulation 8    # micro-batches of one row, 8 to an optimizer step

A GPU waits for the host's Python between the kernels it is given, and TRL
reads each micro-batch's metrics back, so the host cannot run ahead: the
host's work a step is time the card spends idle. This measures that work on
the CPU with a model of GPT-2 Medium's layout (24 layers, LoRA on every
linear layer, about 1,300 modules) and of negligible width (16 values a
token), one real GSM8K-TR row a micro-batch, so that the arithmetic hardly
counts and what is left is what a GPU step also pays:

- as before: transformers' FLOP count walks the module tree at every
  micro-batch (`Trainer.floating_point_ops`), and the non-finite guard lists
  the parameters and takes each gradient's norm apart at every step;
- the project's: the parameter count read once (`train/flops.py`), the
  trained parameters listed once and their norm taken as
  `clip_grad_norm_` takes it (`train/guard.py`).

Each way runs `--rounds` times (an even number: each goes first in half of
them), over the same rows in the same order. The two calls are timed inside
the trainer, each way: the FLOP count's calls and the guard's check, in ms per
optimizer step, and their ratio. Printed beside them, the median whole step
of each way (the first steps left out), whose run-to-run spread on a CPU is
larger than the difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import RECIPE, data_overrides, sft_overrides  # noqa: E402

SKIPPED = 5  # the first steps: allocations, the first read of each row


def build_narrow_model(folder: Path) -> None:
    """GPT-2 Medium's layout (24 layers, its context) at a width of 16, with the tiny builtin model's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from gsm8k_tr import builtin

    tokenizer = AutoTokenizer.from_pretrained(builtin.resolve("builtin:tiny-gpt2"))
    config = GPT2Config(n_embd=16, n_layer=24, n_head=1, n_positions=1024, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


@contextmanager
def counting_as_before() -> Iterator[None]:
    """The FLOP count and the guard as they were: the module tree walked at every micro-batch and step, one norm
    per gradient."""
    import torch
    from transformers import Trainer

    from gsm8k_tr.train import guard, sft

    check = guard.GuardNonFinite.check_gradients

    def relisting(self: Any) -> None:
        self._trained = None
        check(self)

    def each_norm(grads: list[Any]) -> Any:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))

    with ExitStack() as stack:
        stack.enter_context(patch.object(sft.SFTTrainer, "floating_point_ops", Trainer.floating_point_ops))
        stack.enter_context(patch.object(guard.GuardNonFinite, "check_gradients", relisting))
        stack.enter_context(patch.object(guard, "gradient_norm", each_norm))
        yield


@contextmanager
def timed(owner: Any, name: str, spent: list[float]) -> Iterator[None]:
    """`owner.name` as it is now (the project's, or `counting_as_before`'s), each call's seconds added to `spent`."""
    inner = getattr(owner, name)

    def timing(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    with patch.object(owner, name, timing):
        yield


def run(model: Path, work: Path, steps: int, accumulation: int, before: bool) -> dict[str, Any]:
    """The seconds of each SFT step after the first `SKIPPED`, the seconds a step of the FLOP count and of the
    guard's check, and the run's FLOP count."""
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import guard, sft

    overrides = [*sft_overrides(work, str(model), data_overrides()[0], steps, True),
                 "sft.per_device_train_batch_size=1", f"sft.gradient_accumulation_steps={accumulation}"]
    recipe = load_recipe(str(RECIPE), overrides)
    flops: list[float] = []
    checks: list[float] = []
    with ExitStack() as stack:
        if before:
            stack.enter_context(counting_as_before())
        stack.enter_context(timed(sft.SFTTrainer, "floating_point_ops", flops))
        stack.enter_context(timed(guard.GuardNonFinite, "check_gradients", checks))
        sft.main(recipe, overwrite=True)
    history = json.loads((work / "sft" / "log_history.json").read_text())
    times = [h["step_time"] for h in history if "step_time" in h][SKIPPED:]
    return {"step_s": times, "flops_s": sum(flops[SKIPPED * accumulation:]) / (steps - SKIPPED),
            "check_s": sum(checks[SKIPPED:]) / (steps - SKIPPED), "total_flos": history[-1].get("total_flos")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches of one row per optimizer step")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.steps <= SKIPPED:
        parser.error(f"--steps must be more than {SKIPPED}")
    if args.rounds < 2 or args.rounds % 2:
        parser.error("--rounds must be even: each way goes first in half of the rounds")
    import torch

    torch.manual_seed(0)
    found: dict[str, list[list[float]]] = {"before": [], "now": []}
    spent: dict[str, dict[str, list[float]]] = {way: {"flops_s": [], "check_s": []} for way in found}
    flos: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "narrow-gpt2"
        build_narrow_model(model)
        for round_ in range(args.rounds):
            # ABBA: a run after another in the same process is a few ms a step slower (measured both ways round),
            # so each way goes first in every other round.
            for way in ("before", "now") if round_ % 2 == 0 else ("now", "before"):
                result = run(model, Path(tmp) / way, args.steps, args.accumulation, way == "before")
                found[way].append(result["step_s"])
                for key in spent[way]:
                    spent[way][key].append(result[key])
                flos[way] = result["total_flos"]
    ms = {way: {key: round(statistics.median(values) * 1000, 2) for key, values in spent[way].items()}
          for way in spent}
    bookkeeping = {way: ms[way]["flops_s"] + ms[way]["check_s"] for way in ms}
    steps = {way: round(statistics.median(s for times in found[way] for s in times) * 1000, 1) for way in found}
    print(json.dumps({"micro_batches_per_step": args.accumulation, "steps": args.steps, "rounds": args.rounds,
                      "flop_count_ms_per_step": {way: ms[way]["flops_s"] for way in ms},
                      "guard_check_ms_per_step": {way: ms[way]["check_s"] for way in ms},
                      "bookkeeping_ratio": round(bookkeeping["before"] / max(bookkeeping["now"], 1e-6), 1),
                      "host_ms_saved_per_step": round(bookkeeping["before"] - bookkeeping["now"], 2),
                      "step_ms_median": steps, "same_flop_count": flos["before"] == flos["now"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
