"""Decoding steps as one compiled graph: transformers' static KV cache and its automatic `torch.compile`.

On a GPU, a decoding step of GPT-2 Medium launches a few hundred small
kernels from Python (24 blocks of attention, MLP, norms and adds), each a few
microseconds of work for 64 rows: the card waits on the host. transformers
compiles the model's forward for the decoding steps when the cache is static
(a fixed shape) and `compile_config` says how; with `mode="reduce-overhead"`
torch replays each step as one CUDA graph. TRL's GRPO turns that off
(`disable_compile=True` in its GenerationConfig); `decoding: compiled` in a
recipe, and `auto` on CUDA (`placement.decoding`), turns it on for the
rollouts and every evaluation: on an H200, 5 ms a GPT-2 Medium decoding step
of 64 rows against 16 ms eager.

Compiled code is specialised to its shapes, and a static cache is as long as
the prompt plus `max_new_tokens`. Prompts are padded on the left to a
multiple of `PROMPT_MULTIPLE` tokens, so a run sees a handful of lengths,
and transformers sizes each new cache to the longest it has built for the
model so far (`GenerationMixin._prepare_static_cache`), so the graph compiled
for the longest prompts serves every shorter one: a run compiles once per new
longest bucket and batch size. Extra left padding is masked, and `generate`
derives positions from the mask, so the tokens are today's
(`tests/infer/test_compiled_decoding.py`). The first call of each shape pays
the compile: about 12 s for the tiny model on 2 CPU cores, 15-33 s for GPT-2
Medium on an H200.
"""

from __future__ import annotations

import copy
from typing import Any

PROMPT_MULTIPLE = 64  # tokens; GSM8K-TR's prompts of 100-300 tokens fall in 2-5 lengths
DEVICES_TRANSFORMERS_COMPILES_ON = ("cuda", "xpu", "neuron", "tpu")


def generation_config(config: Any, device: Any) -> Any:
    """A copy of `config` that decodes with a static cache and the compiled forward on `device`.

    CUDA graphs on a GPU (`reduce-overhead`); elsewhere plain compiled code,
    which transformers runs only when asked for every device.
    """
    from transformers import CompileConfig

    kind = getattr(device, "type", str(device))
    compiled = copy.deepcopy(config)
    compiled.cache_implementation = "static"
    compiled.disable_compile = False
    compiled.compile_config = CompileConfig(dynamic=False, mode="reduce-overhead" if kind == "cuda" else "default")
    if kind not in DEVICES_TRANSFORMERS_COMPILES_ON:
        compiled.compile_config._compile_all_devices = True  # transformers' own switch for other devices
    return compiled
