"""What fits in memory: the largest micro-batch (`per_device_train_batch_size: auto`), the recipe changes that would
fit, the check before a stage starts, and what to change when the GPU ran out all the same. Each asks the memory plan
(`train/memory.py`) or the trainer's own settings, and decides nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from gsm8k_tr import placement
from gsm8k_tr.config import Recipe
from gsm8k_tr.errors import UserError, one_line, out_of_memory
from gsm8k_tr.train.checkpoints import last_checkpoint
from gsm8k_tr.train.memory import FITS_SHARE, Shape, StagePlan, estimate, stage_settings

log = logging.getLogger(__name__)


def suggestions(shape: Shape, stage: str, settings: dict[str, Any], on_gpu: bool, memory_gib: float,
                num_generations: int = 1) -> list[tuple[dict[str, Any], float]]:
    """Recipe changes that would fit, each with its estimate, best first (at most two).

    First the largest smaller micro-batch that fits: halving it doubles
    gradient accumulation, so the optimizer sees the same effective batch
    and the run is barely slower. Under GRPO the generation batch stays as it
    is, a multiple of the group size; the micro-batches need not be (TRL
    shuffles the generation batch before it splits it into micro-batches, so
    they never held whole groups). Then activation checkpointing (a third
    more compute), alone or with a smaller micro-batch. Under GRPO, when the
    rollouts' KV cache is what does not fit, a smaller generation batch.
    """
    halvings = []
    micro, accumulate = settings["micro_batch"], settings["gradient_accumulation_steps"]
    while micro // 2 >= 1:
        accumulate *= 2
        micro //= 2
        halvings.append({"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulate})
    groups = [halvings]
    if not settings["checkpointing"]:
        groups.append([{"activation_checkpointing": True, **h} for h in [{}, *halvings]])
    if stage == "grpo":
        generation, smaller = settings["generation_batch"], []
        while generation // 2 >= max(settings["micro_batch"], num_generations):
            generation //= 2
            smaller.append({"generation_batch_size": generation})
        groups.append(smaller)
    names = {"per_device_train_batch_size": "micro_batch", "gradient_accumulation_steps": "gradient_accumulation_steps",
             "activation_checkpointing": "checkpointing", "generation_batch_size": "generation_batch"}
    found: list[tuple[dict[str, Any], float]] = []
    for group in groups:  # the first change of each kind that fits
        for change in group:
            plan = estimate(shape, stage, {**settings, **{names[k]: v for k, v in change.items()}}, on_gpu, memory_gib)
            if plan.fits:
                found.append((change, plan.peak_gib))
                break
    return found[:2]


AUTO = "auto"  # per_device_train_batch_size: auto
# The most rows an auto SFT micro-batch takes on a CPU. There the step is arithmetic, and a micro-batch pads its rows
# to its longest: the 32 examples of a step in one micro-batch computed 1.42 tokens per real one against 1.09 in 8 x 4
# grouped by length, and trained 0.53x as fast (the demo model; 0.61x at GPT-2 Medium's depth), 4 x 8 1.04-1.19x
# (2 cores, the shared GSM8K-TR rows, `benchmarks/gpu_shapes.py --parts sft-split`). On a GPU each micro-batch
# costs host time, so there it is the largest that fits (not yet measured against smaller ones on a GPU).
CPU_SFT_ROWS = 4


def wants_auto(section: dict[str, Any]) -> bool:
    """Whether a stage section asks for `per_device_train_batch_size: auto`."""
    return section.get("per_device_train_batch_size") == AUTO


def fit_micro_batch(shape: Shape, recipe: Recipe, stage: str, config: Any, longest: int | None,
                    memory: tuple[bool, float] | None = None) -> dict[str, Any]:
    """`per_device_train_batch_size: auto`: the largest micro-batch that fits at the data's real lengths.

    The effective batch is kept: the recipe's `gradient_accumulation_steps`
    times the default micro-batch (the config was built with it), split into
    the fewest micro-batches whose plan fits (under GRPO the generation batch
    stays a multiple of the group size; see `suggestions`), on a CPU SFT's of
    at most `CPU_SFT_ROWS` rows. On a GPU the plan is held to its free
    memory; on a CPU to half the memory the system has available (`memory`:
    (on a GPU, GiB) instead). Returns the two TRL keys and the plan's
    numbers, for the manifest (`most_rows`: the CPU's limit, where it applied).
    """
    effective = config.per_device_train_batch_size * config.gradient_accumulation_steps
    on_gpu, free = memory or placement.accelerator_memory()
    if not on_gpu or free is None:
        free = placement.available_host_memory() / 2
    most = None if on_gpu or stage != "sft" else CPU_SFT_ROWS
    candidates = [m for m in range(effective, 0, -1) if effective % m == 0 and (most is None or m <= most)]
    for micro in candidates:
        settings = {**stage_settings(recipe, stage, config, shape.context, longest), "micro_batch": micro}
        plan = estimate(shape, stage, settings, on_gpu, free)
        if plan.peak_gib <= FITS_SHARE * free or micro == candidates[-1]:
            return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": effective // micro,
                    "longest_tokens": longest, "planned_gib": round(plan.peak_gib, 2), "memory_gib": round(free, 1),
                    "on_gpu": on_gpu, "most_rows": most}
    raise AssertionError("unreachable: the last candidate is always returned")


def with_micro_batch(recipe: Recipe, stage: str, batch: dict[str, Any]) -> Recipe:
    """The recipe with `fit_micro_batch`'s split written into the stage's section."""
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps")
    return dataclasses.replace(recipe, **{stage: {**getattr(recipe, stage), **{k: batch[k] for k in keys}}})


def check_fits(shape: Shape, recipe: Recipe, stage: str, config: Any, num_generations: int = 1,
               longest: int | None = None) -> StagePlan | None:
    """Before a stage starts: on a GPU, stop with one line when the recipe clearly does not fit.

    "Clearly": the estimate is over the free memory by more than 10%, so a
    recipe at the edge still gets to try. On a CPU, once the data's longest
    example or prompt is known (`longest`), a warning when the plan is over the
    memory the system has available: the system would kill the run without a
    word, or swap, yet a machine with swap to spare may still finish, and the
    plan at the recipe's full length (what `check` knows) is far over real rows.
    """
    on_gpu, free = placement.accelerator_memory()
    if not on_gpu or free is None:
        if longest is not None:
            _warn_over_host_memory(shape, stage, stage_settings(recipe, stage, config, shape.context, longest),
                                   num_generations)
        return None
    settings = stage_settings(recipe, stage, config, shape.context, longest)
    plan = estimate(shape, stage, settings, on_gpu, free)
    if plan.peak_gib <= 1.1 * FITS_SHARE * free:
        return plan
    raise UserError(f"{stage}: this recipe needs about {plan.peak_gib:.1f} GiB of GPU memory (gsm8k-tr plan shows the "
                    f"parts) but the GPU has {free:.1f} GiB free; "
                    f"{hint(shape, stage, settings, on_gpu, free, num_generations)}")


def _warn_over_host_memory(shape: Shape, stage: str, settings: dict[str, Any], num_generations: int) -> None:
    available = placement.available_host_memory()
    plan = estimate(shape, stage, settings, False, available)
    if plan.peak_gib > available:
        log.warning("%s: this run needs about %.1f GiB of memory at its longest rows (gsm8k-tr plan shows the parts) "
                    "but this machine has %.1f GiB available; the system may stop it without a message; %s",
                    stage, plan.peak_gib, available, hint(shape, stage, settings, False, available, num_generations))


def hint(shape: Shape, stage: str, settings: dict[str, Any], on_gpu: bool, memory_gib: float,
         num_generations: int) -> str:
    """The recipe changes `suggestions` finds ("set sft.x=1 (about 9.0 GiB) or ..."), or what to lower when none
    fits."""
    options = suggestions(shape, stage, settings, on_gpu, memory_gib, num_generations)
    if options:
        return "set " + " or ".join(" ".join(f"{stage}.{k}={_yaml(v)}" for k, v in change.items())
                                    + f" (about {gib:.1f} GiB)" for change, gib in options)
    return (f"lower {stage}.max_length" if stage == "sft" else "lower grpo.max_completion_length") + \
        (" or use a GPU with more memory" if on_gpu else "")


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def ran_out(error: BaseException, trainer: Any, stage: str) -> UserError | None:
    """The one line for a GPU that ran out of memory during training, else None: where, what uses less, and that
    `--resume` goes on from the newest complete checkpoint.

    The plan is an estimate and the check before a stage lets a recipe at the
    edge try, so a batch longer than planned, or another process on the card,
    can still run out hours in; torch's own traceback said where, not what to
    change.
    """
    if not out_of_memory(error):
        return None
    args, changes = trainer.args, []
    micro, accumulate = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if micro > 1:  # the same effective batch in more, smaller micro-batches
        changes.append(f"{stage}.per_device_train_batch_size={micro // 2} "
                       f"{stage}.gradient_accumulation_steps={accumulate * 2}")
    if not getattr(args, "activation_checkpointing", getattr(args, "gradient_checkpointing", False)):
        changes.append(f"{stage}.activation_checkpointing=true")
    changes.append(f"lower {stage}.max_length" if stage == "sft" else "lower grpo.max_completion_length")
    newest = last_checkpoint(Path(args.output_dir))
    where = f"from {newest}" if newest else "from the start (no checkpoint yet)"
    return UserError(f"{stage}: the GPU ran out of memory in step {trainer.state.global_step + 1} "
                     f"({one_line(error)[:160]}); set {' or '.join(changes)}, then run the same command with --resume: "
                     f"it goes on {where}; gsm8k-tr plan shows where the memory goes")
