"""The Trainer's FLOP count with the parameter count read once (`train/flops.py`): the same `total_flos` as
transformers counts, without a walk over the model at each micro-batch."""

from pathlib import Path
from unittest.mock import patch

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gsm8k_tr.train.flops import CountedFlops


class CountedTrainer(CountedFlops, Trainer):
    pass


def _run(tmp_path: Path, trainer_class: type) -> tuple[float, int]:
    """(total_flos, calls of the model's num_parameters) after 3 steps of 2 micro-batches."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(50, (12, 8)).tolist()]
    args = TrainingArguments(output_dir=str(tmp_path / trainer_class.__name__), max_steps=3,
                             per_device_train_batch_size=2, gradient_accumulation_steps=2, save_strategy="no",
                             report_to=[], use_cpu=True)
    trainer = trainer_class(model=model, args=args, train_dataset=rows)
    with patch.object(type(model), "num_parameters", autospec=True,
                      side_effect=GPT2LMHeadModel.num_parameters) as counted:
        trainer.train()
    return trainer.state.total_flos, counted.call_count


def test_the_flop_count_is_transformers_own_with_the_parameters_counted_once(tmp_path: Path) -> None:
    library, library_calls = _run(tmp_path, Trainer)
    ours, our_calls = _run(tmp_path, CountedTrainer)
    assert library_calls == 6  # transformers: once a micro-batch
    assert our_calls == 1
    assert ours == library > 0


def test_inputs_without_the_models_input_are_left_to_transformers() -> None:
    trainer = CountedTrainer.__new__(CountedTrainer)
    trainer.model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    assert trainer.floating_point_ops({"prompt_ids": torch.ones(2, 3)}) == 0  # as transformers answers (GRPO's)
    assert trainer._parameters_counted is None
