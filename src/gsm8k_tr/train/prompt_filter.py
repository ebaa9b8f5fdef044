"""Prompts that teach: before GRPO, keep the training prompts the SFT model sometimes gets right.

A GRPO group whose completions all get the same correctness carries no
advantage: it costs a full generation and teaches no arithmetic. Here the
model GRPO starts from answers each training prompt `prompt_filter.samples`
times, as GRPO would sample it (its temperature and completion length), and
a prompt is kept when its pass rate lies strictly between
`prompt_filter.keep_above` and `prompt_filter.keep_below` (by default 0 and
1: neither always wrong nor always right).

Scores are cached in the stage folder (`prompt_filter.jsonl`, one line per
prompt, written as they come), keyed by the start model and the settings, so
a resumed or repeated run does not score again (a line cut short by a kill is
scored again). Every prompt's pass rate and
whether it was kept is there too, and the manifest counts kept and dropped
prompts and the tokens the scoring generated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.grading.answers import is_correct
from gsm8k_tr.infer import generation
from gsm8k_tr.processes import process_state, split_and_gather

log = logging.getLogger(__name__)

CACHE = "prompt_filter.jsonl"


def _key(prompt: dict[str, Any]) -> str:
    return hashlib.sha256(f"{prompt['prompt']}\n{prompt['answer']}".encode()).hexdigest()[:24]


def _settings(recipe: Recipe, start: str, temperature: float, max_new_tokens: int) -> dict[str, Any]:
    """What a cached score depends on: the model, how it samples, how many samples."""
    return {"start_model": start, "samples": recipe.prompt_filter.samples, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "seed": recipe.seed}


def _cached(path: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cached scores under `settings`. A last line cut short (a kill or a full disk mid-write) is removed, so
    that the next line appended starts whole; a line that is no score (edited by hand) is skipped and counted."""
    if not path.is_file():
        return {}
    text = path.read_bytes()
    whole = text.rfind(b"\n") + 1
    if whole < len(text):
        with open(path, "r+b") as handle:
            handle.truncate(whole)
        log.info("prompt filter: %s ended in a line cut short, which is scored again", path)
    found, bad = {}, 0
    for line in text[:whole].decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("key"), str)
                and isinstance(row.get("pass_rate"), (int, float)) and isinstance(row.get("tokens"), int)):
            bad += 1
        elif row.get("settings") == settings:
            found[row["key"]] = row
    if bad:
        log.warning("prompt filter: %d line(s) of %s are no score and were skipped; their prompts are scored again",
                    bad, path)
    return found


def score(model: Any, tokenizer: Any, prompts: list[dict[str, Any]], recipe: Recipe, temperature: float,
          max_new_tokens: int, answer_tag: str, cache: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Each prompt's pass rate over `samples` sampled answers (cached ones are not scored again)."""
    cfg = recipe.prompt_filter
    known = _cached(cache, settings)
    todo = [p for p in prompts if _key(p) not in known]
    if todo:
        log.info("prompt filter: %d prompts to score, %d answers each (%d cached)", len(todo), cfg.samples, len(known))
    state = process_state()
    chunk = max(cfg.batch_size, 1)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]

        def answer(share: list[dict[str, Any]]) -> list[dict[str, Any]]:
            outputs = generation.generate(model, tokenizer, [p["prompt"] for p in share], max_new_tokens, cfg.batch_size,
                                          temperature, cfg.samples, recipe.seed + start, decoding=recipe.decoding)
            return [{"key": _key(p), "prompt": p["prompt"], "answer": p["answer"], "pass_rate": sum(is_correct(c.text, p["answer"], answer_tag) for c in out) / len(out),
                     "tokens": sum(c.tokens for c in out), "settings": settings} for p, out in zip(share, outputs)]

        rows = split_and_gather(part, answer)
        if state.is_main_process:  # a line per prompt as it comes: a killed run keeps what it scored
            with open(cache, "a", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
        known.update({row["key"]: row for row in rows})
    return [known[_key(p)] for p in prompts]


def apply(model: Any, tokenizer: Any, prompts: list[dict[str, Any]], recipe: Recipe, config: Any, folder: Path,
          start: str, answer_tag: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The prompts worth training on, each with its `pass_rate`, and what the filter did (for the manifest)."""
    import torch

    cfg = recipe.prompt_filter
    temperature = cfg.temperature if cfg.temperature is not None else config.temperature
    max_new_tokens = cfg.max_new_tokens or config.max_completion_length
    settings = _settings(recipe, start, temperature, max_new_tokens)
    started = time.perf_counter()
    device = process_state().device
    training_mode = model.training
    model.to(device)
    mixed = device.type == "cuda" and (config.bf16 or config.fp16)
    with torch.autocast("cuda", dtype=torch.bfloat16 if config.bf16 else torch.float16) if mixed else nullcontext():
        scores = score(model, tokenizer, prompts, recipe, temperature, max_new_tokens, answer_tag, folder / CACHE,
                       settings)
    model.train(training_mode)
    kept, wrong, right = [], 0, 0
    for prompt, row in zip(prompts, scores):
        rate = row["pass_rate"]
        if cfg.keep_above < rate < cfg.keep_below:
            kept.append({**prompt, "pass_rate": rate})
        elif rate <= cfg.keep_above:
            wrong += 1
        else:
            right += 1
    info = {"samples": cfg.samples, "keep_above": cfg.keep_above, "keep_below": cfg.keep_below,
            "temperature": temperature, "max_new_tokens": max_new_tokens, "scored": len(prompts), "kept": len(kept),
            "dropped_low_pass_rate": wrong, "dropped_high_pass_rate": right,
            "generated_tokens": sum(row["tokens"] for row in scores),
            "mean_pass_rate": sum(row["pass_rate"] for row in scores) / max(len(scores), 1),
            "seconds": round(time.perf_counter() - started, 1)}
    log.info("prompt filter: kept %d of %d prompts (%d at or below pass rate %s, %d at or above %s)", len(kept),
             len(prompts), wrong, cfg.keep_above, right, cfg.keep_below)
    if not kept:
        raise UserError(f"prompt filter: no prompt has a pass rate strictly between {cfg.keep_above} and "
                        f"{cfg.keep_below} ({wrong} below, {right} above, {cfg.samples} samples each); widen "
                        "prompt_filter.keep_above/keep_below, raise prompt_filter.samples, or set it to 0")
    return kept, info
