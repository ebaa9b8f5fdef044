"""The stop token is an ending, never text, with the instruct model's token layout: SFT, GRPO and evaluate.

The real tokenizer may declare `<|stop|>` a plain added token (eos is
`<|endoftext|>`, and there is no pad token). TRL decodes completions with
`skip_special_tokens=True`, so such a token's text would stay after
`</cevap>` and every completion would score 0 on strict format. The built-in
models are laid out that way on purpose; the first test keeps them so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, needs_compiler
from transformers import AutoTokenizer

from gsm8k_tr import modeling
from gsm8k_tr.config import ModelConfig, PromptConfig, load_recipe
from gsm8k_tr.data.prompts import build_target
from gsm8k_tr.grading import rewards

STOP = "<|stop|>"


def test_the_builtin_tokenizer_is_laid_out_like_the_real_one(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stop = tokenizer.convert_tokens_to_ids(STOP)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token is None
    assert tokenizer.decode([stop], skip_special_tokens=True) == STOP  # plain: decoding keeps its text
    config = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert [t["special"] for t in config["added_tokens"] if t["content"] == STOP] == [False]


def test_configure_tokens_makes_it_an_ending_and_sft_targets_still_end_with_its_id(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    stop = tokenizer.convert_tokens_to_ids(STOP)
    assert modeling.configure_tokens(tokenizer, model, STOP) == STOP
    assert tokenizer.convert_tokens_to_ids(STOP) == stop and len(tokenizer) == len(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert tokenizer.decode([5, stop], skip_special_tokens=True) == tokenizer.decode([5])
    target = build_target("2+3=5", "5", PromptConfig(), STOP)
    assert tokenizer(target, add_special_tokens=False)["input_ids"][-1] == stop  # the target ends with the id
    assert model.generation_config.eos_token_id[0] == stop  # generation stops on it
    assert tokenizer.pad_token_id not in (None, stop)
    assert model.config.eos_token_id == model.generation_config.eos_token_id


def test_the_trainer_finds_the_configured_tokens_aligned(tiny_model_dir: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """transformers' Trainer aligns the model's configs with the tokenizer (`align_special_tokens`), and logs it:
    after `configure_tokens` there is nothing to align, before SFT and after it, whose tokenizer ends at the stop."""
    import logging

    from transformers import trainer_utils

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    logger = logging.getLogger(trainer_utils.__name__)
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root, where caplog listens
    try:
        for eos in (None, STOP):  # the base tokenizer's eos, then SFT's (TRL's `eos_token`)
            tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
            modeling.configure_tokens(tokenizer, model, STOP)
            if eos:
                tokenizer.eos_token = eos
            ids = (model.config.eos_token_id, model.generation_config.eos_token_id, model.config.pad_token_id)
            trainer_utils.align_special_tokens(model, tokenizer)
            assert (model.config.eos_token_id, model.generation_config.eos_token_id, model.config.pad_token_id) == ids
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "PAD/BOS/EOS" in r.getMessage()]


def _spy_on_strict_format(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[list[int]], list[float]]]:
    """Record what the strict-format reward is given (texts and TRL's completion ids) and what it returns."""
    seen: list[tuple[list[str], list[list[int]], list[float]]] = []
    real = rewards.REWARDS["strict_format"]

    def spy(completions: list[str], completion_ids: list[list[int]] | None = None, **kwargs: object) -> list[float]:
        scores = real(completions, **kwargs)
        seen.append((list(completions), [list(ids) for ids in completion_ids or []], scores))
        return scores

    spy.__name__ = real.__name__
    monkeypatch.setitem(rewards.REWARDS, "strict_format", spy)
    return seen


EAGER_PATH = {"merge_lora": True, "weights_dtype": None, "decoding": "eager", "kv_cache": "growing",
              "shared_prefill": True, "grouped_attention": True, "sampler": "inverse_cdf", "attention": None,
              "stop_check": "every step"}


@pytest.mark.slow
@pytest.mark.parametrize("decoding, deferred, path", [
    ("auto", False, EAGER_PATH),
    # the stop flag read a step late, as on a GPU (the GPU's events stood in for): the extra step is taken back
    ("auto", True, {**EAGER_PATH, "stop_check": "deferred"}),
    pytest.param("compiled", False, {"merge_lora": True, "weights_dtype": None, "decoding": "compiled",
                                     "kv_cache": "static", "shared_prefill": False, "grouped_attention": False,
                                     "sampler": "inverse_cdf", "attention": None, "stop_check": "every step"},
                 marks=needs_compiler),
])
def test_rewards_score_the_text_the_model_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                request: pytest.FixtureRequest, tiny_model_dir: Path, decoding: str,
                                                deferred: bool, path: dict) -> None:
    from gsm8k_tr.train import grpo, sft

    checks = request.getfixturevalue("deferred_stop_checks") if deferred else []
    seen = _spy_on_strict_format(monkeypatch)
    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}", "sft.max_steps=30", "grpo.max_steps=2",
                                            "grpo.per_device_train_batch_size=8", "eval.every_steps=0",
                                            f"decoding={decoding}"])
    sft.main(recipe)
    manifest = grpo.main(recipe)
    assert manifest["rollouts"] == path  # the fast path ran, and compiled decoding where asked
    assert len(checks) == (2 if deferred else 0)  # each rollout batch's generate read its stop flag a step late
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "sft" / "merged")
    stop = tokenizer.convert_tokens_to_ids(STOP)
    texts = [text for batch, _, _ in seen for text in batch]
    assert len(texts) == 16 and not any(STOP in text for text in texts)
    stopped = 0
    for batch, ids, scores in seen:
        for text, row, score in zip(batch, ids, scores):
            # The text the rewards saw is exactly what the model wrote up to its stop token.
            stopped += stop in row
            assert text == tokenizer.decode(row[:row.index(stop)] if stop in row else row, skip_special_tokens=True)
            assert score == rewards.strict_format_reward_func([text])[0]
    assert stopped > 0


@pytest.mark.slow
def test_a_well_formed_answer_ending_in_the_stop_token_scores_strict_format(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           tiny_model_dir: Path) -> None:
    # GRPO from the base model, whose tokenizer calls <|stop|> a plain token. Sampling is replaced by the answer the
    # issue measured (strict format 0.0 before the fix); TRL's own decoding and reward path run as in training.
    from gsm8k_tr.train import grpo

    seen = _spy_on_strict_format(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    answer = tokenizer("<sebep>\n2+3=5\n</sebep>\n<cevap>\n5\n</cevap>", add_special_tokens=False)["input_ids"]
    written = answer + [tokenizer.convert_tokens_to_ids(STOP)]

    def sample(self: object, prompt_ids: list[list[int]], *args: object, **kwargs: object) -> tuple[list, None]:
        return [list(written) for _ in prompt_ids], None

    monkeypatch.setattr(grpo.GRPOTrainer, "_generate_single_turn", sample)
    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}", "model.sft_output=none",
                                            "grpo.max_steps=1", "eval.every_steps=0"])
    grpo.main(recipe)
    assert seen and all(text == "<sebep>\n2+3=5\n</sebep>\n<cevap>\n5\n</cevap>" for batch, _, _ in seen for text in batch)
    assert all(score == 0.5 for _, _, scores in seen for score in scores)


@pytest.mark.slow
def test_evaluation_never_shows_the_stop_token(tmp_path: Path, tiny_model_dir: Path) -> None:
    # The base model was pretrained to end its answers with <|stop|>, a plain token in its tokenizer.
    from gsm8k_tr.infer import evaluate

    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}"])
    result = evaluate.main(str(tiny_model_dir), recipe, limit=16, output=str(tmp_path / "eval"))
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert result["truncated_rate"] < 1 and any(not r["truncated"] for r in records)  # it stopped on the token
    assert not any(STOP in r["completion"] for r in records)
