"""The Trainer's FLOP count (`total_flos`) with the model's parameter count read once.

transformers' Trainer adds `floating_point_ops(inputs)` to its count at every
micro-batch: 6 x the batch's tokens x `model.num_parameters(exclude_embeddings=True)`,
and that call walks the whole module tree each time (a PEFT GPT-2 Medium with
LoRA on every linear layer has about 1,300 modules): 13 ms of host time a
micro-batch on 2 CPU cores, time in which a GPU waits, since TRL reads each
micro-batch's metrics. The count cannot change during training, so it is read
at the first micro-batch (after accelerate has prepared the model) and kept.
"""

from __future__ import annotations

from typing import Any


class CountedFlops:
    """Trainer mixin: `floating_point_ops` as transformers computes it, with the parameter count read once."""

    _parameters_counted: int | None = None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs or not hasattr(self.model, "num_parameters"):
            return super().floating_point_ops(inputs)  # type: ignore[misc]
        if self._parameters_counted is None:
            self._parameters_counted = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[name].numel() * self._parameters_counted
