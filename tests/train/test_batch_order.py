"""SFT micro-batches of like length within an optimizer step (`train/batch_order.py`): chosen when a step has
several micro-batches, shuffled with the run's seed, and the step's gradient is the one of any other split of the
same examples."""

from __future__ import annotations

import pytest
from conftest import ROOT, SAMPLE_CSV

torch = pytest.importorskip("torch")

from gsm8k_tr.config import load_recipe  # noqa: E402
from gsm8k_tr.train import batch_order  # noqa: E402
from gsm8k_tr.train.trl_configs import sft_args  # noqa: E402

needs_sampler = pytest.mark.skipif(batch_order.rebalance_sampler() is None,
                                   reason="this transformers has no BatchRebalanceSampler")


@needs_sampler
def test_regrouping_is_chosen_only_where_a_step_has_several_micro_batches() -> None:
    real = ROOT / "recipes" / "turkish-gpt2-medium.yaml"  # 8 x 4 accumulated
    assert sft_args(load_recipe(real), "<|stop|>", 1024).train_sampling_strategy == "batch_rebalance"
    # One micro-batch a step on one process: nothing to regroup; the random order stays (the demo's SFT).
    assert sft_args(load_recipe(ROOT / "recipes" / "demo.yaml"), "<|stop|>", 1024).train_sampling_strategy == "random"
    # A recipe's own choice stands.
    chosen = load_recipe(real, ["sft.train_sampling_strategy=group_by_length"])
    assert sft_args(chosen, "<|stop|>", 1024).train_sampling_strategy == "group_by_length"


def _trainer(tiny_model_dir, tmp_path, cls, seed: int, rows: int = 24, **settings):
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                 use_kernels=False)
    # Rows of 4 to 26 tokens, the first token naming the row; the completion is scored.
    data = Dataset.from_list([{"input_ids": [5 + i] + [7 + i % 5] * (3 + (i * 7) % 23),
                               "completion_mask": [0] + [1] * (3 + (i * 7) % 23)} for i in range(rows)])
    config = trl.SFTConfig(**{"output_dir": str(tmp_path), "per_device_train_batch_size": 2,
                              "gradient_accumulation_steps": 4, "train_sampling_strategy": "batch_rebalance",
                              "report_to": [], "use_cpu": True, "seed": seed, "save_strategy": "no",
                              "completion_only_loss": True, **settings})
    return cls(model=model, args=config, train_dataset=data, processing_class=tokenizer)


@needs_sampler
def test_the_run_seed_shuffles_the_regrouped_order(tiny_model_dir, tmp_path) -> None:
    import trl

    from gsm8k_tr.train.sft import SFTTrainer

    def first_step(cls, seed):
        trainer = _trainer(tiny_model_dir, tmp_path / f"{cls.__name__}{seed}", cls, seed)
        return [sorted(batch) for batch in list(iter(trainer._get_train_sampler(trainer.train_dataset)))[:4]]

    # transformers builds the sampler without the seed: every run takes the same order.
    assert first_step(trl.SFTTrainer, 1) == first_step(trl.SFTTrainer, 2)
    ours = {seed: first_step(SFTTrainer, seed) for seed in (1, 2)}
    assert ours[1] != ours[2] and ours[1] == first_step(SFTTrainer, 1)


@needs_sampler
def test_a_regrouped_step_keeps_its_examples_and_its_gradient(tiny_model_dir, tmp_path) -> None:
    from gsm8k_tr.train.sft import SFTTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, SFTTrainer, seed=3)
    data = trainer.train_dataset
    sampler = trainer._get_train_sampler(data)
    step = list(iter(sampler))[:4]  # the first optimizer step's four micro-batches
    shuffled = torch.randperm(len(data), generator=torch.Generator().manual_seed(3)).tolist()
    assert sorted(i for batch in step for i in batch) == sorted(shuffled[:8])  # the step's examples, as shuffled
    # ... which are the examples the default random order gives the step (accelerate's seeded sampler, same seed)
    plain = _trainer(tiny_model_dir, tmp_path / "random", SFTTrainer, seed=3, train_sampling_strategy="random")
    batches = iter(plain.get_train_dataloader())
    first = sorted(int(t) - 5 for _ in range(4) for t in next(batches)["input_ids"][:, 0])
    assert first == sorted(shuffled[:8])
    lengths = [len(data[i]["input_ids"]) for i in shuffled[:8]]
    padded = sum(len(batch) * max(len(data[i]["input_ids"]) for i in batch) for batch in step)
    in_order = sum(2 * max(lengths[k:k + 2]) for k in range(0, 8, 2))
    assert padded < in_order  # fewer tokens computed than the same examples split in their shuffled order

    def gradient(batches):
        trainer.model.zero_grad()
        rows = [[data[i] for i in batch] for batch in batches]
        scored = sum(int((torch.tensor(r["labels"]) != -100).sum()) for batch in rows for r in batch)
        for batch in rows:
            inputs = trainer._prepare_inputs(trainer.data_collator(batch))
            trainer.compute_loss(trainer.model, inputs, num_items_in_batch=torch.tensor(scored)).backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    trainer.model.train()
    regrouped = gradient(step)
    split = gradient([shuffled[k:k + 2] for k in range(0, 8, 2)])
    assert regrouped.keys() == split.keys() and len(split) > 0
    for name in split:
        torch.testing.assert_close(regrouped[name], split[name], rtol=1e-4, atol=1e-7, msg=name)


@needs_sampler
@pytest.mark.parametrize("micro, accumulate", [(2, 16), (4, 8), (8, 4), (16, 2)])
def test_regrouped_micro_batches_stay_within_the_plan_on_real_rows(tiny_model_dir, micro: int, accumulate: int) -> None:
    # The memory plan assumes every micro-batch holds its size of the longest row. Regrouped micro-batches vary in
    # rows; on the real GSM8K-TR rows none holds more tokens than that, and fewer are computed than at random.
    import csv

    from transformers import AutoTokenizer

    if not SAMPLE_CSV.is_file():
        pytest.skip(f"the shared sample ({SAMPLE_CSV}) is not there")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with SAMPLE_CSV.open(encoding="utf-8") as f:
        lengths = [len(tokenizer(r["question"] + "\n" + r["answer"])["input_ids"]) for r in csv.DictReader(f)]
    sampler = batch_order.rebalance_sampler()(lengths, micro * accumulate, 1, accumulate, seed=0)
    batches = list(iter(sampler))
    computed = {"grouped": 0, "random": 0}
    for start in range(0, len(batches), accumulate):
        step = batches[start:start + accumulate]
        longest = max(lengths[i] for batch in step for i in batch)
        assert max(len(batch) * max(lengths[i] for i in batch) for batch in step) <= micro * longest
        computed["grouped"] += sum(len(batch) * max(lengths[i] for i in batch) for batch in step)
        examples = [i for batch in step for i in batch]  # the same examples in micro-batches as shuffled
        computed["random"] += sum(micro * max(lengths[i] for i in examples[k:k + micro])
                                  for k in range(0, len(examples), micro))
    assert computed["grouped"] < 0.95 * computed["random"], computed


@needs_sampler
def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one(tiny_model_dir, tmp_path) -> None:
    # Resuming skips the batches a checkpoint has seen (transformers' `skip_first_batches`): with the regrouped
    # order too, the resumed run trains on exactly the micro-batches the uninterrupted run did, across epochs.
    from gsm8k_tr.train.sft import SFTTrainer

    seen: list[tuple[int, ...]] = []

    class Recording(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(tuple(int(t) - 5 for t in inputs["input_ids"][:, 0]))  # each row's first token names it
            return super().compute_loss(model, inputs, *args, **kwargs)

    def trainer(folder, max_steps):
        return _trainer(tiny_model_dir, folder, Recording, seed=4, max_steps=max_steps, save_strategy="steps",
                        save_steps=4, logging_steps=100)

    trainer(tmp_path / "whole", 8).train()  # 24 rows, 8 a step: 3 steps an epoch, so it crosses into epoch 3
    whole, seen[:] = list(seen), []
    first = trainer(tmp_path / "cut", 4)
    first.train()
    assert seen == whole[:len(seen)]
    seen[:] = []
    trainer(tmp_path / "cut", 8).train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-4"))
    assert seen == whole[len(whole) - len(seen):] and len(seen) > 0
    assert len({row for batch in whole for row in batch}) == 24


class _Sampled:
    """What a GRPO trainer offers `batch_order.ReplayedEpochs`: TRL's sampler of prompts (5 prompts, 2 a step, each
    repeated for 2 completions) and accelerate's resumed loader."""

    def _get_train_sampler(self, dataset=None):
        from trl.trainer.utils import RepeatSampler

        return RepeatSampler(list(range(5)), mini_repeat_count=2, batch_size=2, repeat_count=1, shuffle=True, seed=0)

    def get_resumed_dataloader(self, dataloader, num_batches):
        from accelerate import skip_first_batches

        return skip_first_batches(dataloader, num_batches)


class _Replayed(batch_order.ReplayedEpochs, _Sampled):
    pass


def _loader(sampler, process: int):
    """Process `process` of two's loader, as accelerate prepares it (a `BatchSamplerShard` around the batches)."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import BatchSampler, DataLoader

    loader = DataLoader(list(range(5)), batch_sampler=BatchSampler(sampler, 2, drop_last=False))
    return prepare_data_loader(loader, num_processes=2, process_index=process, put_on_device=False)


def test_a_resumed_grpo_run_takes_each_epoch_in_the_uninterrupted_order() -> None:
    # TRL's RepeatSampler draws each epoch's order from one generator seeded once; a resumed run's new sampler took
    # epoch 0's order for the epoch it resumed in (GRPO on the prompt filter's few prompts passes epochs quickly).
    library = _Sampled()._get_train_sampler()
    uninterrupted = [list(library) for _ in range(4)]
    assert len({str(order) for order in uninterrupted}) == 4
    replayed = _Replayed()._get_train_sampler()
    orders = []
    for epoch in range(4):
        replayed.set_epoch(epoch)  # as transformers does as each epoch begins
        orders.append(list(replayed))
    assert orders == uninterrupted  # an uninterrupted run is unchanged
    resumed = _Replayed()._get_train_sampler()
    resumed.set_epoch(2)
    assert list(resumed) == uninterrupted[2]
    assert list(_Sampled()._get_train_sampler()) != uninterrupted[2]  # the library's resumed order


@pytest.mark.parametrize("process", [0, 1])
def test_the_epoch_reaches_grpo_s_sampler_through_accelerate_s_wrappers_on_resuming(process: int) -> None:
    # Under several processes the resumed loader's SkipBatchSampler wraps a BatchSamplerShard, and accelerate's
    # DataLoaderShard.set_epoch reaches through neither: the resumed epoch came in epoch 0's order.
    whole = _loader(_Replayed()._get_train_sampler(), process)
    for epoch in range(2):
        whole.set_epoch(epoch)
        expected = [batch.tolist() for batch in whole][1:]  # epoch 1, its first batch trained before the kill
    trainer = _Replayed()
    resumed = trainer.get_resumed_dataloader(_loader(trainer._get_train_sampler(), process), 1)
    resumed.set_epoch(1)  # as transformers does for the resumed epoch
    assert [batch.tolist() for batch in resumed] == expected
