"""Each decoding step as one compiled graph: the forward, the choice of the next token and the stop bookkeeping.

`decoding: compiled` (`infer/compiled_decoding.py`) compiles only the model's
forward; transformers' `generate` runs everything else of a step in Python
between the graph's replays: the 4D attention mask, the logits processors,
the softmax and the draw, the stop check, the new columns of the ids and the
mask. Counted on 2 CPU cores (tiny model, 64 rows, 2026-11-30): 82
operators a step outside the compiled forward, about 60 of them kernels on a
GPU (the rest views), and about 3 of a step's 5 ms. On an H200 transformers'
compiled step took about 5 ms against 0.8-1.3 ms to read the weights and the
KV cache (docs/benchmarks.md).

Here one compiled function does a whole step in place on buffers kept with
the model: it reads the last token from the ids, marks its slot in the
attention mask, runs the model on the static cache, picks the next token
(greedy: the argmax of the float32 logits, as `generate`; sampled: the
exponential race over the softmax at the temperature, the method
`torch.multinomial` itself uses for one sample), writes the pad token for
rows that had stopped, notes new stops and writes the token into the ids.
Python only replays it, and reads the stop flags every `CHECK_EVERY` steps
(on a GPU the one host wait). The output is `generate`'s: the prompts and the
new tokens, rows that stopped padded, as long as the longest row's answer
(the steps run past it are cut), so greedy tokens are transformers' own
(`tests/infer/test_compiled_step.py`); sampled tokens come from
another stream of random numbers. The prefill runs eagerly, as in `generate`.

Only plain decoding is done here: greedy or sampling at a temperature, one
beam, no penalties or filters. A config asking for more (a recipe's
`grpo.top_k`, say) is left to transformers' `generate`, with one log line
naming the setting. The buffers and the static cache are kept on the model
for the next call of the same batch size, sized to the longest cache so far
as transformers sizes its own (`GenerationMixin._prepare_static_cache`), so a
run compiles once per new longest prompt bucket and batch size, and CUDA
graphs replay on the same addresses.

GRPO's rollouts repeat each prompt in consecutive rows, once per completion.
There (`grouped`) the static cache holds each group's prompt once, filled by
one eager forward over the distinct prompts but their last token, and each
row's own tokens after it; the last prompt token is the first compiled step,
and the attention reads a group's prompt once (`infer/grouped_attention.py`).
On 2 CPU cores that is 2.8x the steps per second of per-row copies for the
demo model at the real prompts' lengths, prefill included, with the same
greedy rows (docs/benchmarks.md). Not yet measured on a GPU; a recipe's
`decoding: compiled-step` turns it on (`placement.decoding`).
"""

from __future__ import annotations

import copy
import logging
from contextlib import AbstractContextManager, ExitStack
from typing import Any
from unittest.mock import patch

from gsm8k_tr.infer import grouped_attention
from gsm8k_tr.infer.kv_cache import KEYWORD
from gsm8k_tr.infer.shared_prefill import distinct_rows, fill_distinct, prompt_positions

log = logging.getLogger(__name__)

CHECK_EVERY = 8  # decoding steps between reads of the stop flags: the host waits for the device once per read
SET_FREELY = {"max_new_tokens", "do_sample", "temperature", "pad_token_id", "eos_token_id", "bos_token_id",
              "num_return_sequences", "cache_implementation", "compile_config", "disable_compile",
              "transformers_version", "length_penalty", "early_stopping",  # these two act on beams only
              "_from_model_config"}  # a note that the config was made from the model's: most hub models carry it
NEUTRAL = {"num_beams": (1,), "top_k": (0,), "top_p": (1.0,), "typical_p": (1.0,), "min_p": (0.0,),
           "repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,), "encoder_repetition_penalty": (1.0,),
           "epsilon_cutoff": (0.0,), "eta_cutoff": (0.0,), "min_new_tokens": (0,), "min_length": (0,),
           "num_beam_groups": (1,), "diversity_penalty": (0.0,), "use_cache": (True,), "renormalize_logits": (False,),
           "output_scores": (False,), "output_logits": (False,), "output_attentions": (False,),
           "output_hidden_states": (False,), "return_dict_in_generate": (False,), "remove_invalid_values": (False,)}
# Settings that greedy decoding does not use (generate ignores them too).
SAMPLING_ONLY = {"temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}
_reported: set[str] = set()


def effective_config(model: Any, config: Any) -> Any:
    """`config` with its unset fields taken from the model's own generation config, as `generate` fills them."""
    merged = copy.deepcopy(config)
    merged.update(**model.generation_config.to_dict(), defaults_only=True)
    return merged


def unsupported(config: Any) -> str | None:
    """What in `config` (effective) this loop does not do, or None."""
    if not config.max_new_tokens:
        return "no max_new_tokens"
    for key, value in config.to_diff_dict().items():
        if (key in SET_FREELY or (key in NEUTRAL and value in NEUTRAL[key])
                or (key in SAMPLING_ONLY and not config.do_sample)):
            continue
        return f"{key}={value!r}"
    if config.do_sample and config.temperature is not None and config.temperature <= 0:
        return f"temperature={config.temperature!r}"
    return None


def choose(logits: Any, temperature: float | None) -> Any:
    """Each row's next token from its logits: the argmax of the float32 logits (greedy, None), or a draw at
    `temperature` by the exponential race (the argmax of the probabilities over Exp(1) variates), the method
    `torch.multinomial` uses for one sample, written out so that it compiles into the step's graph."""
    import torch

    logits = logits.float()
    if temperature is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)


def _step(model: Any, ids: Any, mask: Any, position: Any, index: Any, slot: Any, finished: Any, stops: Any,
          cache: Any, pad: int, temperature: float | None) -> None:
    """One decoding step on the call's buffers, in place: the token in slot `index` of the ids goes in (its keys and
    values to slot `slot` of the cache and the mask), the next one is written into slot `index + 1`."""
    import torch

    token = ids.index_select(1, index)
    mask.index_fill_(1, slot, 1)
    logits = model(input_ids=token, attention_mask=mask, position_ids=position[:, None], use_cache=True,
                   **{KEYWORD: cache}).logits[:, -1]
    chosen = torch.where(finished, pad, choose(logits, temperature))
    finished |= torch.isin(chosen, stops)
    ids.index_copy_(1, index + 1, chosen[:, None])
    position.add_(1)
    index.add_(1)
    slot.add_(1)


_compiled: dict[str, Any] = {}


def _compiled_step(device: Any) -> Any:
    """`_step` compiled once per kind of device: replayed as a CUDA graph on a CUDA GPU."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind not in _compiled:
        mode = "reduce-overhead" if kind == "cuda" else "default"
        _compiled[kind] = torch.compile(_step, dynamic=False, mode=mode)
    return _compiled[kind]


class Buffers:
    """A call's state at a fixed shape, kept on the model for the next call of that shape: `rows` rows of `length`
    ids; the cache and the mask hold `length` positions, or with `groups`, each group's prompt (`prompt`
    positions) once and each row's own tokens (`length - prompt`; `infer/grouped_attention.py`)."""

    def __init__(self, model: Any, rows: int, length: int, device: Any, groups: int = 0, prompt: int = 0) -> None:
        import torch
        from transformers import StaticCache

        self.groups, self.prompt = groups, prompt
        # With groups, the layers are made from the first prompts' keys (`fill_prompts`), in the dtype the forward
        # gives them (bf16 under the rollouts' autocast, whatever the embeddings' dtype).
        self.cache = None if groups else StaticCache(config=model.config.get_text_config(decoder=True),
                                                     max_cache_len=length)
        self.ids = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.position = torch.zeros(rows, dtype=torch.long, device=device)
        self.index = torch.zeros((1,), dtype=torch.long, device=device)
        self.slot = torch.zeros((1,), dtype=torch.long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        for tensor in (self.ids, self.mask, self.position, self.index, self.slot, self.finished):
            torch._dynamo.mark_static_address(tensor)  # CUDA graphs read them where they are

    def fill_prompts(self, filled: Any, order: Any, prompt: int) -> None:
        """Each group's prompt into the cache, from `filled` (a cache holding each distinct prompt's first `prompt`
        positions once; `order`: the distinct prompt of each group)."""
        import torch
        from transformers.cache_utils import Cache

        from gsm8k_tr.infer.grouped_attention import GroupedStaticLayer

        if self.cache is None or self.cache.layers[0].prefix_keys.dtype != filled.layers[0].keys.dtype:
            layers = []
            for source in filled.layers:
                shape = (self.groups, *source.keys.shape[1:-2], self.prompt, source.keys.shape[-1])
                keys, values = source.keys.new_zeros(shape), source.values.new_zeros(shape)
                layer = GroupedStaticLayer(keys, values, self.ids.shape[1] - self.prompt)
                own = source.keys.new_zeros((self.ids.shape[0], *shape[1:-2], 1, shape[-1]))
                layer.lazy_initialization(own, own)  # here, not in the compiled step: its addresses stay fixed
                torch._dynamo.mark_static_address(keys)
                torch._dynamo.mark_static_address(values)
                layers.append(layer)
            self.cache = Cache(layers=layers)
        for layer, source in zip(self.cache.layers, filled.layers):
            layer.prefix_keys[:, :, :prompt].copy_(source.keys.index_select(0, order))
            layer.prefix_values[:, :, :prompt].copy_(source.values.index_select(0, order))

    def fits(self, rows: int, length: int, device: Any, groups: int, prompt: int) -> bool:
        """Whether a call of this shape can use these buffers."""
        return (self.ids.shape[0] == rows and self.ids.device == device and self.groups == groups
                and self.prompt >= prompt and self.ids.shape[1] - self.prompt >= length - prompt)

    def reset(self) -> None:
        if not self.groups:
            self.cache.reset()
        elif self.cache is not None:  # the prompts are written over; the rows' own tokens start again
            for layer in self.cache.layers:
                layer.cumulative_length.zero_()
        self.ids.zero_()
        self.mask.zero_()
        self.finished.zero_()


def _buffers(model: Any, rows: int, length: int, device: Any, groups: int = 0, prompt: int = 0) -> Buffers:
    """The model's buffers, reset, where they fit (`Buffers.fits`); else new ones in their place, as long as the
    longest so far (one set at a time, as transformers keeps one static cache: a 64-row cache of GPT-2 Medium at
    896 positions is 5.3 GiB in bf16)."""
    found: Buffers | None = model.__dict__.get("_gsm8k_tr_step_buffers")
    if found is not None and found.fits(rows, length, device, groups, prompt):
        found.reset()
        return found
    same = found is not None and found.ids.shape[0] == rows and found.groups == groups
    longest_prompt = max(prompt, found.prompt if same else 0)
    own = max(length - prompt, found.ids.shape[1] - found.prompt if same else 0)
    model.__dict__["_gsm8k_tr_step_buffers"] = None  # the old cache goes before the new one is allocated
    found = model.__dict__["_gsm8k_tr_step_buffers"] = Buffers(model, rows, longest_prompt + own, device, groups,
                                                               longest_prompt)
    return found


def generate(model: Any, input_ids: Any, attention_mask: Any | None, config: Any, fallback: Any = None,
             grouped: bool = False) -> Any:
    """`model.generate(input_ids, attention_mask, generation_config=config)`'s sequences, each step one compiled
    graph; a config that asks for more than plain decoding goes to `fallback` (default: `model.generate`). With
    `grouped`, consecutive rows with the same prompt keep it once in the cache (`infer/grouped_attention.py`).

    The work runs in inference mode (the buffers are kept for later calls, which may come from a caller in
    inference mode or not); the sequences returned are an ordinary tensor when the caller is not in it."""
    import torch

    effective = effective_config(model, config)
    reason = unsupported(effective)
    if reason is not None:
        if reason not in _reported:
            _reported.add(reason)
            log.info("decoding: compiled-step does not do %s; transformers' generate runs these calls", reason)
        return (fallback or model.generate)(input_ids=input_ids, attention_mask=attention_mask,
                                            generation_config=config)
    with torch.inference_mode():
        sequences = _decode(model, input_ids, attention_mask, effective, grouped)
    return sequences.clone()


def _decode(model: Any, input_ids: Any, attention_mask: Any | None, effective: Any, grouped: bool = False) -> Any:
    """`generate`'s sequences under the `effective` config, which `unsupported` has passed; with `grouped`, each
    group of consecutive rows with the same prompt keeps it once in the cache (`infer/grouped_attention.py`)."""
    import torch

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    copies = effective.num_return_sequences or 1
    if copies > 1:
        input_ids, attention_mask = input_ids.repeat_interleave(copies, 0), attention_mask.repeat_interleave(copies, 0)
    eos = effective.eos_token_id
    stop_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = effective.pad_token_id if effective.pad_token_id is not None else (stop_list[0] if stop_list else 0)
    temperature = float(effective.temperature or 1.0) if effective.do_sample else None
    rows, prompt = input_ids.shape
    new = effective.max_new_tokens
    device = input_ids.device
    stops = torch.tensor(stop_list, dtype=torch.long, device=device)
    found = (distinct_rows(input_ids, attention_mask)
             if grouped and prompt > 1 and grouped_attention.supports(model) else None)
    size = grouped_attention.group_size(found[1]) if found is not None else None
    with ExitStack() as stack:
        if size is None:
            state = _buffers(model, rows, prompt + new, device)
            done = _prefill_rows(model, state, input_ids, attention_mask, temperature, stops)
        else:
            state = _buffers(model, rows, prompt + new, device, groups=rows // size, prompt=prompt - 1)
            done = _prefill_groups(model, state, input_ids, attention_mask, found[0], found[1][::size])
            stack.enter_context(grouped_attention.attending(model, state.cache))
        step = _compiled_step(device)
        while done < new:
            if done and done % CHECK_EVERY == 0 and bool(state.finished.all()):
                break
            step(model, state.ids, state.mask, state.position, state.index, state.slot, state.finished, stops,
                 state.cache, pad, temperature)
            done += 1
    generated = state.ids[:, prompt:prompt + done]
    if bool(state.finished.all()):  # `generate` stops at the step where the last row stopped
        stopped = torch.isin(generated, stops)
        done = int((stopped.int().argmax(-1) + 1).max())
    return torch.cat([input_ids, generated[:, :done]], dim=-1)


def _prefill_rows(model: Any, state: Buffers, input_ids: Any, attention_mask: Any, temperature: float | None,
                  stops: Any) -> int:
    """Every row's prompt into the cache, eagerly, with the positions `generate` gives a left-padded prompt, and its
    first new token; the steps go on from there. Returns the tokens generated (1)."""
    import torch

    prompt = input_ids.shape[1]
    positions = prompt_positions(attention_mask)
    state.mask[:, :prompt] = attention_mask
    logits = model(input_ids=input_ids, attention_mask=state.mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **{KEYWORD: state.cache}).logits[:, -1]
    first = choose(logits, temperature)
    state.ids[:, :prompt] = input_ids
    state.ids[:, prompt] = first
    state.finished.copy_(torch.isin(first, stops))
    state.position.copy_(positions[:, -1] + 1)
    state.index.fill_(prompt)
    state.slot.fill_(prompt)
    return 1


def _prefill_groups(model: Any, state: Buffers, input_ids: Any, attention_mask: Any, distinct: Any,
                    order: Any) -> int:
    """Each distinct prompt (the rows `distinct`) but its last token into the cache once, eagerly, for the groups
    (`order`: each group's distinct prompt); the last prompt token is the first compiled step. Returns the tokens
    generated (0)."""
    from transformers import DynamicCache

    prompt = input_ids.shape[1]
    filled = DynamicCache(config=model.config.get_text_config(decoder=True))
    fill_distinct(model, input_ids, attention_mask, distinct, filled, KEYWORD)
    state.fill_prompts(filled, order, prompt - 1)
    state.mask[:, :prompt - 1] = attention_mask[:, :-1]
    state.ids[:, :prompt] = input_ids
    state.position.copy_(prompt_positions(attention_mask)[:, -1])
    state.index.fill_(prompt - 1)
    state.slot.fill_(state.prompt)  # the rows' own tokens start after the longest prompt the cache holds
    return 0


def in_generate(model: Any, grouped: bool = False) -> AbstractContextManager[Any]:
    """Within the block, `model.generate` decodes here (for callers that build the call themselves: TRL's rollouts),
    with the model's own `generate` for what this loop does not do, each group's prompt kept once with `grouped`.
    An instance attribute shadows the method for the block and is removed after."""
    own = model.generate

    def shadow(input_ids: Any, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any) -> Any:
        if kwargs or generation_config is None:  # anything else TRL may pass: transformers' own generate
            return own(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                       **kwargs)
        return generate(model, input_ids, attention_mask, generation_config, fallback=own, grouped=grouped)

    return patch.object(model, "generate", shadow)
