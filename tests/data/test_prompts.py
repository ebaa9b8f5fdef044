"""Prompts, SFT targets and the context budget, with a tokenizer trained here."""

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from gsm8k_tr.config import PromptConfig
from gsm8k_tr.data.prompts import build_prompt, build_target, fit_context
from gsm8k_tr.data.synth import make_problems
from gsm8k_tr.grading.rewards import strict_format_reward_func, xmlcount_reward_func


def _tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "<|stop|>"])
    tokenizer.train_from_iterator([r["question"] + r["solution"] for r in make_problems(200)], trainer)
    return tokenizer


def test_default_prompt_is_the_instruct_format() -> None:
    prompt = build_prompt("  Ali'nin 3 elması var?  ", PromptConfig())
    assert prompt.startswith("### Kullanıcı:\n") and prompt.endswith("Ali'nin 3 elması var?\n### Asistan:\n")
    assert "<sebep>" in prompt and "<cevap>" in prompt  # the format instruction sits in the user text


def test_target_earns_full_format_rewards() -> None:
    target = build_target("Adım 1.\nAdım 2: 3 + 4 = 7", "7", PromptConfig(), "<|stop|>")
    assert target.endswith("</cevap><|stop|>")
    body = target.removesuffix("<|stop|>")
    assert strict_format_reward_func([body]) == [0.5] and xmlcount_reward_func([body]) == [0.5]


def test_rows_past_the_context_are_dropped_and_counted() -> None:
    tokenizer = _tokenizer()
    rows = [{"question": "Ali'nin 3 elması var?"}, {"question": "Ali'nin 3 elması var? " * 40}]
    count = lambda text: len(tokenizer.encode(text).ids)  # noqa: E731
    prompt = lambda row: build_prompt(row["question"], PromptConfig())  # noqa: E731
    budget = count(prompt(rows[0])) + 64
    kept, dropped = fit_context(rows, count, max_completion_tokens=64, max_context=budget, text=prompt)
    assert kept == rows[:1] and dropped == 1
