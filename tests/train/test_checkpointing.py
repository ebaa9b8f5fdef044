"""Activation checkpointing under GRPO with a LoRA adapter: the gradients are the ones without it.

The memory plan proposes `activation_checkpointing: true` when a stage does
not fit (`gsm8k-tr plan`, and the line a stage stops with). With PEFT,
checkpointing has a known way to go wrong: frozen embeddings give the
checkpointed blocks inputs that need no gradient, and the adapter's gradients
come out zero or the backward pass fails. TRL
guards against it (`enable_input_require_grads`); this checks the outcome
through TRL's own scoring path, with the trainer switching checkpointing on as
`Trainer.train` does.
"""

from __future__ import annotations

import pytest
from test_positions import _trainer, left_padded_batch

torch = pytest.importorskip("torch")


def _lora_gradients(trainer) -> dict[str, object]:
    _, _, ids, mask, length = left_padded_batch(trainer.processing_class.pad_token_id)
    trainer.model.train()
    trainer.model.zero_grad()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, length)
    weights = torch.linspace(-1.0, 1.0, logps.numel()).reshape(logps.shape)  # advantages of both signs
    (logps * weights).sum().backward()
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_grpo_with_activation_checkpointing_gives_the_same_lora_gradients(tiny_model_dir, tmp_path):
    from gsm8k_tr.train.grpo import GRPOTrainer
    from gsm8k_tr.train.rollouts import activation_checkpointing, turn_on_activation_checkpointing

    plain = _lora_gradients(_trainer(tiny_model_dir, tmp_path / "plain", GRPOTrainer))
    trainer = _trainer(tiny_model_dir, tmp_path / "checkpointed", GRPOTrainer)
    turn_on_activation_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs)  # either transformers
    assert activation_checkpointing(trainer.model.base_model.model)
    checkpointed = _lora_gradients(trainer)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    assert all(g.abs().sum() > 0 for g in plain.values())  # every adapter weight takes part
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
