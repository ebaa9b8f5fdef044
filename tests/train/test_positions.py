"""The GRPO position-ids fix, checked through TRL's own scoring path.

TRL's `_get_per_token_logps_and_entropies` is what the GRPO loss uses. For a
left-padded batch, each row's completion log-probs must equal those of the
row scored alone. The same check on an unpatched trainer must fail, so the test
can see the bug it guards against.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _trainer(tiny_model_dir, tmp_path, trainer_cls, **config):
    from datasets import Dataset
    from trl import GRPOConfig

    from gsm8k_tr import modeling
    from gsm8k_tr.config import LoraConfig, ModelConfig
    from gsm8k_tr.train.lora import lora_config

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    modeling.configure_tokens(tokenizer, model, "<|stop|>")
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, report_to=[], use_cpu=True, **{"bf16": False, **config},
                      gradient_checkpointing=False, disable_dropout=True)  # the name every transformers knows
    trainer = trainer_cls(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "a b c"}] * 8), processing_class=tokenizer,
                          peft_config=lora_config(LoraConfig(r=4, alpha=8, dropout=0.0), model))
    # Random LoRA B so the adapter takes part in the forward pass, as after some training.
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    trainer.model.eval()
    return trainer


def left_padded_batch(pad: int) -> tuple:
    """Three rows of prompt and completion as GRPO scores them: prompts left-padded, completions right-padded.

    Returns (prompts, completions, ids, mask, completion columns).
    """
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 800, (n,), generator=generator) for n in (30, 12, 21)]
    completions = [torch.randint(5, 800, (n,), generator=generator) for n in (6, 10, 3)]
    width, length = max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((3, width + length), pad)
    mask = torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids[row, width - len(prompt):width], mask[row, width - len(prompt):width] = prompt, 1  # left padding
        ids[row, width:width + len(completion)], mask[row, width:width + len(completion)] = completion, 1
    return prompts, completions, ids, mask, length


def _worst_difference(trainer) -> float:
    """Max |batched - alone| over the real completion tokens of a left-padded batch."""
    prompts, completions, ids, mask, length = left_padded_batch(trainer.processing_class.pad_token_id)
    score = trainer._get_per_token_logps_and_entropies
    worst = 0.0
    with torch.no_grad():
        batched, _, _ = score(trainer.model, ids, mask, length)
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            alone_ids = torch.cat([prompt, completion])[None]
            alone, _, _ = score(trainer.model, alone_ids, torch.ones_like(alone_ids), len(completion))
            worst = max(worst, (batched[row, :len(completion)] - alone[0]).abs().max().item())
    return worst


def test_grpo_trainer_scores_left_padded_rows_like_single_rows(tiny_model_dir, tmp_path):
    from gsm8k_tr.train.grpo import GRPOTrainer

    assert _worst_difference(_trainer(tiny_model_dir, tmp_path, GRPOTrainer)) < 1e-4


def test_other_model_families_score_left_padded_rows_like_single_rows(family_model_dir, tmp_path):
    # GPT-Neo's learned positions have GPT-2's flaw under plain TRL; rotary, OPT's offset and ALiBi must hold too.
    from gsm8k_tr.train.grpo import GRPOTrainer

    assert _worst_difference(_trainer(family_model_dir, tmp_path, GRPOTrainer)) < 1e-4


def test_plain_trl_trainer_has_the_bug_and_the_hook_alone_fixes_it(tiny_model_dir, tmp_path):
    # Without the fix the same check fails by a wide margin: the test can see the bug.
    from trl import GRPOTrainer

    from gsm8k_tr.train.positions import add_position_ids

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    assert _worst_difference(trainer) > 1e-2
    handle = add_position_ids(trainer.model)
    assert _worst_difference(trainer) < 1e-4
    handle.remove()
    assert _worst_difference(trainer) > 1e-2


def test_grpo_trainer_stops_on_the_stop_token(tiny_model_dir, tmp_path):
    # GRPO counts a completion as terminated (clipped_ratio, truncation masking) when it ends in one of these.
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)
    stop_id = trainer.processing_class.convert_tokens_to_ids("<|stop|>")
    assert stop_id in trainer.eos_token_ids
    assert stop_id in trainer.generation_config.eos_token_id
    assert trainer.processing_class.pad_token_id != stop_id
