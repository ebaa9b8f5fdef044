"""The non-finite guard: a NaN or infinite loss or gradient never reaches the weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gsm8k_tr import placement
from gsm8k_tr.errors import UserError
from gsm8k_tr.train.checkpoints import last_checkpoint

log = logging.getLogger(__name__)


class GuardNonFinite:
    """Trainer mixin: a NaN or infinite loss or gradient never reaches the weights.

    `on_non_finite` (the recipe key) says what happens instead. `stop`, the
    default, ends the run with one line naming the last good checkpoint:
    training on would write NaN weights into the next checkpoint and the
    final model. `skip` drops that step's gradients before the optimizer
    runs, so AdamW leaves the weights and its moments as they were (zeroed
    gradients would still move them through momentum); each skip is logged
    and the running count goes into the log history as `skipped_steps`,
    which a resumed run continues from. DeepSpeed keeps gradients to itself,
    so under it only the loss is checked.

    fp16 training (GPUs without bf16, such as the T4 and V100) runs a
    gradient scaler whose first steps overflow by design: it finds the
    inf/NaN while unscaling, skips the optimizer step itself and lowers the
    scale. Such a step is no fault; it is counted as `scaler_skipped_steps`.
    The guard acts on a non-finite loss, and on a non-finite gradient the
    scaler did not catch (it would reach the weights).
    """

    on_non_finite = "stop"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped_steps: int | None = None  # read back from the log history when first needed
        self.scaler_skipped_steps: int | None = None
        self._bad_loss: Any = None  # the first non-finite micro-batch loss since the last optimizer step (on device)
        self._trained: list[Any] | None = None  # the parameters that train, listed at the first check (after prepare)
        self.add_callback(_gradient_check(self))

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        loss = super().training_step(*args, **kwargs)
        # Kept on the device: reading the value here would wait for the GPU at every micro-batch, so the CPU could
        # not queue the next one. The check reads it once, before the optimizer step.
        value = loss.detach()
        first = self._bad_loss if self._bad_loss is not None else torch.zeros_like(value)
        self._bad_loss = torch.where(torch.isfinite(first) & ~torch.isfinite(value), value, first)
        return loss

    def check_gradients(self) -> None:
        """Before each optimizer step: stop, or drop every gradient, if a loss or gradient since the last one is
        not finite (one read from the device per optimizer step).

        A step the fp16 gradient scaler skips itself is only counted.
        """
        import torch

        bad_loss, self._bad_loss = self._bad_loss, None
        if self.scaler_will_skip():
            self.scaler_skipped_steps = self._so_far("scaler_skipped_steps") + 1
            log.info("step %d: the fp16 gradient scaler found inf/NaN gradients; it skips this step and lowers its "
                     "scale (%d so far)", self.state.global_step + 1, self.scaler_skipped_steps)
            return
        if self._trained is None:  # once: walking a PEFT model's ~1,300 modules costs milliseconds of host time
            self._trained = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in self._trained if p.grad is not None]
        found = []  # [loss, gradient norm], as far as they are known (DeepSpeed keeps gradients to itself)
        if bad_loss is not None:
            found.append(bad_loss.float().reshape(()))
        if grads:
            found.append(gradient_norm(grads).to(found[0].device if found else None))
        if not found:
            return
        values = torch.stack(found)
        bad = (~torch.isfinite(values)).any().float()
        if self.accelerator.num_processes > 1:  # sharded gradients (FSDP): every rank must decide the same
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bad.item():
            return
        read = values.tolist()  # only on the bad path: a second read does not matter here
        loss = read[0] if bad_loss is not None else 0.0
        norm = read[-1] if grads else None
        if self.on_non_finite == "stop":
            import math

            self._stop(f"the training loss became {loss}" if not math.isfinite(loss)
                       else f"the gradient norm became {norm}", cudnn_hint(self.args))
        for p in self.model.parameters():
            p.grad = None
        self.skipped_steps = self._skipped_so_far() + 1
        log.warning("step %d: the loss or gradient norm is not finite (loss %s, gradient norm %s); skipped this "
                    "optimizer step (on_non_finite: skip; %d skipped so far)", self.state.global_step + 1, loss, norm,
                    self.skipped_steps)

    def scaler(self) -> Any:
        """The active gradient scaler (fp16), or None."""
        scaler = getattr(self.accelerator, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def scaler_will_skip(self) -> bool:
        """Whether the gradient scaler found inf/NaN while unscaling this step's gradients, so it skips the step.

        torch's GradScaler records what `unscale_` found per optimizer; the
        Trainer unscales (to clip or measure the norm) before this point, and
        `scaler.step` skips exactly when that record is non-zero (accelerate's
        `optimizer_step_was_skipped` misses the skips of fused optimizers,
        which take the record into their own kernel).
        """
        scaler = self.scaler()
        if scaler is None:
            return False
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps the optimizer
        found = scaler._per_optimizer_states.get(id(optimizer), {}).get("found_inf_per_device", {})
        return sum(float(v) for v in found.values()) > 0

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.on_non_finite == "skip":
            logs = {**logs, "skipped_steps": self._skipped_so_far()}
        if self.scaler() is not None:
            logs = {**logs, "scaler_skipped_steps": self._so_far("scaler_skipped_steps")}
        super().log(logs, *args, **kwargs)

    def _skipped_so_far(self) -> int:
        return self._so_far("skipped_steps")

    def _so_far(self, key: str) -> int:
        if getattr(self, key) is None:  # a resumed run continues the count its checkpoint logged
            setattr(self, key, max((int(h.get(key, 0)) for h in self.state.log_history), default=0))
        return getattr(self, key)

    def _stop(self, what: str, hint: str = "") -> None:
        good = last_checkpoint(Path(self.args.output_dir))
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
        raise UserError(f"{what} at step {self.state.global_step + 1}; {where}. Lower the learning rate (or check "
                        f"the data) and rerun with --resume, or set on_non_finite: skip in the recipe{hint}")


def cudnn_hint(args: Any) -> str:
    """Where a gradient turned non-finite on a CUDA GPU under padding that allows it, the known cause: cuDNN's
    attention backward at lengths of 64 modulo 128 (`placement.cudnn_safe` says more); else ""."""
    multiple = getattr(args, "pad_to_multiple_of", None)
    if not on_cuda(args) or placement.cudnn_safe(multiple):
        return ""
    return (f". With pad_to_multiple_of {multiple or 'null'} on an H100 or H200, cuDNN's attention is a known cause: "
            "it returns NaN gradients for left-padded batches 64 modulo 128 tokens long (pytorch#196678); pad to a "
            "multiple of 128, the default on a GPU")


def on_cuda(args: Any) -> bool:
    """Whether the trainer with `args` trains on a CUDA GPU."""
    return getattr(getattr(args, "device", None), "type", None) == "cuda"


def gradient_norm(grads: list[Any]) -> Any:
    """The 2-norm of all the gradients together, as torch's `clip_grad_norm_` computes it: on a GPU its foreach
    kernels take the tensors in a few launches, not one each (192 for GPT-2 Medium with LoRA on every layer). fp16
    gradients are read in float32: their norm past 65,504 would read as infinite."""
    import torch

    grads = [g.detach().float() if g.dtype == torch.float16 else g.detach() for g in grads]
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch 2.6 and later
    if total is None:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).float()
    # FSDP 2's gradients are DTensors, sharded over a device mesh: their norm is one too, whose value needs a reduction
    # over the mesh (`full_tensor`), as transformers' Trainer reads it; one norm per mesh, as a norm spans only one.
    from torch.distributed.tensor import DTensor

    by_mesh: dict[Any, list[Any]] = {}
    for g in grads:
        by_mesh.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    norms = [total(group) for group in by_mesh.values()]
    norms = [norm.full_tensor() if isinstance(norm, DTensor) else norm for norm in norms]
    return (norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))).float()


def _gradient_check(trainer: GuardNonFinite) -> Any:
    """A callback at the one point transformers offers before `optimizer.step()` (imported late: see cli)."""
    from transformers import TrainerCallback

    class CheckGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trainer.check_gradients()

    return CheckGradients()
