"""Loading a causal LM and its tokenizer, the stop and pad tokens, LoRA, and precision.

Everything here works for any Hugging Face causal LM; the GPT-2 specifics
(no pad token, `<|stop|>`, Conv1D layers, learned absolute positions) are
handled where they arise rather than assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsm8k_tr.config import LoraConfig, ModelConfig
from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def resolve_name(name_or_path: str) -> str:
    """A loadable path or Hub id; `builtin:NAME` models are built once and cached."""
    if name_or_path.startswith("builtin:"):
        from gsm8k_tr import builtin

        return str(builtin.resolve(name_or_path))
    return name_or_path


def _source(cfg: ModelConfig, path: str | None) -> tuple[str, dict[str, Any]]:
    """What to load and how: the recipe's model (revision, GGUF file) or a local `path` (a stage output)."""
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if path is not None:
        return path, kwargs
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return resolve_name(cfg.name_or_path), kwargs


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> Any:
    """The tokenizer of `path` (default: the recipe's model)."""
    from transformers import AutoTokenizer

    source, kwargs = _source(cfg, path)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer of {source!r}: {_one_line(error)}") from None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def refuse_pickle(folder: Path) -> None:
    """A local model folder with pickle weights and no safetensors is refused: unpickling can run code."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(f"{folder} holds weights only as pickle ({', '.join(pickled[:3])}), which can run code when "
                        "loaded; gsm8k-tr loads safetensors only. Convert them where you trust the file "
                        "(model.save_pretrained(dir, safe_serialization=True)) and point at that folder")


def load_model(cfg: ModelConfig, path: str | None = None) -> Any:
    """The causal LM at `path` (default: the recipe's model), in float32.

    Weights stay float32 and the trainer's autocast supplies bf16/fp16 where the
    device has it: mixed precision needs fp32 master weights, and at 355M the
    copy costs 1.4 GB.
    """
    import torch
    from transformers import AutoModelForCausalLM

    source, kwargs = _source(cfg, path)
    gguf = "gguf_file" in kwargs
    if not gguf:
        refuse_pickle(Path(source))
    try:
        # safetensors only, except for a GGUF file (which is not pickle either)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32,
                                                     use_safetensors=None if gguf else True, **kwargs)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load model {source!r}: {_one_line(error)}") from None
    if gguf:
        _unmark_dequantized_gguf(model)
    return model


def _unmark_dequantized_gguf(model: Any) -> None:
    """A GGUF file unpacked into dense float weights is an ordinary model: say so.

    transformers keeps the GGUF quantizer attached even when it dequantized
    every tensor (no packed-matmul kernel on CPU), and the Trainer then
    refuses to train it. Packed weights would not be floating point; those
    stay marked, and the Trainer's own error explains them.
    """
    if getattr(model, "hf_quantizer", None) is None or not all(p.is_floating_point() for p in model.parameters()):
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def configure_tokens(tokenizer: Any, model: Any, stop_token: str | None) -> str:
    """Make generation stop on the model's stop token and give the tokenizer a pad token.

    GPT-2 has no pad token. Padding with the stop token would be harmless for
    masked positions, but a distinct pad keeps "emitted the stop token"
    unambiguous, so pad is the eos token where that differs from the stop
    token. Returns the stop token.
    """
    stop = stop_token or tokenizer.eos_token
    if not stop:
        raise UserError("the tokenizer has no eos token; set model.stop_token to the token that ends an answer")
    ids = tokenizer.encode(stop, add_special_tokens=False)
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        raise UserError(f"model.stop_token {stop!r} is not a single token of this tokenizer (eos is "
                        f"{tokenizer.eos_token!r}); set model.stop_token to one of its special tokens, or null for eos")
    stop_id = ids[0]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token not in (None, stop) else (tokenizer.unk_token or stop)
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    model.generation_config.eos_token_id = [stop_id, *[i for i in eos if i != stop_id]]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return stop


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """How many tokens a text takes, without special tokens (for the context budget)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_length(model: Any) -> int:
    """How many tokens the model can attend to (prompt plus completion)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UserError(f"cannot tell the context length of {type(model).__name__}; it has no n_positions or max_position_embeddings")


def lora_config(cfg: LoraConfig, model: Any, dropout: float | None = None) -> Any:
    """PEFT LoRA settings; by default every linear layer of the architecture.

    PEFT's own default for GPT-2 is `c_attn` only. `all-linear` covers
    `nn.Linear` and GPT-2's `Conv1D` and leaves out the LM head; Conv1D stores
    its weight transposed, hence `fan_in_fan_out`.
    """
    import peft
    from transformers.pytorch_utils import Conv1D

    conv1d = any(isinstance(module, Conv1D) for module in model.modules())
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout if dropout is None else dropout,
        target_modules=cfg.target_modules or "all-linear",
        fan_in_fan_out=conv1d,
        bias="none",
        task_type="CAUSAL_LM",
    )


def precision(section: dict[str, Any], name: str) -> dict[str, bool]:
    """bf16 where the GPU has it, else fp16 on a GPU, else fp32 (TRL would force bf16 everywhere)."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if section.get("bf16") and not bf16_ok:
        raise UserError(f"recipe key '{name}.bf16' is true but this machine has no bf16 GPU; remove it (fp32 is used on CPU)")
    if section.get("fp16") and not cuda:
        raise UserError(f"recipe key '{name}.fp16' is true but there is no GPU; remove it (fp32 is used on CPU)")
    if section.get("bf16") is None and section.get("fp16") is None:
        return {"bf16": bf16_ok, "fp16": cuda and not bf16_ok}
    return {"bf16": bool(section.get("bf16")), "fp16": bool(section.get("fp16"))}


def device_name() -> str:
    """A short description of the device training runs on."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return "cpu"


def is_model_folder(path: Path) -> bool:
    """A folder with a model config and safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))
