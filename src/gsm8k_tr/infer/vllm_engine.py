"""vLLM, the optional GPU generation engine: checks, GRPO settings and evaluation rollouts.

vLLM ships as the `vllm` extra (`pip install -e .[vllm]`) and needs a CUDA GPU.
It cannot serve LoRA adapters on GPT-2, so both paths use merged weights:
- GRPO (`grpo.use_vllm: true`): TRL starts vLLM from the SFT output's merged
  folder and, before each generation step, merges the LoRA adapter into the
  policy, pushes the merged weights into vLLM and unmerges again
  (`trl.generation.vllm_generation.VLLMGeneration.sync_weights`). `colocate`
  mode shares the training GPU; `server` mode talks to
  `trl vllm-serve --model runs/x/sft/merged` on other GPUs.
- `evaluate --backend vllm`: an adapter is merged into a temporary folder
  first; a stage output's `merged/` folder is used as it is.
Every vLLM call also stops on the model's stop token (`<|stop|>` for the
Turkish instruct model), which vLLM would otherwise not know about.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError
from gsm8k_tr.infer.generation import Completion, completions
from gsm8k_tr.placement import require_vllm


def grpo_settings(values: dict[str, Any], stop_ids: list[int]) -> dict[str, Any]:
    """Recipe `grpo` values, checked for vLLM and made to stop on the model's stop token."""
    if not values.get("use_vllm"):
        return values
    mode = values.get("vllm_mode", "colocate")
    if mode not in ("colocate", "server"):
        raise UserError(f"recipe key 'grpo.vllm_mode' must be colocate or server, got {mode!r}")
    if mode == "colocate":
        require_vllm("grpo.use_vllm (colocate mode)", "set grpo.use_vllm=false to generate with transformers")
    elif importlib.util.find_spec("vllm") is None:
        raise UserError("grpo.use_vllm (server mode) needs the vllm extra on this machine too: pip install -e .[vllm]")
    kwargs = dict(values.get("generation_kwargs") or {})
    kwargs["stop_token_ids"] = sorted(set(kwargs.get("stop_token_ids", [])) | set(stop_ids))
    return {**values, "generation_kwargs": kwargs}


@contextmanager
def model_folder(model: Any, tokenizer: Any, source: str) -> Iterator[str]:
    """A folder (or Hub id) vLLM can load: `source` itself when it is a full model, else merged weights saved for it."""
    path = Path(source)
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")) and not (path / "adapter_config.json").exists():
        yield str(path)
        return
    if not path.exists() and not source.startswith("builtin:"):
        yield source  # a Hub id: vLLM downloads it itself
        return
    with tempfile.TemporaryDirectory(prefix="gsm8k-tr-vllm-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        yield tmp


def complete_with_vllm(folder: str, tokenizer: Any, prompts: list[str], max_new_tokens: int, temperature: float,
                       samples: int, seed: int, stop_ids: list[int],
                       gpu_memory_utilization: float = 0.85) -> list[list[Completion]]:
    """`samples` completions per prompt with vLLM, in the prompts' order.

    The model folder's own generation_config.json is ignored
    (`generation_config="vllm"`): the arguments are the only sampling
    settings. The text is decoded from the token ids with our tokenizer, cut
    before the stop token: vLLM keeps a stop token's text when the tokenizer
    does not call it special.
    """
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, seed=seed, gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=False,
              generation_config="vllm")
    params = SamplingParams(n=samples, temperature=temperature, top_p=1.0, top_k=-1, repetition_penalty=1.0,
                            max_tokens=max_new_tokens, stop_token_ids=stop_ids, seed=seed)
    outputs = llm.generate(prompts, params, use_tqdm=True)
    stops = set(stop_ids)
    found = []
    for out in outputs:
        texts = completions([list(o.token_ids) for o in out.outputs], stops, tokenizer)
        # vLLM says itself whether a sample stopped or ran out of tokens.
        found.append([Completion(c.text, len(o.token_ids), o.finish_reason == "length")
                      for c, o in zip(texts, out.outputs)])
    return found
