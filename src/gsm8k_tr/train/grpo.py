"""`gsm8k-tr grpo`: LoRA GRPO from the SFT output with the rule-based rewards.

Linear: stage folder → the SFT output (merged model and tokenizer) → prompts
with verified gold answers that leave room for a full completion → (optional)
the prompts the start model sometimes gets right → rewards and weights from the
recipe → TRL GRPOTrainer with LoRA, the position-ids fix and dropout off →
save adapter (with `eval.grpo_keep_best`, its best held-out check's:
held_out.py), merged model and run records.

The trainer subclass adds only what TRL leaves out: correct position ids for
left-padded scoring (positions.py), fast rollouts (rollouts.py), the LM head
over the completion tokens only on every device (scoring.py), atomic
checkpoints, and three metrics: task accuracy, the share of prompt groups whose
answers are all right or all wrong (no advantage, nothing learned), and
generation time, so the console shows where a step's time goes.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import trl
from datasets import Dataset

from gsm8k_tr import modeling, placement
from gsm8k_tr.config import Recipe, recipe_dict
from gsm8k_tr.data import examples, splits
from gsm8k_tr.errors import UserError
from gsm8k_tr.grading.answers import is_correct
from gsm8k_tr.grading.rewards import build_rewards, completion_text
from gsm8k_tr.infer.generation import stop_ids
from gsm8k_tr.run_folder import held_by_one_run, is_finished, prepared_data, read_manifest, stage_dir
from gsm8k_tr.train import fitting, memory, prompt_filter, recipe_check, stage
from gsm8k_tr.train.batch_order import ReplayedEpochs
from gsm8k_tr.train.checkpoints import CHECKPOINTS, AtomicCheckpoints
from gsm8k_tr.train.disk import check_disk_space
from gsm8k_tr.train.guard import GuardNonFinite
from gsm8k_tr.train.held_out import BEST, HeldOutAccuracy
from gsm8k_tr.train.lora import lora_config
from gsm8k_tr.train.positions import add_position_ids
from gsm8k_tr.train.progress import use_compact_progress
from gsm8k_tr.train.rollouts import FastRollouts
from gsm8k_tr.train.scoring import CompactScoring
from gsm8k_tr.train.trl_configs import grpo_args

log = logging.getLogger(__name__)

STAGE = "grpo"


class GRPOTrainer(ReplayedEpochs, FastRollouts, CompactScoring, AtomicCheckpoints, GuardNonFinite, trl.GRPOTrainer):
    """TRL's GRPOTrainer with position ids for left-padded scoring, fast rollouts (adapter merged, KV cache written
    in place), the LM head over the completion tokens only, atomic checkpoints, accuracy and timing."""

    def __init__(self, *args: Any, answer_tag: str = "cevap", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer_tag = answer_tag
        add_position_ids(self.model)
        if self.ref_model is not None:
            add_position_ids(self.ref_model)

    def _generate(self, prompts: list) -> Any:
        started = time.perf_counter()
        result = super()._generate(prompts)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["time/generation_s"].append(time.perf_counter() - started)
        return result

    def _calculate_rewards(self, inputs: list[dict], prompts: list, completions: list, completion_ids_list: list) -> Any:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Task accuracy with the evaluation grader, whatever the reward weights are.
        correct = [is_correct(completion_text(c), x.get("answer"), self.answer_tag) for c, x in zip(completions, inputs)]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["accuracy"].append(sum(correct) / max(len(correct), 1))
        for key, value in zero_variance_groups(self._gather(correct), self.num_generations).items():
            self._metrics[mode][key].append(value)
        return rewards

    def _gather(self, values: list[bool]) -> list[bool]:
        """Every process's values, in the global order (a group can straddle two processes)."""
        import torch

        if self.accelerator.num_processes == 1:
            return values
        local = torch.tensor(values, dtype=torch.float32, device=self.accelerator.device)
        return [bool(v) for v in self.accelerator.gather(local).tolist()]


def zero_variance_groups(correct: list[bool], group: int) -> dict[str, float]:
    """The share of prompt groups whose completions are all right or all wrong: by correctness, no advantage.

    TRL logs `frac_reward_zero_std` by the total reward, which the format
    rewards keep apart even when every answer is wrong; this is the share that
    teaches no arithmetic.

    >>> zero_variance_groups([True, True, False, True, False, False, True, True], 2)
    {'frac_correctness_zero_std': 0.75, 'correctness/all_right': 0.5, 'correctness/all_wrong': 0.25}
    """
    groups = [correct[i:i + group] for i in range(0, len(correct) - group + 1, group)]
    if not groups:
        return {}
    right = sum(all(g) for g in groups) / len(groups)
    wrong = sum(not any(g) for g in groups) / len(groups)
    return {"frac_correctness_zero_std": right + wrong, "correctness/all_right": right, "correctness/all_wrong": wrong}


def sampling(config: Any) -> dict[str, Any]:
    """The rollouts' effective sampling settings: the recipe's, through TRL's config (nothing from the model)."""
    keys = ("max_completion_length", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
            "generation_kwargs", "use_vllm")
    return {key: getattr(config, key, None) for key in keys}


def fill_a_call(prompts: list[Any], config: Any, which: str, more: str) -> None:
    """Enough prompts for one generation call: TRL's sampler yields only whole calls of `generation_batch_size //
    num_generations` prompts, so with fewer GRPO trained 0 steps and saved its start model as its output, without a
    word."""
    per_call = config.generation_batch_size // config.num_generations
    if len(prompts) < per_call:
        raise UserError(f"grpo: {len(prompts)} training prompts{which}, but each generation call takes {per_call} "
                        f"({config.generation_batch_size} completions, {config.num_generations} a prompt) and TRL "
                        "skips a call it cannot fill, so GRPO would train 0 steps; lower "
                        "grpo.per_device_train_batch_size or grpo.gradient_accumulation_steps "
                        f"(grpo.steps_per_generation where set), or {more}")


def start_model(recipe: Recipe) -> tuple[str | None, dict[str, Any]]:
    """The SFT output GRPO starts from (None: the base model) and its manifest; checked for compatibility."""
    named = recipe.model.sft_output
    if named is not None and named.lower() == "none":
        return None, {}
    folder = Path(named) if named else stage_dir(recipe, "sft")
    if not is_finished(folder):
        raise UserError(f"GRPO starts from the SFT output {str(folder)!r}, which is missing or unfinished; run "
                        "`gsm8k-tr sft` with this recipe first, set model.sft_output, or model.sft_output=none")
    manifest = read_manifest(folder)
    if manifest.get("base_model") != recipe.model.name_or_path:
        raise UserError(f"the SFT output {str(folder)!r} was trained from {manifest.get('base_model')!r}, but this "
                        f"recipe's model.name_or_path is {recipe.model.name_or_path!r}; use the same model")
    if manifest.get("prompt") != recipe_dict(recipe)["prompt"]:
        raise UserError(f"the SFT output {str(folder)!r} was trained with another 'prompt' section (template or "
                        "tags) than this recipe's, so its answers would not match the rewards; use the same one")
    return str(folder / "merged"), manifest


def warn_inside_a_rollout_call(checkpoint: str, config: Any) -> None:
    """Say so when a run resumes between the optimizer steps of one rollout call (`grpo.steps_per_generation` over
    several steps). TRL keeps that call's completions in memory only, so the resumed run samples the next step's
    again from the model as it is, and calls at other steps from then on: a sound GRPO run, a little apart from the
    one it resumes (the tiny recipe's adapter 7e-5 away at 2 steps a call, against 1e-8 resumed at a call's start)."""
    every = config.steps_per_generation * getattr(config, "num_iterations", 1)  # micro-batches a call serves
    step = int(Path(checkpoint).name.rpartition("-")[2])
    if step * config.gradient_accumulation_steps % every:
        per_call = every // config.gradient_accumulation_steps
        log.warning("grpo: --resume from step %d, inside a rollout call of %d steps (grpo.steps_per_generation): TRL "
                    "kept its completions in memory only, so step %d samples its own; the run goes on a little apart "
                    "from the one it resumes (save_steps a multiple of %d saves at calls' starts)", step, per_call,
                    step + 1, per_call)


@held_by_one_run
def main(recipe: Recipe, resume: bool = False, overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    """Run the GRPO stage; returns its manifest. `check=False`: the caller checked the whole recipe already."""
    if check:
        recipe_check.check(recipe)
    start, sft_manifest = start_model(recipe)
    # the SFT output GRPO starts from, as it finished (not where: a run folder may move): a --resume after SFT was
    # trained again is refused
    began = {"finished_at": sft_manifest.get("finished_at"), "train_seconds": sft_manifest.get("train_seconds")} \
        if start else None
    folder, checkpoint, done = stage.begin(recipe, STAGE, resume, overwrite, began)
    if done:
        log.info("%s already finished; nothing to resume", folder)
        return read_manifest(folder)
    data_dir = prepared_data(recipe)
    rows = splits.load_split(data_dir, "train")

    tokenizer, model = stage.load_base(recipe, start, checkpoint)
    stop = modeling.configure_tokens(tokenizer, model, sft_manifest.get("stop_token") or recipe.model.stop_token)
    context = modeling.context_length(model)
    funcs, _ = build_rewards(recipe.rewards, recipe.prompt.reasoning_tag, recipe.prompt.answer_tag)
    config = grpo_args(recipe, stop_ids(model), context)
    completion = config.max_completion_length

    count = modeling.token_counter(tokenizer)
    prompts, counts = examples.grpo_examples(rows, recipe, count, completion, context)
    examples.require_rows(prompts, counts, STAGE)
    log.info("grpo data: %s", counts)
    shape, longest = memory.Shape.from_config(model.config), max(count(p["prompt"]) for p in prompts)
    batch = None
    if fitting.wants_auto(recipe.grpo):  # the largest micro-batch the plan fits at these lengths, same generation batch
        batch = fitting.fit_micro_batch(shape, recipe, STAGE, config, longest)
        recipe = fitting.with_micro_batch(recipe, STAGE, batch)
        config = grpo_args(recipe, stop_ids(model), context)
        log.info("grpo micro-batch (auto): %s", batch)
    plan = fitting.check_fits(shape, recipe, STAGE, config, config.num_generations, longest)  # on a GPU
    if checkpoint is not None:
        warn_inside_a_rollout_call(checkpoint, config)
    fill_a_call(prompts, config, "", "give it more prompts")
    filtered = None
    if recipe.prompt_filter.samples:  # keep the prompts the start model sometimes gets right
        prompts, filtered = prompt_filter.apply(model, tokenizer, prompts, recipe, config, folder,
                                                start or recipe.model.name_or_path, recipe.prompt.answer_tag)
        fill_a_call(prompts, config, " that the prompt filter kept", "widen prompt_filter.keep_above/keep_below")

    stage.log_to(folder)
    lora = lora_config(recipe.lora, model, dropout=0.0 if config.disable_dropout else None,
                                revision=None if start else modeling.hub_commit(recipe.model))
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=Dataset.from_list(prompts),
                          processing_class=tokenizer, peft_config=lora, answer_tag=recipe.prompt.answer_tag)
    trainer.on_non_finite = recipe.on_non_finite
    trainer.decoding_request = recipe.decoding
    trainer.plan_rollouts = partial(placement.rollouts, config.use_vllm, config.cache_implementation,
                                    trainer.args.device, recipe.decoding, str(trainer.accelerator.mixed_precision),
                                    modeling.runs_on_static_cache(model),
                                    continuous_batching=config.use_transformers_continuous_batching)
    trainer.rollouts = trainer.plan_rollouts()
    use_compact_progress(trainer)
    check_disk_space(folder, trainer.model, config.save_total_limit)
    held_out = None
    if recipe.eval.every_steps:
        held_out_rows = splits.load_split(data_dir, recipe.eval.held_out_split)[: recipe.eval.held_out_size]
        keep = folder / CHECKPOINTS / BEST if recipe.eval.grpo_keep_best else None
        held_out = HeldOutAccuracy(trainer, held_out_rows, recipe, merge=trainer.rollouts["merge_lora"],
                                   keep_best=keep)
        trainer.add_callback(held_out)
    started = time.perf_counter()
    final = stage.train(trainer, checkpoint, STAGE)
    kept, best = held_out.kept() if held_out else (None, None)
    if best is not None:
        final = best  # the best check's adapter is saved, not the model's (the last step's)
    info = stage.stage_info(recipe, stop, data_dir, counts, started, checkpoint, config,
                            start_model=start or recipe.model.name_or_path, rewards=dict(recipe.rewards),
                            sampling=sampling(config), held_out=held_out.where if held_out else None,
                            rollouts=trainer.rollouts, micro_batch=batch, memory_plan=plan.as_dict() if plan else None,
                            prompt_filter=filtered, held_out_kept=kept,
                            base_model_revision=sft_manifest.get("base_model_revision")
                            if start else modeling.hub_commit(recipe.model))
    return stage.finish(trainer, folder, recipe, STAGE, info, base=start, final_checkpoint=final)
