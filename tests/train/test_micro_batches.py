"""GRPO micro-batches cut to their own longest prompt and completion (`train/micro_batches.py`): TRL's loss and
its gradients are the ones of the uncut micro-batch, for every loss type, and fewer columns are scored."""

from __future__ import annotations

import pytest
from test_positions import _trainer

torch = pytest.importorskip("torch")


def _micro_batch(pad: int, prompt_width: int = 40, completion_width: int = 24) -> dict:
    """Three rows cut from a wider generation batch: prompts left-padded to `prompt_width` (the longest here is 21),
    completions right-padded to `completion_width` (the longest here is 10), as TRL hands a micro-batch over."""
    generator = torch.Generator().manual_seed(0)
    prompt_ids = torch.full((3, prompt_width), pad)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.full((3, completion_width), pad)
    completion_mask = torch.zeros_like(completion_ids)
    for row, (p, c) in enumerate(zip((21, 12, 5), (6, 10, 3))):
        prompt_ids[row, prompt_width - p:] = torch.randint(5, 800, (p,), generator=generator)
        prompt_mask[row, prompt_width - p:] = 1
        completion_ids[row, :c] = torch.randint(5, 800, (c,), generator=generator)
        completion_mask[row, :c] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.tensor([1.0, -0.5, 0.25]),
            "num_items_in_batch": completion_mask.sum(),
            "old_per_token_logps": -torch.rand(3, completion_width, generator=generator)}


def test_cut_widths_follow_the_rows_and_the_multiple() -> None:
    from gsm8k_tr.train.micro_batches import trimmed

    batch = _micro_batch(pad=0)
    cut = trimmed(batch, None)
    assert cut["prompt_ids"].shape == (3, 21) and cut["completion_ids"].shape == (3, 10)
    assert cut["old_per_token_logps"].shape == (3, 10) and cut["advantages"].shape == (3,)
    assert torch.equal(cut["prompt_ids"], batch["prompt_ids"][:, -21:])
    assert trimmed(batch, 16)["prompt_ids"].shape == (3, 32) and trimmed(batch, 16)["completion_ids"].shape == (3, 16)
    assert trimmed(batch, 64)["prompt_ids"].shape == (3, 40)  # never wider than TRL made it
    assert trimmed(cut, None) is cut  # nothing left to cut


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_the_loss_and_its_gradients_are_the_uncut_ones(tiny_model_dir, tmp_path, loss_type: str) -> None:
    import trl

    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer, loss_type=loss_type)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # as the training loop sets it
    batch = _micro_batch(trainer.processing_class.pad_token_id)
    widths = []
    original = trainer._get_per_token_logps_and_entropies

    def scored(model, input_ids, *args, **kwargs):
        widths.append(input_ids.shape[1])
        return original(model, input_ids, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = scored

    def loss_and_gradients(compute):
        trainer.model.zero_grad()
        loss = compute(trainer.model, {k: v.clone() for k, v in batch.items()})
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    uncut = loss_and_gradients(lambda model, inputs: trl.GRPOTrainer._compute_loss(trainer, model, inputs))
    cut = loss_and_gradients(trainer._compute_loss)
    assert widths == [40 + 24, 21 + 10]  # the second call scored the cut micro-batch
    torch.testing.assert_close(cut[0], uncut[0], rtol=1e-5, atol=1e-6)
    assert len(uncut[1]) > 0
    for name in uncut[1]:
        torch.testing.assert_close(cut[1][name], uncut[1][name], rtol=1e-4, atol=1e-6, msg=name)
