"""The prompt filter keeps the prompts the start model sometimes gets right, caches its scores, and reports."""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, as_killed

from gsm8k_tr.config import load_recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.train import prompt_filter
from gsm8k_tr.train.grpo import zero_variance_groups


@pytest.mark.parametrize("correct, group, expected", [
    ([True, True, False, False], 2, (1.0, 0.5, 0.5)),   # one group all right, one all wrong: neither teaches
    ([True, False, False, True], 2, (0.0, 0.0, 0.0)),   # both groups mixed: both teach
    ([False] * 8, 4, (1.0, 0.0, 1.0)),                   # a model that never gets it: nothing to learn
])
def test_zero_variance_share_by_correctness(correct: list[bool], group: int, expected: tuple) -> None:
    found = zero_variance_groups(correct, group)
    assert (found["frac_correctness_zero_std"], found["correctness/all_right"], found["correctness/all_wrong"]) == expected


def _alternating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Correctness that depends only on the prompt's answer and the sample: rates 0, 0.5 and 1 by answer."""
    counter = count()

    def graded(text: str, gold: str, tag: str) -> bool:
        n = next(counter)
        return {0: False, 1: n % 2 == 0, 2: True}[int(float(gold)) % 3]

    monkeypatch.setattr(prompt_filter, "is_correct", graded)


@pytest.mark.slow
def test_grpo_trains_on_the_kept_prompts_and_a_resume_does_not_score_again(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          tiny_model_dir: Path) -> None:
    from gsm8k_tr.infer import generation
    from gsm8k_tr.train import grpo, sft

    _alternating(monkeypatch)
    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}", "sft.max_steps=2", "grpo.max_steps=2",
                                            "eval.every_steps=0", "prompt_filter.samples=2",
                                            "prompt_filter.max_new_tokens=8"])
    sft.main(recipe)
    manifest = grpo.main(recipe)
    info = manifest["prompt_filter"]
    assert info["scored"] == info["kept"] + info["dropped_low_pass_rate"] + info["dropped_high_pass_rate"]
    assert info["kept"] and info["dropped_low_pass_rate"] and info["dropped_high_pass_rate"]
    assert info["generated_tokens"] > 0 and info["samples"] == 2
    cache = tmp_path / "run" / "grpo" / prompt_filter.CACHE
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == info["scored"] and {r["pass_rate"] for r in rows} == {0.0, 0.5, 1.0}

    # Killed during training, then resumed: every score comes from the cache, the filter generates nothing.
    as_killed(tmp_path / "run" / "grpo", "checkpoints")
    calls = []
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(1) or [])
    again = grpo.main(recipe, resume=True)
    assert not calls and again["prompt_filter"]["kept"] == info["kept"] and again["global_step"] == 2


def test_no_prompt_left_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_filter, "score", lambda *a, **k: [{"pass_rate": 0.0, "tokens": 3}] * 2)
    recipe = load_recipe(None, ["prompt_filter.samples=4"])

    class Config:
        temperature, max_completion_length, bf16, fp16 = 1.0, 8, False, False

    class Model:
        training = True

        def to(self, device: object) -> None:
            pass

        def train(self, mode: bool) -> None:
            pass

    prompts = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    with pytest.raises(UserError, match="no prompt has a pass rate strictly between 0.0 and 1.0 .2 below, 0 above"):
        prompt_filter.apply(Model(), None, prompts, recipe, Config(), tmp_path, "m", "cevap")


def test_the_recipe_section_is_checked() -> None:
    with pytest.raises(UserError, match="prompt_filter"):
        load_recipe(None, ["prompt_filter.keep_above=0.8", "prompt_filter.keep_below=0.2"])
    assert load_recipe(None, ["prompt_filter.samples=8"]).prompt_filter.samples == 8


def test_too_few_prompts_for_one_generation_call_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tiny_model_dir: Path) -> None:
    # TRL's sampler yields whole generation calls only: with fewer prompts GRPO trained 0 steps and saved its start
    # model as its output, without a word; here a call takes 16 // 4 = 4 prompts
    from gsm8k_tr.train import grpo

    common = [f"output_dir={tmp_path / 'run'}", "model.sft_output=none", "grpo.per_device_train_batch_size=16",
              "eval.every_steps=0"]
    few = load_recipe(str(TINY_RECIPE), [*common, "data.dataset=synthetic:5", "data.validation_fraction=0"])
    with pytest.raises(UserError, match=r"grpo: 3 training prompts, but each generation call takes 4 \(16 "
                                        r"completions, 4 a prompt\).*or give it more prompts"):
        grpo.main(few)
    # The prompt filter keeps one: said after it, with its own keys
    monkeypatch.setattr(prompt_filter, "score", lambda model, tokenizer, prompts, *a, **k: [
        {"pass_rate": 0.5 if i == 0 else 0.0, "tokens": 3} for i in range(len(prompts))])
    filtered = load_recipe(str(TINY_RECIPE), [*common, f"output_dir={tmp_path / 'run2'}", "prompt_filter.samples=2"])
    with pytest.raises(UserError, match="grpo: 1 training prompts that the prompt filter kept, but .* or widen "
                                        "prompt_filter.keep_above/keep_below"):
        grpo.main(filtered)
    assert not (tmp_path / "run2" / "grpo" / "manifest.json").exists()


@pytest.mark.parametrize("overrides, kept", [(["prompt_filter.samples=1"], False),
                                             (["prompt_filter.samples=2", "prompt_filter.keep_above=0.5"], False),
                                             (["prompt_filter.samples=4", "prompt_filter.keep_above=0.5"], True)])
def test_bounds_no_pass_rate_can_fall_between_are_refused(overrides: list[str], kept: bool) -> None:
    # With K answers a pass rate is j/K: one answer keeps nothing strictly between 0 and 1, found only after every
    # training prompt was answered
    if kept:
        load_recipe(None, overrides)
        return
    with pytest.raises(UserError, match="so no prompt would be kept; raise samples or widen the bounds"):
        load_recipe(None, overrides)


def test_a_cache_line_cut_short_by_a_kill_is_scored_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gsm8k_tr.infer import generation

    recipe = load_recipe(None, ["prompt_filter.samples=2"])
    prompts = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}, {"prompt": "c", "answer": "3"}]
    settings = {"start_model": "m"}
    cache = tmp_path / prompt_filter.CACHE
    scored = {"key": prompt_filter._key(prompts[0]), "pass_rate": 0.5, "tokens": 4, "settings": settings}
    edited = {"key": prompt_filter._key(prompts[1]), "pass_rate": "half", "tokens": 4, "settings": settings}
    cut = json.dumps({"key": prompt_filter._key(prompts[2]), "pass_rate": 1.0, "tokens": 4, "settings": settings})
    cache.write_text(f"{json.dumps(scored)}\n{json.dumps(edited)}\n{cut[:30]}")
    asked: list[list[str]] = []

    def generate(model, tokenizer, texts, *args, **kwargs):
        asked.append(texts)
        return [[generation.Completion("<cevap>1</cevap>", 3, False)] * 2 for _ in texts]

    monkeypatch.setattr(generation, "generate", generate)
    rows = prompt_filter.score(None, None, prompts, recipe, 1.0, 8, "cevap", cache, settings)
    assert asked == [["b", "c"]]  # a came from the cache; the edited line and the cut one are scored again
    assert [row["pass_rate"] for row in rows] == [0.5, 0.0, 0.0]
    lines = cache.read_text().splitlines()
    assert [json.loads(line).get("key") for line in lines[2:]] == [prompt_filter._key(p) for p in prompts[1:]]
    assert len(lines) == 4  # the cut line went; what was appended after it reads whole
