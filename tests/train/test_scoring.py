"""The LM head over the scored tokens only (`train/scoring.py`), held to TRL's own fused LM head.

TRL projects every position off Triton devices; with `compact_scoring` it
projects only the positions that have a label. The log-probabilities, the
entropies and the gradients must be the same numbers, and the projection must
really see fewer rows, or the override does nothing (another TRL).
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from test_positions import _trainer, left_padded_batch

torch = pytest.importorskip("torch")

from gsm8k_tr import placement  # noqa: E402
from gsm8k_tr.train import scoring  # noqa: E402


def _rows_projected(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many positions each call of TRL's chunked log-prob kernel projects."""
    from trl.trainer import utils

    seen: list[int] = []
    real = utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        seen.append(hidden.shape[0])
        return real(hidden, *args)

    monkeypatch.setattr(utils._ChunkedLogProbFunction, "apply", spy)
    return seen


def test_grpo_scoring_projects_only_the_completion_tokens_and_gives_the_same_numbers(
        tiny_model_dir, tmp_path, monkeypatch) -> None:
    from gsm8k_tr.train.grpo import GRPOTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, GRPOTrainer)  # LoRA with random B, as after some training
    _, completions, ids, mask, length = left_padded_batch(trainer.processing_class.pad_token_id)
    completion_tokens = sum(map(len, completions))
    seen = _rows_projected(monkeypatch)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def score() -> tuple:
        trainer.model.zero_grad()
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, length,
                                                                         compute_entropy=True)
        keep = mask[:, -length:].bool()
        (logps[keep].sum() + entropies[keep].sum()).backward()
        return logps[keep].detach(), entropies[keep].detach(), [p.grad.clone() for p in params]

    compact = score()
    monkeypatch.setattr(placement, "compact_scoring", lambda device: False)  # TRL's own choice on a CPU
    every = score()
    assert seen == [completion_tokens, ids.shape[0] * (ids.shape[1] - 1)]  # the override is what changed the work
    torch.testing.assert_close(compact[0], every[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compact[1], every[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(compact[2], every[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in compact[2])


def test_sft_loss_through_trls_fused_head_is_the_same_with_fewer_rows(tiny_model_dir, monkeypatch) -> None:
    """SFTTrainer's loss goes through the same fused forward (`model(..., fused_lm_head=True)`)."""
    from trl.trainer.utils import add_fused_lm_head

    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig

    model = modeling.load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    _, completions, ids, mask, length = left_padded_batch(0)
    completion_tokens = sum(map(len, completions))
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-length] = -100  # completion-only loss
    seen = _rows_projected(monkeypatch)

    def loss(compact: bool) -> tuple:
        model.zero_grad()
        with scoring.compact_scoring(torch.device("cpu")) if compact else nullcontext():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), model.transformer.h[0].attn.c_attn.weight.grad.clone()

    compact, every = loss(True), loss(False)
    assert seen == [completion_tokens, ids.shape[0] * (ids.shape[1] - 1)]
    torch.testing.assert_close(compact[0], every[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compact[1], every[1], rtol=1e-4, atol=1e-6)


def test_the_override_is_undone_after_the_block_also_on_error() -> None:
    from trl.trainer import utils

    original = utils._use_triton
    with pytest.raises(ValueError), scoring.compact_scoring(torch.device("cpu")):
        assert utils._use_triton is not original
        raise ValueError("boom")
    assert utils._use_triton is original


def test_devices_that_compile_keep_trls_choice() -> None:
    from trl.trainer import utils

    assert placement.compact_scoring(torch.device("cpu")) and placement.compact_scoring(torch.device("cuda"))
    assert not placement.compact_scoring("xla") and not placement.compact_scoring("neuron")
    original = utils._use_triton
    with scoring.compact_scoring("xla"):
        assert utils._use_triton is original
