"""A non-finite gradient never reaches the weights: `stop` ends the run, `skip` drops exactly that step."""

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from gsm8k_tr.errors import UserError
from gsm8k_tr.train.guard import GuardNonFinite


class GuardedTrainer(GuardNonFinite, Trainer):
    pass


class PoisonStep(TrainerCallback):
    """Before the optimizer runs at step `at`, sets one gradient to NaN and remembers the weights."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at:
            next(p for p in model.parameters() if p.grad is not None).grad[0] = float("nan")
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def _trainer(tmp_path: Path, mode: str, poison: PoisonStep, steps: int = 4, fp16: bool = False) -> GuardedTrainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(50, (16, 8)).tolist()]
    args = TrainingArguments(output_dir=str(tmp_path / "checkpoints"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             fp16=fp16)
    trainer = GuardedTrainer(model=model, args=args, train_dataset=rows, callbacks=[poison])
    trainer.on_non_finite = mode
    return trainer


def test_skip_leaves_the_weights_and_optimizer_as_they_were_and_counts(tmp_path: Path, caplog) -> None:
    poison = PoisonStep(at=2)
    trainer = _trainer(tmp_path, "skip", poison)
    trainer.train()
    assert trainer.state.global_step == 4  # the run went on
    assert poison.before and all(torch.equal(poison.before[n], poison.after[n]) for n in poison.before)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    counts = [h["skipped_steps"] for h in trainer.state.log_history if "skipped_steps" in h]
    assert counts == [0, 1, 1, 1, 1]  # four steps, then the end-of-training summary
    assert "step 2: the loss or gradient norm is not finite" in caplog.text and "1 skipped so far" in caplog.text
    # AdamW's step count shows the optimizer itself never ran at step 2
    state = next(iter(trainer.optimizer.state.values()))
    assert int(state["step"]) == 3


def test_a_resumed_count_continues_from_the_log_history(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "skip", PoisonStep(at=99))
    trainer.state.log_history = [{"loss": 1.0, "skipped_steps": 3, "step": 5}]
    trainer.skipped_steps = None
    logged: list[dict] = []
    trainer.callback_handler.callbacks.append(type("Spy", (TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(logs)})())
    trainer.log({"loss": 0.5})
    assert logged[-1]["skipped_steps"] == 3


def test_stop_names_the_gradient_and_the_way_on(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "stop", PoisonStep(at=2))
    with pytest.raises(UserError, match=r"the gradient norm became nan at step 2; no checkpoint was saved yet.*"
                                        r"--resume, or set on_non_finite: skip"):
        trainer.train()


def _fp16(trainer: GuardedTrainer, init_scale: float) -> GuardedTrainer:
    """The trainer as it runs on an fp16 GPU: fp16 autocast and torch's GradScaler in accelerate's code path.

    accelerate creates a scaler only on a GPU; on CPU the same GradScaler
    class runs (torch >= 2.3), so it is handed to the accelerator before
    training prepares the optimizer. Everything after that is the library's
    own path: scaled backward, unscale in the Trainer's norm clipping, the
    skip inside `scaler.step` (here in the fused AdamW kernel), and the
    scale's update.
    """
    assert trainer.args.fp16 and trainer.accelerator.scaler is None  # accelerate's own choice on CPU
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer.accelerator.native_amp = True
    return trainer


def test_fp16_scaler_skips_are_counted_and_are_not_faults(tmp_path: Path) -> None:
    # At 2**20 the first fp16 steps overflow (as at 2**16 on a GPU with a real model), the scaler skips them and
    # halves its scale; with the default on_non_finite: stop the run must go on.
    trainer = _fp16(_trainer(tmp_path, "stop", PoisonStep(at=99), steps=8, fp16=True), 2.0**20)
    trainer.train()
    assert trainer.state.global_step == 8
    counts = [h["scaler_skipped_steps"] for h in trainer.state.log_history if "scaler_skipped_steps" in h]
    assert counts[0] == 1 and counts[-1] >= 1
    stepped = int(next(iter(trainer.optimizer.optimizer.state.values()))["step"])
    assert counts[-1] == 8 - stepped  # exactly the steps the optimizer did not take
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_non_finite_step_the_scaler_misses_still_stops(tmp_path: Path) -> None:
    # A gradient poisoned after unscaling: the scaler found nothing and would apply it.
    trainer = _fp16(_trainer(tmp_path, "stop", PoisonStep(at=2), fp16=True), 2.0**8)
    with pytest.raises(UserError, match=r"the gradient norm became nan at step 2"):
        trainer.train()


def test_the_recipe_key_is_checked() -> None:
    from gsm8k_tr.config import load_recipe

    assert load_recipe(None, ["on_non_finite=skip"]).on_non_finite == "skip"
    with pytest.raises(UserError, match="'on_non_finite' must be 'stop' or 'skip', got 'ignore'"):
        load_recipe(None, ["on_non_finite=ignore"])


def test_the_trained_parameters_are_listed_once_and_the_frozen_ones_left_out(tmp_path: Path) -> None:
    # The guard runs before every optimizer step; walking a PEFT model's modules for its parameters each time costs
    # milliseconds of host time a step, so the list is taken at the first check and kept.
    lists: list[int] = []
    trainer = _trainer(tmp_path, "stop", PoisonStep(at=99))
    trainer.model.transformer.wte.weight.requires_grad_(False)
    trainer.callback_handler.callbacks.append(type("Note", (TrainerCallback,), {
        "on_step_end": lambda self, *args, **kw: lists.append(id(trainer._trained))})())
    trainer.train()
    assert len(lists) == 4 and len(set(lists)) == 1
    assert all(p.requires_grad for p in trainer._trained)
    assert len(trainer._trained) == sum(1 for p in trainer.model.parameters() if p.requires_grad) > 0
    assert not any(p is trainer.model.transformer.wte.weight for p in trainer._trained)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_gradient_norm_is_the_norm_of_all_gradients_and_fp16_does_not_overflow(dtype) -> None:
    from gsm8k_tr.train.guard import gradient_norm

    torch.manual_seed(0)
    grads = [torch.randn(shape).to(dtype) for shape in ((8, 4), (3,), (5, 5, 2))]
    expected = torch.linalg.vector_norm(torch.cat([g.float().reshape(-1) for g in grads]))
    found = gradient_norm(grads)
    assert found.dtype == torch.float32
    assert torch.allclose(found, expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    # fp16 holds values up to 65,504; a norm of 1,000 x sqrt(10,000) = 100,000 is finite only when read in float32
    assert torch.isfinite(gradient_norm([torch.full((10_000,), 1000.0, dtype=torch.float16)]))
    assert not torch.isfinite(gradient_norm([grads[0], torch.full((2,), float("nan"), dtype=dtype)]))


@pytest.mark.parametrize("multiple, named", [(64, True), (None, True), (128, False)])
def test_a_nan_gradient_on_a_gpu_names_cudnns_lengths_where_the_padding_allows_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multiple: int | None, named: bool) -> None:
    # On an H200, GRPO padded to 64 stopped here at its first step (docs/benchmarks.md, "GPU"); the stop says why.
    from gsm8k_tr.train import guard

    trainer = _trainer(tmp_path, "stop", PoisonStep(at=2))
    trainer.args.pad_to_multiple_of = multiple
    monkeypatch.setattr(guard, "on_cuda", lambda args: True)
    with pytest.raises(UserError) as stopped:
        trainer.train()
    assert ("pytorch#196678" in str(stopped.value)) == named
    assert "the gradient norm became nan at step 2" in str(stopped.value)


def test_the_cudnn_sentence_is_for_a_gpu_only(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "stop", PoisonStep(at=2))
    trainer.args.pad_to_multiple_of = 64
    with pytest.raises(UserError) as stopped:  # on the CPU: no cuDNN, no sentence
        trainer.train()
    assert "pytorch#196678" not in str(stopped.value)
