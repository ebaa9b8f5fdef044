"""Batched generation (gsm8k_tr.infer.generation) against one-question-at-a-time `generate`, same model, same run.

Run: python benchmarks/generation.py [--model builtin:tiny-gpt2] [--questions 64] [--max-new-tokens 96]
Prints questions per second for each and the ratio (target: >= 5x on CPU with the tiny model).
"""

from __future__ import annotations

import argparse
import time

import torch

from gsm8k_tr import modeling
from gsm8k_tr.config import ModelConfig, PromptConfig
from gsm8k_tr.data import synth
from gsm8k_tr.data.prompts import build_prompt
from gsm8k_tr.infer import generation


def one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The seed's way: one `generate` call per question, greedy."""
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=generation.stop_ids(model))
        texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-gpt2")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    cfg = ModelConfig(name_or_path=args.model)
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    modeling.configure_tokens(tokenizer, model, cfg.stop_token)
    model.eval()
    prompts = [build_prompt(r["question"], PromptConfig()) for r in synth.make_problems(args.questions, seed=7)]

    started = time.perf_counter()
    batched = generation.generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    single = one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)
    single_s = time.perf_counter() - started

    same = sum(b[0].text.strip() == s.strip() for b, s in zip(batched, single))
    print(f"model {args.model}, {len(prompts)} questions, max_new_tokens {args.max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"one at a time: {single_s:7.2f} s  {len(prompts) / single_s:7.2f} questions/s")
    print(f"batched ({args.batch_size}):  {batched_s:7.2f} s  {len(prompts) / batched_s:7.2f} questions/s")
    print(f"identical greedy answers: {same}/{len(prompts)}")
    print(f"ratio batched / one-at-a-time: {single_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
