"""Batched answers from a model: left padding, length-sorted batches, KV cache, early stop.

One-question-at-a-time `generate` wastes most of a CPU or GPU on Python and
kernel launch overhead. Here prompts are sorted by length (so a batch pads
little), left-padded (so every row's next token sits in the last column;
`generate` derives position ids from the attention mask, so GPT-2's learned
positions stay right), decoded with the KV cache, and a batch ends as soon as
every row has emitted a stop token.

Sampling settings come from the arguments only (see `generation_config`), and
a completion's text ends before its stop token, whatever the tokenizer says
about that token.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

from gsm8k_tr import modeling, placement
from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)

# transformers' `generate` drops an attention mask of all ones (a batch whose prompts are one length: "we will never
# have padding"); then, once a finished row is fed the pad token, GPT-2's forward sees no mask beside a pad id and
# warns that the input may be padded, which it is not. That warning is kept out of such a batch's generation.
_UNPADDED_WARNING = "We strongly recommend passing in an `attention_mask`"


@contextlib.contextmanager
def quiet_unpadded(attention_mask: Any) -> Any:
    """Within the block, transformers' "may be padded" warning is dropped if `attention_mask` has no padding.

    The warning is logged once per process (`warning_once`), so a dropped one is not shown later either; every
    call this project makes passes its mask, so only `generate`'s own dropping of an all-ones mask can cause it.
    """
    if not bool(attention_mask.all()):
        yield
        return
    logger = logging.getLogger("transformers.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_UNPADDED_WARNING)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def quiet_unpadded_calls(model: Any) -> contextlib.AbstractContextManager[Any]:
    """Within the block, each `model.generate` call runs under `quiet_unpadded` of its own attention mask: for
    callers that build the call themselves (TRL's rollouts, where a batch of one group repeats one prompt and so has
    no padding). An instance attribute shadows the method for the block and is removed after."""
    method = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attention_mask")
        with quiet_unpadded(mask) if mask is not None else contextlib.nullcontext():
            return method(*args, **kwargs)

    return patch.object(model, "generate", generate)


@dataclass
class Completion:
    """One generated answer."""

    text: str
    tokens: int  # generated tokens, the stop token included
    truncated: bool  # hit max_new_tokens before a stop token


def stop_ids(model: Any) -> list[int]:
    """The token ids that end an answer (model.generation_config.eos_token_id)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def settings(max_new_tokens: int, temperature: float) -> dict[str, Any]:
    """Every decoding field generation uses, as recorded in metrics.json: greedy, or plain sampling at `temperature`.

    >>> settings(96, 0.0)["do_sample"], settings(96, 0.7)["top_k"]
    (False, 0)
    """
    sampled = temperature > 0
    return {"max_new_tokens": max_new_tokens, "do_sample": sampled, "temperature": temperature if sampled else None,
            "top_k": 0 if sampled else None, "top_p": 1.0 if sampled else None, "num_beams": 1,
            "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "length_penalty": 1.0}


def generation_config(model: Any, pad_token_id: int | None, max_new_tokens: int, temperature: float,
                      samples: int = 1) -> Any:
    """A complete GenerationConfig: the recipe's settings and the model's stop and pad ids, nothing else.

    transformers fills every field a call leaves unset from
    `model.generation_config`; `modeling.configure_tokens` clears that, and
    passing every field here keeps it so for a model that did not go through it.
    """
    from transformers import GenerationConfig

    values = {k: v for k, v in settings(max_new_tokens, temperature).items() if v is not None}
    return GenerationConfig(**values, eos_token_id=stop_ids(model), pad_token_id=pad_token_id, use_cache=True,
                            num_return_sequences=samples)


def completions(rows: list[list[int]], stops: set[int], tokenizer: Any) -> list[Completion]:
    """Cut each generated row at its first stop token; a row without one ran out of tokens.

    The stop token is counted but never decoded, so its text cannot reach a
    grader or a prediction even when the tokenizer calls it a plain token.
    """
    found = []
    for row in rows:
        end = next((i for i, token in enumerate(row) if token in stops), None)
        kept = row if end is None else row[:end]
        found.append(Completion(tokenizer.decode(kept, skip_special_tokens=True), len(row) if end is None else end + 1,
                                end is None))
    return found


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             temperature: float = 0.0, samples: int = 1, seed: int = 0, progress: Any = None,
             synced_gpus: bool = False, decoding: str = "auto", journal: Any = None) -> list[list[Completion]]:
    """`samples` completions for each prompt, in the prompts' order.

    `synced_gpus` keeps every process generating until all are done, which a
    model sharded across processes (FSDP, ZeRO-3) needs for its gathers.
    `decoding` is the recipe's (`placement.decoding`). A `journal` (`answer_journal.Journal`) gives the batches an
    earlier call stopped part-way answered, and keeps the new ones.
    """
    if not prompts:
        return []
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    # A private RNG: seeded sampling here must not shift the sampling of a training run that calls it.
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            how = placement.decoding(decoding, device, synced_gpus, batches(len(prompts), batch_size),
                                     modeling.runs_on_static_cache(model))
            return _run_batches(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, samples, progress,
                                device, synced_gpus, how, decoding, journal)
    finally:
        tokenizer.padding_side = side


def batches(prompts: int, batch_size: int) -> int:
    """How many generation batches `generate` runs for `prompts` prompts."""
    return -(-prompts // batch_size)


def _run_batches(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
                 temperature: float, samples: int, progress: Any, device: Any,
                 synced_gpus: bool, how: str, requested: str, journal: Any = None) -> list[list[Completion]]:
    config = generation_config(model, tokenizer.pad_token_id, max_new_tokens, temperature, samples)
    stops = set(stop_ids(model))
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    context = modeling.context_length(model)
    if len(encoded[order[0]]) >= context:
        raise UserError(f"prompt {order[0] + 1} of {len(prompts)} is {len(encoded[order[0]])} tokens and the model's "
                        f"context is {context}: no room for an answer; shorten that question or leave it out")
    results: list[list[Completion]] = [[] for _ in prompts]
    cut = 0
    model.eval()
    for number, start in enumerate(range(0, len(order), batch_size)):
        chunk = order[start:start + batch_size]
        # Past its context a model has no positions left (GPT-2's learned ones would index out of range): a batch
        # whose longest prompt leaves less room than max_new_tokens stops at the context, its answers truncated there.
        room = context - len(encoded[chunk[0]])
        batch_config = config
        if room < max_new_tokens:
            batch_config = copy.deepcopy(config)
            batch_config.max_new_tokens = room
            cut += len(chunk)
        found = journal.kept(number, chunk, len(chunk) * samples) if journal is not None else None
        if found is None:
            rows = [encoded[i] for i in chunk]
            fill = batch_size if start > 0 else None
            try:
                new = _decode(model, tokenizer, rows, batch_config, samples, device, synced_gpus, how, fill)
            except Exception as error:  # torch's compiler failing: the batch again, eager (placement.compile_failed)
                if not placement.compile_failed(requested, how, error):
                    raise
                how = "eager"
                new = _decode(model, tokenizer, rows, batch_config, samples, device, synced_gpus, how, fill)
            found = completions(new, stops, tokenizer)
            if journal is not None:
                journal.add(number, chunk, found)
        for j, index in enumerate(chunk):
            results[index] = found[j * samples:(j + 1) * samples]
        if progress is not None:
            progress(len(chunk))
    if cut:
        log.warning("%d of %d prompts were in batches whose longest prompt leaves fewer than %d new tokens in the "
                    "model's %d-token context: their answers stop at the context (counted as truncated)", cut,
                    len(prompts), max_new_tokens, context)
    return results


def _decode(model: Any, tokenizer: Any, rows: list[list[int]], config: Any, samples: int, device: Any,
            synced_gpus: bool, how: str, fill: int | None) -> list[list[int]]:
    """The new tokens of one batch of prompt `rows` (longest first), `samples` rows each, decoded `how`; a compiled
    decoding fills the batch up to `fill` rows."""
    import torch

    from gsm8k_tr.infer import attention_kernels, compiled_decoding, compiled_step, kv_cache, sampling, stop_check

    if how == "compiled":
        config = compiled_decoding.generation_config(config, device)
    # Compiled code is specialised to the batch size, so a short last batch would compile again (15-33 s for GPT-2
    # Medium on an H200) where a full one replays the graph already built. It is filled up with copies of its first
    # (longest) prompt, whose answers are dropped; greedy copies stop with that row, adding no steps.
    count = len(rows)
    if how != "eager" and fill:
        rows = rows + [rows[0]] * (fill - count)
    # Both compiled paths pad prompts so that a run sees a few shapes; compiled-step brings its own static cache.
    multiple = None if how == "eager" else compiled_decoding.PROMPT_MULTIPLE
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt", pad_to_multiple_of=multiple).to(device)
    # Several samples of a prompt are rows side by side: its prompt prefilled and kept once (not where processes
    # must run the same forwards in step, which the extra prefill would break).
    cache_kind = placement.kv_cache(config.cache_implementation)
    grouped = samples > 1 and not synced_gpus and placement.grouped_attention(device, how, cache_kind)
    cache = (kv_cache.for_generation(model, batch["input_ids"], config)
             if how == "eager" and not grouped and cache_kind == "growing" else {})
    # Sharded weights (`synced_gpus`: FSDP) are gathered into buffers that FSDP keeps and refills for training: first
    # made under inference_mode (a held-out check of the start, before any training step), they would be inference
    # tensors, which the next training step may not write ("Inplace update to inference tensor").
    no_grad = torch.no_grad() if synced_gpus else torch.inference_mode()
    with (no_grad, sampling.one_draw_per_row(config.do_sample and placement.row_sampling(device)),
          attention_kernels.only(placement.decoding_attention(device, how)),
          stop_check.deferred(placement.stop_check(device, synced_gpus) == "deferred"),
          compiled_decoding.room_to_compile() if how in placement.COMPILED_DECODINGS else contextlib.nullcontext(),
          quiet_unpadded(batch["attention_mask"])):
        if how == "compiled-step":
            output = compiled_step.generate(model, batch["input_ids"], batch["attention_mask"], config,
                                            grouped=grouped)
        elif grouped:  # the samples as rows, as `num_return_sequences` lays them out
            each = copy.deepcopy(config)
            each.num_return_sequences = 1
            with kv_cache.growing_cache(model, share_prompts=True, grouped=True):
                output = model.generate(input_ids=batch["input_ids"].repeat_interleave(samples, 0),
                                        attention_mask=batch["attention_mask"].repeat_interleave(samples, 0),
                                        generation_config=each)
        else:
            output = model.generate(**batch, generation_config=config, synced_gpus=synced_gpus, **cache)
    return output[:count * samples, batch["input_ids"].shape[1]:].tolist()
