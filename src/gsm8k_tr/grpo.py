"""`gsm8k-tr grpo`: LoRA GRPO from the SFT output with the rule-based rewards.

Linear: stage folder → the SFT output (merged model and tokenizer) → prompts
with verified gold answers that leave room for a full completion → rewards and
weights from the recipe → TRL GRPOTrainer with LoRA, the position-ids fix and
dropout off → save adapter, merged model and run records.

The trainer subclass adds only what TRL leaves out: correct position ids for
left-padded scoring (positions.py), atomic checkpoints, and two metrics, task
accuracy and generation time, so the console shows where a step's time goes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trl
from datasets import Dataset
from transformers import TrainerCallback

from gsm8k_tr import data, modeling, training, vllm_backend
from gsm8k_tr.answers import is_correct
from gsm8k_tr.config import Recipe, recipe_dict
from gsm8k_tr.errors import UserError
from gsm8k_tr.generation import stop_ids
from gsm8k_tr.positions import add_position_ids
from gsm8k_tr.progress import use_compact_progress
from gsm8k_tr.rewards import build_rewards, completion_text

log = logging.getLogger(__name__)

STAGE = "grpo"

# Our defaults over TRL's; every one can be changed in the recipe's `grpo` section.
DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,  # LoRA: about 10x the 5e-6 of a full-parameter GRPO run
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 0.05,
    "max_steps": 500,
    "per_device_train_batch_size": 8,
    "num_generations": 8,
    "max_completion_length": 256,
    "temperature": 1.0,
    "beta": 0.0,  # no KL term, so no reference model in memory
    "disable_dropout": True,  # score with the policy that sampled
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "activation_checkpointing": False,  # TRL turns it on; below 1B parameters it only costs time
    "report_to": ["tensorboard"],
}


class GRPOTrainer(training.AtomicCheckpoints, training.GuardNonFinite, trl.GRPOTrainer):
    """TRL's GRPOTrainer with position ids for left-padded scoring, atomic checkpoints, accuracy and timing."""

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
        return rewards


class HeldOutAccuracy(TrainerCallback):
    """Every `eval.every_steps` steps, grade greedy answers on a held-out slice, as `evaluate` does.

    TRL's GRPO has no task metric; the training reward is measured on sampled
    answers to training prompts. This logs `eval/accuracy` and the format
    rate to the console, TensorBoard and the log history while the run goes
    on. It runs on the main process, on the unwrapped model.
    """

    KEYS = ("accuracy", "flexible_accuracy", "strict_format_rate", "mean_completion_tokens", "truncated_rate")

    def __init__(self, trainer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> None:
        self.trainer, self.rows, self.recipe = trainer, rows, recipe

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.recipe.eval.every_steps
        if not every or state.global_step % every:
            return
        if state.is_world_process_zero:
            from gsm8k_tr.evaluate import evaluate

            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            training_mode = model.training
            result, _ = evaluate(model, self.trainer.processing_class, self.rows, self.recipe)
            model.train(training_mode)
            logs = {f"eval/{key}": result[key] for key in self.KEYS}
            # Straight to the log history and the loggers: GRPOTrainer.log would flush the step's training metrics.
            state.log_history.append({**logs, "step": state.global_step})
            should_log = control.should_log  # on_log clears it, which would drop this step's training log
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log
        self.trainer.accelerator.wait_for_everyone()


def start_model(recipe: Recipe) -> tuple[str | None, dict[str, Any]]:
    """The SFT output GRPO starts from (None: the base model) and its manifest; checked for compatibility."""
    named = recipe.model.sft_output
    if named is not None and named.lower() == "none":
        return None, {}
    folder = Path(named) if named else training.stage_dir(recipe, "sft")
    if not training.is_finished(folder):
        raise UserError(f"GRPO starts from the SFT output {str(folder)!r}, which is missing or unfinished; run "
                        "`gsm8k-tr sft` with this recipe first, set model.sft_output, or model.sft_output=none")
    manifest = training.read_manifest(folder)
    if manifest.get("base_model") != recipe.model.name_or_path:
        raise UserError(f"the SFT output {str(folder)!r} was trained from {manifest.get('base_model')!r}, but this "
                        f"recipe's model.name_or_path is {recipe.model.name_or_path!r}; use the same model")
    if manifest.get("prompt") != recipe_dict(recipe)["prompt"]:
        raise UserError(f"the SFT output {str(folder)!r} was trained with another 'prompt' section (template or "
                        "tags) than this recipe's, so its answers would not match the rewards; use the same one")
    return str(folder / "merged"), manifest


def main(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run the GRPO stage; returns its manifest."""
    start, sft_manifest = start_model(recipe)
    folder, checkpoint, done = training.begin(recipe, STAGE, resume, overwrite)
    if done:
        log.info("%s already finished; nothing to resume", folder)
        return training.read_manifest(folder)
    data_dir = training.prepared_data(recipe)
    rows = data.load_split(data_dir, "train")

    tokenizer, model = training.load_base(recipe, start)
    stop = modeling.configure_tokens(tokenizer, model, sft_manifest.get("stop_token") or recipe.model.stop_token)
    context = modeling.context_length(model)
    funcs, weights = build_rewards(recipe.rewards, recipe.prompt.reasoning_tag, recipe.prompt.answer_tag)
    # vLLM (optional) is checked before TRL tries to import it, and told the stop token.
    values = vllm_backend.grpo_settings(recipe.grpo, stop_ids(model))
    config = training.trl_config(
        trl.GRPOConfig, STAGE, values,
        defaults={**DEFAULTS, **modeling.precision(recipe.grpo, STAGE)},
        forced={"output_dir": (str(folder / training.CHECKPOINTS), "it is {output_dir}/grpo/checkpoints"),
                "seed": (recipe.seed, "set the top-level 'seed'"),
                "reward_weights": (weights, "set the 'rewards' section")},
    )
    completion = config.max_completion_length
    if completion is None or not 0 < completion < context:
        raise UserError(f"recipe key 'grpo.max_completion_length' must be between 1 and the model's context "
                        f"({context} tokens) minus the prompt, got {completion!r}")

    count = modeling.token_counter(tokenizer)
    examples, counts = data.grpo_examples(rows, recipe, count, completion, context)
    data.require_rows(examples, counts, STAGE)
    log.info("grpo data: %s", counts)

    training.check_report_to(STAGE, config)
    training.log_to(folder)
    lora = modeling.lora_config(recipe.lora, model, dropout=0.0 if config.disable_dropout else None)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=Dataset.from_list(examples),
                          processing_class=tokenizer, peft_config=lora, answer_tag=recipe.prompt.answer_tag)
    trainer.on_non_finite = recipe.on_non_finite
    use_compact_progress(trainer)
    training.check_disk_space(folder, trainer.model, config.save_total_limit)
    if recipe.eval.every_steps:
        held_out = data.load_split(data_dir, recipe.eval.split)[: recipe.eval.held_out_size]
        trainer.add_callback(HeldOutAccuracy(trainer, held_out, recipe))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    info = training.stage_info(recipe, stop, data_dir, counts, started, checkpoint,
                               start_model=start or recipe.model.name_or_path, rewards=dict(recipe.rewards))
    return training.finish(trainer, folder, recipe, STAGE, info)
