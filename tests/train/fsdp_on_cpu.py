"""`python -m gsm8k_tr` under `accelerate launch --config_file recipes/accelerate/fsdp.yaml` on CPU processes (gloo).

accelerate trains with FSDP only on GPUs: on CPU processes its `AcceleratorState` stays MULTI_CPU (and the CLI's
device check refuses the launch, as it should for users). torch's FSDP 2 itself runs on CPU processes, with the same
DTensor weights and gradients as on GPUs. Here the state is switched to FSDP as accelerate switches a GPU launch, and
the check is told that CPU processes can shard, so the tests reach the code that sharded weights exercise
(`test_distributed.py`). NCCL, CUDA streams and mixed precision are what this does not reach.

With SCRIPTED_HELD_OUT (JSON: step → accuracy), each held-out check runs as usual and then reports that accuracy, so
that a test knows which check `eval.grpo_keep_best` keeps.
"""

import json
import os
import runpy


def main() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    import gsm8k_tr.placement

    built = accelerate.state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        built(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and \
                self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
        if fsdp_plugin is not None and getattr(self, "fsdp_plugin", None) is None:  # a later Accelerator's plugin
            self.fsdp_plugin = fsdp_plugin

    accelerate.state.AcceleratorState.__init__ = init
    gsm8k_tr.placement.FSDP_CAPABLE = (*gsm8k_tr.placement.FSDP_CAPABLE, "MULTI_CPU")
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
