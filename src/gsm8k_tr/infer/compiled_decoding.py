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

Each new shape (batch size, cache length) is a new graph of the same function
for every model, and so are calls under `inference_mode` (evaluation, the
held-out checks) and under TRL's `no_grad` (the rollouts). torch compiles one
function for at most `torch._dynamo.config.recompile_limit` graphs (8), then
runs every new shape eager, saying so once in its log: the rest of a run would
decode about 3x slower on an H200. The demo's pipeline with `decoding:
compiled` compiled 4 (`TORCH_LOGS=dynamo`): one for the evaluated models, and
three of TRL's forward, which SFT and GRPO put on their model (SFT's held-out
checks, GRPO's rollouts, GRPO's held-out checks). The shipped recipe's GRPO
would compile 2-4 by transformers' cache sizing at the sample's prompt lengths
(the rollouts' cache grows with each longer prompt bucket, the held-out checks
have their own batch size); a prompt filter, pass@k or a recipe that varies
batch sizes adds more. `room_to_compile` raises the limit for the compiled
calls to `RECOMPILE_LIMIT` (`tests/infer/test_compiled_decoding.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PROMPT_MULTIPLE = 64  # tokens; GSM8K-TR's prompts of 100-300 tokens fall in 2-5 lengths
RECOMPILE_LIMIT = 64  # shapes compiled for, per function, before torch runs new ones eager (torch's default: 8)
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


@contextmanager
def room_to_compile() -> Iterator[None]:
    """torch's recompile limit at least `RECOMPILE_LIMIT` for the calls inside (torch reads it when a new shape
    comes), so that compiled decoding compiles each new shape instead of running it eager; 15-33 s a shape on an
    H200, against the rest of a run at the eager speed. `cache_size_limit` is its name in older torch."""
    import torch._dynamo

    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{name: max(RECOMPILE_LIMIT, getattr(torch._dynamo.config, name))}):
        yield
