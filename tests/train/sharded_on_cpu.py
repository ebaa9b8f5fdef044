"""`python -m gsm8k_tr` under `accelerate launch` with the shipped FSDP or DeepSpeed config, on CPU processes (gloo).

accelerate shards only on GPUs. Under an FSDP launch on CPU processes its `AcceleratorState` stays MULTI_CPU; under a
DeepSpeed launch its `PartialState` finds no backend, so every process thinks it is alone (the CLI makes the launch
MULTI_CPU and its device check refuses it, as it should for users). Yet torch's FSDP 2 runs on CPU processes with the
same DTensor weights and gradients as on GPUs, and DeepSpeed's ZeRO with its CPU accelerator, over gloo. Here the
state is switched as accelerate switches a GPU launch (to FSDP with its plugin, or to DEEPSPEED with the DeepSpeed
plugin selected), and the device check is told so, so the tests reach the code that sharded weights and ZeRO's
engine exercise (`test_distributed.py`). NCCL, CUDA streams and mixed precision are what this does not reach.

With SCRIPTED_HELD_OUT (JSON: step → accuracy), each held-out check runs as usual and then reports that accuracy, so
that a test knows which check `eval.grpo_keep_best` keeps.
"""

import json
import os
import runpy


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() == "true"


def main() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    import gsm8k_tr.placement

    built = accelerate.state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
        built(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and _flag("ACCELERATE_USE_FSDP"):
            self.distributed_type = DistributedType.FSDP
        if self.distributed_type == DistributedType.MULTI_CPU and _flag("ACCELERATE_USE_DEEPSPEED"):
            self.distributed_type = DistributedType.DEEPSPEED  # with its plugin, as AcceleratorState does on GPUs
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
        # Each later AcceleratorState() copies PartialState's type over its own, so accelerate writes it there too
        accelerate.state.PartialState._shared_state["distributed_type"] = self.distributed_type
        if fsdp_plugin is not None and getattr(self, "fsdp_plugin", None) is None:  # a later Accelerator's plugin
            self.fsdp_plugin = fsdp_plugin

    accelerate.state.AcceleratorState.__init__ = init
    gsm8k_tr.placement.FSDP_CAPABLE = (*gsm8k_tr.placement.FSDP_CAPABLE, "MULTI_CPU")
    kind = gsm8k_tr.placement.accelerate_kind
    gsm8k_tr.placement.accelerate_kind = lambda partial, cpu: (
        "DEEPSPEED" if partial == "MULTI_CPU" and _flag("ACCELERATE_USE_DEEPSPEED") else kind(partial, cpu))
    scripted = json.loads(os.environ.get("SCRIPTED_HELD_OUT", "null"))
    if scripted is not None:
        from gsm8k_tr.train.held_out import HeldOutCheck

        measure = HeldOutCheck.measure

        def scripted_measure(check: HeldOutCheck) -> dict[str, float]:
            return {**measure(check), "accuracy": scripted[str(check.trainer.state.global_step)]}

        HeldOutCheck.measure = scripted_measure
    runpy.run_module("gsm8k_tr", run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # pytest's doctest collection imports this file too
    main()
