"""`gsm8k-tr sft`: LoRA supervised fine-tuning that teaches the `<sebep>`/`<cevap>` format.

Linear: stage folder → prepared data → model and tokenizer (stop and pad
tokens) → prompt/completion pairs that fit the context → TRL SFTTrainer with
LoRA on every linear layer → save adapter, merged model and run records.
Loss is on the completion only, and every target ends with the stop token, so
the model learns to stop.

With the `sft` section's `eval_strategy` on, each evaluation grades greedy
answers to the held-out questions (`eval_accuracy`, beside the validation
loss), so transformers' own `load_best_model_at_end` and
`metric_for_best_model` (accuracy by default) keep the best checkpoint, and
`eval.sft_patience` adds its `EarlyStoppingCallback`: SFT trains until
validation stops improving.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trl
from datasets import Dataset
from transformers import EarlyStoppingCallback

from gsm8k_tr import modeling, placement
from gsm8k_tr.config import Recipe
from gsm8k_tr.data import examples, splits
from gsm8k_tr.errors import UserError
from gsm8k_tr.run_folder import held_by_one_run, prepared_data, read_manifest
from gsm8k_tr.train import fitting, memory, recipe_check, stage
from gsm8k_tr.train.batch_order import SeededRebalance
from gsm8k_tr.train.checkpoints import AtomicCheckpoints
from gsm8k_tr.train.disk import check_disk_space
from gsm8k_tr.train.flops import CountedFlops
from gsm8k_tr.train.guard import GuardNonFinite
from gsm8k_tr.train.held_out import HeldOutCheck
from gsm8k_tr.train.lora import lora_config
from gsm8k_tr.train.progress import TimedSteps, use_compact_progress
from gsm8k_tr.train.scoring import CompactScoring
from gsm8k_tr.train.trl_configs import sft_args

log = logging.getLogger(__name__)

STAGE = "sft"


class SFTTrainer(SeededRebalance, TimedSteps, CountedFlops, CompactScoring, AtomicCheckpoints, GuardNonFinite,
                 trl.SFTTrainer):
    """TRL's SFTTrainer with the LM head over the scored tokens only, atomic checkpoints, a non-finite guard,
    held-out accuracy in its evaluations, each step's time in its logs, micro-batches of like length within a
    step (`train/batch_order.py`) and its FLOP count without a walk over the model at each micro-batch."""

    held_out: HeldOutCheck | None = None

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        output = super().evaluation_loop(*args, **kwargs)
        if self.held_out is not None:  # before on_evaluate, so early stopping and best-model tracking see it
            prefix = kwargs.get("metric_key_prefix", "eval")
            output.metrics.update({f"{prefix}_{key}": value for key, value in self.held_out.measure().items()})
        return output


@held_by_one_run
def main(recipe: Recipe, resume: bool = False, overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    """Run the SFT stage; returns its manifest. `check=False`: the caller checked the whole recipe already."""
    if check:
        recipe_check.check(recipe)
    folder, checkpoint, done = stage.begin(recipe, STAGE, resume, overwrite)
    if done:
        log.info("%s already finished; nothing to resume", folder)
        return read_manifest(folder)
    data_dir = prepared_data(recipe)
    rows = splits.load_split(data_dir, "train")

    tokenizer, model = stage.load_base(recipe, checkpoint=checkpoint)
    stop = modeling.configure_tokens(tokenizer, model, recipe.model.stop_token)
    context = modeling.context_length(model)
    config = sft_args(recipe, stop, context)
    max_length = recipe.sft.get("max_length") or context  # null: no truncation, so the whole context

    count = modeling.token_counter(tokenizer)
    pairs, counts = examples.sft_examples(rows, recipe, stop, count, max_length)
    examples.require_rows(pairs, counts, STAGE)
    log.info("sft data: %s", counts)
    shape, longest = memory.Shape.from_config(model.config), max(count(p["prompt"] + p["completion"]) for p in pairs)
    batch = None
    if fitting.wants_auto(recipe.sft):  # the largest micro-batch the plan fits at these lengths, same effective batch
        batch = fitting.fit_micro_batch(shape, recipe, STAGE, config, longest)
        recipe = fitting.with_micro_batch(recipe, STAGE, batch)
        config = sft_args(recipe, stop, context)
        log.info("sft micro-batch (auto): %s", batch)
    plan = fitting.check_fits(shape, recipe, STAGE, config, longest=longest)  # on a GPU: stop if it cannot fit
    per_batch = config.per_device_train_batch_size * config.world_size
    if config.dataloader_drop_last and len(pairs) < per_batch:  # no batch at all: "0 steps", or a ValueError by epochs
        raise UserError(f"sft: {len(pairs)} training rows, and sft.dataloader_drop_last drops a micro-batch of fewer "
                        f"than {per_batch}, so SFT would train 0 steps; set it false or lower "
                        "sft.per_device_train_batch_size")

    evaluating = config.eval_strategy != "no"
    if evaluating:  # the validation loss beside held-out accuracy
        held_out_rows = splits.load_split(data_dir, recipe.eval.held_out_split)[: recipe.eval.held_out_size]
        validation, _ = examples.sft_examples(held_out_rows, recipe, stop, count, max_length)
        if not validation:
            raise UserError(f"sft.eval_strategy evaluates on the {recipe.eval.held_out_split} split, but none of its "
                            f"{len(held_out_rows)} rows has a usable solution for the validation loss; raise "
                            "eval.held_out_size or data.solution_fraction, or set sft.eval_strategy=no")

    stage.log_to(folder)
    lora = lora_config(recipe.lora, model, revision=modeling.hub_commit(recipe.model))
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                         eval_dataset=Dataset.from_list(validation) if evaluating else None,
                         processing_class=tokenizer, peft_config=lora)
    trainer.on_non_finite = recipe.on_non_finite
    if evaluating:
        trainer.held_out = HeldOutCheck(trainer, held_out_rows, recipe, merge=placement.weights_whole())
    if recipe.eval.sft_patience:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=recipe.eval.sft_patience))
    use_compact_progress(trainer)
    check_disk_space(folder, trainer.model, config.save_total_limit)
    started = time.perf_counter()
    final = stage.train(trainer, checkpoint, STAGE)
    info = stage.stage_info(recipe, stop, data_dir, counts, started, checkpoint, config,
                            held_out=trainer.held_out.where if evaluating else None, micro_batch=batch,
                            memory_plan=plan.as_dict() if plan else None,
                            **stage.best_model(trainer))
    return stage.finish(trainer, folder, recipe, STAGE, info, final_checkpoint=final)
