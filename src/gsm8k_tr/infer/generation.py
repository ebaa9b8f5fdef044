"""Batched answers from a model: left padding, length-sorted batches, KV cache, early stop.

One-question-at-a-time `generate` wastes most of a CPU or GPU on Python and
kernel launch overhead. Here prompts are sorted by length (so a batch pads
little), left-padded (so every row's next token sits in the last column;
`generate` derives position ids from the attention mask, so GPT-2's learned
positions stay right), decoded with the KV cache, and a batch ends as soon as
every row has emitted a stop token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def _completions(rows: Any, stops: set[int], tokenizer: Any) -> list[Completion]:
    """Cut each generated row after its first stop token; a row without one ran out of tokens."""
    found = []
    for row in rows.tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        kept = row if end is None else row[: end + 1]
        found.append(Completion(tokenizer.decode(kept, skip_special_tokens=True), len(kept), end is None))
    return found


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             temperature: float = 0.0, samples: int = 1, seed: int = 0, progress: Any = None) -> list[list[Completion]]:
    """`samples` completions for each prompt, in the prompts' order."""
    if not prompts:
        return []
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    # A private RNG: seeded sampling here must not shift the sampling of a training run that calls it.
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return _run_batches(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, samples, progress,
                             device)
    finally:
        tokenizer.padding_side = side


def _run_batches(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
              temperature: float, samples: int, progress: Any, device: Any) -> list[list[Completion]]:
    import torch

    stops = stop_ids(model)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[list[Completion]] = [[] for _ in prompts]
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt").to(device)
        with torch.inference_mode():
            output = model.generate(**batch, max_new_tokens=max_new_tokens, use_cache=True,
                                    num_return_sequences=samples, eos_token_id=stops,
                                    pad_token_id=tokenizer.pad_token_id, **sampling)
        new = output[:, batch["input_ids"].shape[1]:]
        found = _completions(new, set(stops), tokenizer)
        for j, index in enumerate(chunk):
            results[index] = found[j * samples:(j + 1) * samples]
        if progress is not None:
            progress(len(chunk))
    return results
