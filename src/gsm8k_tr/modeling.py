"""Loading a causal LM and its tokenizer, safetensors only, and its stop and pad tokens.

Everything here works for any Hugging Face causal LM; the GPT-2 specifics
(no pad token, `<|stop|>`, Conv1D layers, learned absolute positions) are
handled where they arise rather than assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from gsm8k_tr import hub
from gsm8k_tr.config import ModelConfig
from gsm8k_tr.errors import UserError, one_line
from gsm8k_tr.gguf_convert import read_once, unmark_dequantized
from gsm8k_tr.placement import fused_activation

log = logging.getLogger(__name__)


def require_torch() -> None:
    """One line where transformers will not use the installed torch. transformers turns PyTorch off below its own
    floor (2.6 in 5.24) with a logged warning, and its model and trainer classes then fail deep inside a stage with a
    traceback; a newer transformers may raise that floor past a torch that pip left in place."""
    from importlib import metadata

    from transformers.utils import is_torch_available

    if is_torch_available():
        return
    try:
        found = metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise UserError("torch is not installed: install it (pip install torch, or the build for your GPU that "
                        "pytorch.org names) and run again") from None
    raise UserError(f"transformers {metadata.version('transformers')} cannot use torch {found}: it needs a newer one; "
                    "upgrade torch (pip install --upgrade torch) and run again")


def resolve_name(name_or_path: str) -> str:
    """A loadable path or Hub id; `builtin:NAME` models are built once and cached."""
    if name_or_path.startswith("builtin:"):
        from gsm8k_tr import builtin

        return str(builtin.resolve(name_or_path))
    return name_or_path


def load_source(cfg: ModelConfig, path: str | None) -> tuple[str, dict[str, Any]]:
    """What to load and how: the recipe's model (revision, GGUF file) or a local `path` (a stage output)."""
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if path is not None:
        return path, kwargs
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return resolve_name(cfg.name_or_path), kwargs


# (Hub id, revision asked for, cache folder) -> the commit it resolved to first in this process, or None
_COMMITS: dict[tuple[str, str | None, str], str | None] = {}


def _cache_key(name: str, revision: str | None) -> tuple[str, str | None, str]:
    from huggingface_hub import constants

    return name, revision, str(constants.HF_HUB_CACHE)


def hub_commit(cfg: ModelConfig) -> str | None:
    """The commit the recipe's Hub model was loaded at in this process (None: not a Hub model, or not loaded)."""
    return _COMMITS.get(_cache_key(cfg.name_or_path, cfg.revision))


def pin_commit(cfg: ModelConfig, commit: str) -> None:
    """Load the recipe's Hub model at `commit` from now on in this process (a resumed stage: its checkpoint's)."""
    _COMMITS[_cache_key(cfg.name_or_path, cfg.revision)] = commit


def _pinned(cfg: ModelConfig, path: str | None) -> tuple[str, dict[str, Any]]:
    """`load_source`, with a Hub model's revision pinned to the commit it first resolved to in this process.

    A stage loads its base model more than once (tokenizer, model, then again to merge the adapter, hours later), and
    a branch such as `main` can move in between: every load takes the commit of the first, which the adapter and the
    manifest record (`base_model_revision`), read from where transformers puts `config.json` (`snapshots/COMMIT/`).
    """
    source, kwargs = load_source(cfg, path)
    if path is not None or "gguf_file" in kwargs or Path(source).exists():  # a folder (a builtin: model's, built)
        return source, kwargs
    if hub.names_a_path(source):  # a mistyped path (runs/x/sft): no Hub id, so never asked of the Hub
        raise UserError(f"cannot load {source!r}: no such folder (from {Path.cwd()}); give a folder or a Hub id")
    key = _cache_key(cfg.name_or_path, cfg.revision)
    if key not in _COMMITS:
        from transformers.utils.hub import cached_file, extract_commit_hash

        hub.before_loading(source)
        try:
            _COMMITS[key] = extract_commit_hash(cached_file(source, "config.json", revision=cfg.revision), None)
        except (OSError, ValueError) as error:  # every load needs config.json: the Hub's retries once, not twice
            raise UserError(f"cannot load {source!r}: {one_line(error)}{hub.failure_note(source)}") from None
    return source, {**kwargs, "revision": _COMMITS[key] or kwargs.get("revision")}


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> Any:
    """The tokenizer of `path` (default: the recipe's model)."""
    from transformers import AutoTokenizer

    source, kwargs = _pinned(cfg, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer of {source!r}: {load_failure(error)}") from None
    return require_vocabulary(tokenizer, source)


def require_vocabulary(tokenizer: Any, source: str) -> Any:
    """The tokenizer, unless it is empty: from a folder without tokenizer files transformers builds one from
    config.json alone, without a word, and every text would read as unknown tokens."""
    if len(tokenizer) < 2:
        raise UserError(f"{source!r} has no tokenizer files (tokenizer.json, vocab.json, ...); save the tokenizer "
                        "beside the model: tokenizer.save_pretrained(that folder)")
    return tokenizer


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


def load_failure(error: BaseException) -> str:
    """Why loading failed, in one line; for a model that needs its own Python code, the recipe key that allows it
    (transformers says how on a second line, which one line leaves out)."""
    text = one_line(error)
    if "contains custom code" in text or "references custom code" in text:
        text += " It runs Python from the model's files: set model.trust_remote_code=true only for code you trust"
    return text


def load_model(cfg: ModelConfig, path: str | None = None, dtype: Any = None) -> Any:
    """The causal LM at `path` (default: the recipe's model), in float32 unless `dtype` says otherwise, whole
    (`whole_weights`): under DeepSpeed ZeRO-3 the trainer's engine splits the one it trains.

    Training keeps float32 weights and the trainer's autocast supplies
    bf16/fp16 where the device has it: mixed precision needs fp32 master
    weights, and at 355M the copy costs 1.4 GB. Inference passes the dtype
    of its device (`placement.inference_dtype`).
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    source, kwargs = _pinned(cfg, path)
    gguf = "gguf_file" in kwargs
    if not gguf:
        refuse_pickle(Path(source))
    try:
        # A GGUF file's header parsed once, for config and weights
        with read_once() if gguf else nullcontext(), whole_weights():
            config = AutoConfig.from_pretrained(source, **kwargs)  # fused: GPT-2's tanh GELU as one kernel (placement)
            fused = fused_activation(getattr(config, "activation_function", None))
            # safetensors only, except for a GGUF file (which is not pickle either). Hub kernels off, as every
            # release before transformers 5.25 loads: 5.25 turns them on by default, replacing layers (GPT-2's GELU,
            # Llama's RMSNorm), where it maps a kernel for the device, with kernels it fetches from the Hub at load,
            # which an offline machine cannot and no figure here was measured with.
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch.float32 if gguf else dtype or torch.float32, use_safetensors=None if gguf else True,
                use_kernels=False, **kwargs, **({"activation_function": fused} if fused else {}))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load model {source!r}: {load_failure(error)}") from None
    except SafetensorError as error:  # a file cut short, or not safetensors
        raise damaged(source, error) from None
    if gguf:
        unmark_dequantized(model)
        if dtype is not None:
            model = model.to(dtype)  # GGUF tensors are unpacked to float32 first
    name_causal_lm_loss(model)
    return model


def damaged(source: str | Path, error: BaseException) -> UserError:
    """The one line for weights that safetensors cannot read (a file cut short, or not safetensors)."""
    return UserError(f"cannot load {str(source)!r}: a weights file is damaged ({one_line(error)}); "
                     "download or save it again")


def merged_adapter(model: Any, adapter: Path) -> Any:
    """`model` with the LoRA adapter in the folder `adapter` merged in: safetensors only, a damaged file one line."""
    from peft import PeftModel
    from safetensors import SafetensorError

    refuse_pickle(adapter)  # PEFT would unpickle adapter_model.bin when no safetensors file is there
    try:
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except SafetensorError as error:
        raise damaged(adapter, error) from None


def name_causal_lm_loss(model: Any) -> None:
    """Name the causal-LM loss on models whose class name does not (GPT2LMHeadModel).

    transformers picks a model's loss from its class name; for GPT-2's it finds
    none, warns "`loss_type=None` was set in the config but it is
    unrecognized" and uses the causal-LM loss anyway. That loss is the one
    meant, so it is named and the warning goes.
    """
    if getattr(model, "loss_type", "") is None:
        model.loss_type = "ForCausalLM"


def configure_tokens(tokenizer: Any, model: Any, stop_token: str | None) -> str:
    """Make the stop token an ending, never text; give the tokenizer a pad token; clear sampling defaults.

    - The stop token is marked special in the tokenizer, so every decode with
      `skip_special_tokens=True` drops it: TRL's (whose text the rewards
      score), ours, and vLLM's with the saved tokenizer. A tokenizer may
      declare it a plain added token, and its text would then stay in every
      completion after `</cevap>` (strict format 0 for all of them).
    - GPT-2 has no pad token. Padding with the stop token would be harmless
      for masked positions, but a distinct pad keeps "emitted the stop token"
      unambiguous: pad is the first of eos, bos and unk that is not the stop.
    - The model's generation config keeps only its token ids: see
      `reset_generation_config`; its config names the same ending ids.
    Returns the stop token.
    """
    stop, stop_id = stop_token_id(tokenizer, stop_token)
    _mark_special(tokenizer, stop, stop_id)
    if tokenizer.pad_token in (None, stop):  # GPT-2 has none; some tokenizers pad with their stop token
        candidates = [t for t in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token) if t not in (None, stop)]
        tokenizer.pad_token = candidates[0] if candidates else stop
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    reset_generation_config(model, [stop_id, *[i for i in eos if i != stop_id]], tokenizer.pad_token_id)
    # The model's config ends where its generation config does: transformers' Trainer otherwise aligns it with the
    # tokenizer's eos (`align_special_tokens`; the stop token once SFT has saved it as eos) and says so at every GRPO
    # run, and a saved config.json would name another ending than generation_config.json.
    model.config.get_text_config().eos_token_id = model.generation_config.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return stop


def stop_token_id(tokenizer: Any, stop_token: str | None) -> tuple[str, int]:
    """The stop token (`stop_token`, else the tokenizer's eos) and its id; one line when it is not a single token."""
    stop = stop_token or tokenizer.eos_token
    if not stop:
        raise UserError("the tokenizer has no eos token; set model.stop_token to the token that ends an answer")
    ids = tokenizer.encode(stop, add_special_tokens=False)
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        raise UserError(f"model.stop_token {stop!r} is not a single token of this tokenizer (eos is "
                        f"{tokenizer.eos_token!r}); set model.stop_token to one of its special tokens, or null for eos")
    return stop, ids[0]


def _mark_special(tokenizer: Any, token: str, token_id: int) -> None:
    """Mark an existing token special (its id is unchanged), and check that decoding now drops it."""
    from transformers import AddedToken

    if tokenizer.decode([token_id], skip_special_tokens=True) == "":
        return
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    if tokenizer.convert_tokens_to_ids(token) != token_id or tokenizer.decode([token_id], skip_special_tokens=True):
        raise UserError(f"cannot make the stop token {token!r} special in this tokenizer ({type(tokenizer).__name__}), "
                        "so its text would reach the rewards; use a fast tokenizer (tokenizer.json)")
    # Once a process: a pipeline loads the tokenizer at every stage, and each time it is the same news.
    (log.debug if token in _MARKED else log.info)(
        "the stop token %r is a plain token in this tokenizer; marked it special so decoded text never holds it", token)
    _MARKED.add(token)


_MARKED: set[str] = set()  # stop tokens said to be marked special in this process


# Fields of a GenerationConfig that change which tokens come out (the ones worth a word when dropped).
DECODING_FIELDS = frozenset(
    "do_sample temperature top_k top_p min_p typical_p epsilon_cutoff eta_cutoff repetition_penalty "
    "encoder_repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids "
    "force_words_ids num_beams num_beam_groups diversity_penalty penalty_alpha max_length max_new_tokens min_length "
    "min_new_tokens early_stopping num_return_sequences suppress_tokens begin_suppress_tokens forced_bos_token_id "
    "forced_eos_token_id exponential_decay_length_penalty sequence_bias guidance_scale renormalize_logits "
    "dola_layers".split())


def reset_generation_config(model: Any, eos_token_id: list[int], pad_token_id: int | None) -> dict[str, Any]:
    """Replace the model's generation config by one with its token ids only; return the fields dropped.

    Hub models often ship `repetition_penalty`, `no_repeat_ngram_size`,
    `top_k`/`top_p`, `temperature`, `do_sample` or `num_beams` in
    `generation_config.json`, and transformers fills every field a
    `generate` call leaves unset from it. Evaluation and GRPO rollouts would
    then decode differently from what the recipe says (and arithmetic, which
    repeats numbers, would be penalised). With this, the recipe's `eval` and
    `grpo` sections are the only source of sampling settings.
    """
    from transformers import GenerationConfig

    old = model.generation_config
    keep = {"eos_token_id": eos_token_id, "pad_token_id": pad_token_id, "bos_token_id": old.bos_token_id,
            "decoder_start_token_id": old.decoder_start_token_id}
    dropped = {k: v for k, v in old.to_diff_dict().items() if k in DECODING_FIELDS}
    model.generation_config = GenerationConfig(**{k: v for k, v in keep.items() if v is not None})
    if dropped:
        log.info("ignoring the model's generation_config %s: sampling settings come from the recipe only", dropped)
    return dropped


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """How many tokens a text takes, without special tokens (for the context budget)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_length(model: Any) -> int:
    """How many tokens the model can attend to (prompt plus completion)."""
    return config_context_length(model.config, type(model).__name__)


def config_context_length(config: Any, name: str = "the model") -> int:
    """How many tokens a model with this config can attend to."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UserError(f"cannot tell the context length of {name}; it has no n_positions or max_position_embeddings "
                    "(add max_position_embeddings: N to its config.json, N the longest input it was trained on)")


def unwrapped(model: Any) -> Any:
    """The model itself, or the one a PEFT model wraps."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def runs_on_static_cache(model: Any) -> bool:
    """Whether the model (or the one a PEFT model wraps) decodes from a static KV cache in one compiled graph.

    Not where its class says no (transformers' `_can_compile_fullgraph`): GPT-Neo's local attention takes the
    query's position from the length of the keys, which a static cache holds at its full size. Nor where its static
    cache has sliding-window layers (Gemma-2, Mistral, a Qwen2 with `use_sliding_window`): transformers counts their
    tokens in a Python int, which torch's compiler guards on, so every decoding step is a new graph (a 2-layer
    Gemma-2 recompiled 37 times in one test, 56 s against 0.3 s eager; `tests/infer/test_model_families.py`).
    transformers keeps that count an int on purpose (its issue 44609)."""
    base = unwrapped(model)
    return bool(getattr(base, "_can_compile_fullgraph", False)) and not has_sliding_static_layers(base.config)


def has_sliding_static_layers(config: Any) -> bool:
    """Whether transformers' static KV cache for `config` holds a sliding-window layer (no memory is taken: the
    layers allocate on their first update)."""
    from transformers import StaticCache

    cache = StaticCache(config=config.get_text_config(decoder=True), max_cache_len=1)
    return any(getattr(layer, "is_sliding", False) for layer in cache.layers)


def meta_model(config: Any) -> Any:
    """The model a config describes, with no storage (the meta device): its modules and shapes, nothing loaded."""
    import torch
    from transformers import AutoModelForCausalLM

    with whole_weights(), torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@contextmanager
def whole_weights() -> Iterator[None]:
    """Models built or loaded inside are whole, also under a DeepSpeed ZeRO-3 launch.

    Once accelerate has selected a ZeRO-3 plugin (a stage's TRL config does),
    transformers builds and loads every model inside `deepspeed.zero.Init`,
    which splits each parameter across the processes as it is made, whatever
    `zero3_init_flag` says. The memory plan's meta model then had empty 1-D
    weights, and so had the base the adapter is merged into after training.
    The pipeline's GRPO stage, loading its model after SFT's config had
    selected the plugin, hung: zero.Init's broadcasts ran in the main
    process while the others waited for it to finish loading. Inside,
    transformers is told that no DeepSpeed config is active, as when a stage
    loads its model before its TRL config exists; the trainer's engine then
    splits the model it trains.
    """
    from transformers.integrations import deepspeed

    held = deepspeed._hf_deepspeed_config_weak_ref  # what `is_deepspeed_zero3_enabled` reads
    active = held() if held is not None else None
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None:
            deepspeed.set_hf_deepspeed_config(active)


def is_model_folder(path: Path) -> bool:
    """A folder with a model config and safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))
