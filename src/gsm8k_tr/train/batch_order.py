"""Which examples each SFT micro-batch holds: the examples of one optimizer step grouped by length.

A micro-batch is padded to its longest row (then to `pad_to_multiple_of`), and
GSM8K-TR's rows run from about 100 to over 1,000 tokens, so micro-batches
drawn at random compute a good deal of padding. transformers'
`train_sampling_strategy: batch_rebalance` (its `BatchRebalanceSampler`)
takes the shuffled examples of each optimizer step, sorts them by length and
splits them into the step's micro-batches by a cost that counts padding;
seeded with the run's seed (below), a step's examples are the very ones the
random order gives it (`tests/train/test_batch_order.py`). On
the shared GSM8K-TR rows, SFT of the demo model on 2 CPU cores in
micro-batches of 4 x 8 and 8 x 4 computed 1.31 and 1.42 tokens per real one
at random against 1.06 and 1.13 grouped, and trained 1.27-1.37x the real
tokens a second (`python benchmarks/gpu_shapes.py --cpu --model
builtin:demo-gpt2 --parts sft-order`; docs/benchmarks.md). An optimizer step
still sees the same examples, and TRL's SFT loss divides by the step's
tokens, not the micro-batch's (`num_items_in_batch`), so the step's gradient
is the same sum in another order (`tests/train/test_batch_order.py`).

A step of a single micro-batch on a single process has nothing to regroup,
so it keeps the random order (the demo's SFT). Two mendings of the library:
transformers builds the sampler without the run's seed (always 42, so a
recipe's seed did not change the data order; `SeededRebalance`), and a
transformers without the sampler keeps the random order.

Micro-batches then vary in rows: long rows in smaller ones, short rows in
larger ones. The memory plan assumes every micro-batch holds its micro-batch
size of the longest row; on the shared GSM8K-TR rows none holds more tokens
than that (a test holds it to it).

A resumed run takes each epoch in the order the uninterrupted run took it,
SFT's (`SeededRebalance`) and GRPO's (`ReplayedEpochs`).
"""

from __future__ import annotations

from typing import Any

STRATEGY = "batch_rebalance"


def rebalance_sampler() -> type | None:
    """transformers' `BatchRebalanceSampler`, or None where this transformers has none."""
    try:
        from transformers.trainer_pt_utils import BatchRebalanceSampler
    except ImportError:
        return None
    return BatchRebalanceSampler


def choose(config: Any, section: dict[str, Any]) -> None:
    """Set `config.train_sampling_strategy` to `batch_rebalance` when an optimizer step has several micro-batches
    (gradient accumulation, or several processes) and the recipe's `section` names no strategy of its own."""
    if "train_sampling_strategy" in section or not hasattr(config, "train_sampling_strategy"):
        return
    if config.gradient_accumulation_steps * max(1, config.world_size) <= 1 or rebalance_sampler() is None:
        return
    config.train_sampling_strategy = STRATEGY


class SeededRebalance:
    """Trainer mixin: transformers' `BatchRebalanceSampler` shuffles with the run's `data_seed` or `seed`, as its
    random sampler does, instead of the constant it is built with; and a run resumed within an epoch gets that
    epoch's order under several processes too (`get_resumed_dataloader`)."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        cls = rebalance_sampler()
        if cls is not None and isinstance(sampler, cls):
            sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return sampler

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """The loader that skips a resumed epoch's trained batches, with the epoch passed on to the sampler.

        The sampler shuffles by `seed + epoch`. transformers sets the epoch on
        the loader accelerate's `skip_first_batches` returns; under several
        processes its batches come from a `SkipBatchSampler` around a
        `BatchSamplerShard` around the sampler, and neither wrapper passes an
        epoch on, so the rest of the resumed epoch came in epoch 0's order:
        some of its examples trained twice, others not at all, and the run
        ended elsewhere than an uninterrupted one (`tests/train/test_distributed.py`).
        One process has no `BatchSamplerShard` between them, and transformers
        reaches the sampler itself.
        """
        return pass_epoch_on(super().get_resumed_dataloader(dataloader, num_batches))


class ReplayedEpochs:
    """Trainer mixin (GRPO): a resumed run takes each epoch's prompts in the order the uninterrupted run took them.

    TRL's `RepeatSampler` draws every epoch's order from one generator,
    seeded once: epoch k's order is the generator's k-th. A resumed run
    builds a new sampler, so from a checkpoint after the first epoch it took
    epoch 0's order again, and within the resumed epoch skipped batches of
    that order: some prompts trained twice, others not at all (GRPO on the
    few prompts the prompt filter keeps passes epochs in a few steps). Its
    `set_epoch(k)`, which transformers calls as each epoch begins, seeds
    the generator again and draws the k orders before: what the generator
    of an uninterrupted run holds then, so that run is unchanged.
    """

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        sampler = super()._get_train_sampler(*args, **kwargs)
        replayable = getattr(sampler, "shuffle", False) and getattr(sampler, "seed", None) is not None and \
            isinstance(getattr(sampler, "generator", None), torch.Generator)
        if replayable and not hasattr(sampler, "set_epoch"):
            def set_epoch(epoch: int) -> None:
                sampler.generator.manual_seed(sampler.seed)
                for _ in range(epoch):
                    torch.randperm(sampler.num_samples, generator=sampler.generator)

            sampler.set_epoch = set_epoch
        return sampler

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """As `SeededRebalance.get_resumed_dataloader`: the epoch reaches the sampler under several processes."""
        return pass_epoch_on(super().get_resumed_dataloader(dataloader, num_batches))


def pass_epoch_on(resumed: Any) -> Any:
    """Give the `SkipBatchSampler` of a resumed loader the `set_epoch` of the first sampler under it that has one
    (under several processes a `BatchSamplerShard` lies between them, and accelerate's `DataLoaderShard.set_epoch`
    does not reach through both)."""
    skipper = getattr(resumed, "batch_sampler", None)
    sampler = skipper
    while sampler is not None and (sampler is skipper or not hasattr(sampler, "set_epoch")):
        inner = getattr(sampler, "batch_sampler", None)  # (not `or`: a sampler of no batches is falsy)
        sampler = inner if inner is not None else getattr(sampler, "sampler", None)
    if sampler is not None and skipper is not None and not hasattr(skipper, "set_epoch"):
        skipper.set_epoch = sampler.set_epoch  # what accelerate's DataLoaderShard.set_epoch calls
    return resumed
