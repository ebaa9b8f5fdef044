"""Sampling settings come from the recipe only: a model's generation_config.json changes nothing.

Hub models often ship sampling fields there, and transformers fills every
field a `generate` call leaves unset from it. The model built here sets all of
them; its answers must equal those of the same weights with a clean config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE

from gsm8k_tr import modeling
from gsm8k_tr.config import ModelConfig, load_recipe

POLLUTED = {"do_sample": True, "temperature": 0.01, "top_k": 1, "top_p": 0.05, "min_p": 0.5, "typical_p": 0.2,
            "repetition_penalty": 5.0, "no_repeat_ngram_size": 2, "num_beams": 3, "length_penalty": -2.0,
            "max_length": 20, "bad_words_ids": [[5]], "encoder_repetition_penalty": 2.0}


@pytest.fixture
def polluted_model_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    folder = tmp_path / "polluted"
    shutil.copytree(tiny_model_dir, folder)
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**config, **POLLUTED}))
    return folder


def test_the_model_really_carries_the_settings(polluted_model_dir: Path) -> None:
    model = modeling.load_model(ModelConfig(name_or_path=str(polluted_model_dir)))
    assert model.generation_config.repetition_penalty == 5.0 and model.generation_config.num_beams == 3


def test_greedy_evaluation_ignores_the_models_generation_config(tmp_path: Path, tiny_model_dir: Path,
                                                                 polluted_model_dir: Path) -> None:
    from gsm8k_tr.infer import evaluate

    recipe = load_recipe(str(TINY_RECIPE), [f"output_dir={tmp_path / 'run'}"])
    clean = evaluate.main(str(tiny_model_dir), recipe, limit=12, output=str(tmp_path / "clean"))
    dirty = evaluate.main(str(polluted_model_dir), recipe, limit=12, output=str(tmp_path / "dirty"))

    def answers(name: str) -> list[str]:
        return [json.loads(line)["completion"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]

    assert answers("dirty") == answers("clean")
    # metrics.json records the effective settings: the recipe's, greedy.
    assert dirty["generation"] == clean["generation"]
    assert dirty["generation"] | {"max_new_tokens": 0} == {
        "max_new_tokens": 0, "do_sample": False, "temperature": None, "top_k": None, "top_p": None, "num_beams": 1,
        "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "length_penalty": 1.0}
    assert dirty["generation"]["max_new_tokens"] == recipe.eval.max_new_tokens


def _grpo_rollouts(model_dir: Path, tmp_path: Path) -> tuple[list[list[int]], object]:
    """Sampled rollouts through a GRPOTrainer's own generation config, same seed."""
    from datasets import Dataset
    from trl import GRPOConfig

    from gsm8k_tr.train.grpo import GRPOTrainer

    cfg = ModelConfig(name_or_path=str(model_dir))
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    modeling.configure_tokens(tokenizer, model, "<|stop|>")
    args = GRPOConfig(output_dir=str(tmp_path / model_dir.name), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=24, report_to=[], bf16=False, use_cpu=True, temperature=1.0)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "Ali'nin 3 elması"}] * 4),
                          processing_class=tokenizer)
    inputs = tokenizer(["Ali'nin 3 elması var. 2 elma daha alır."] * 4, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = trainer.model.generate(**inputs, generation_config=trainer.generation_config)
    effective, _ = trainer.model._prepare_generation_config(trainer.generation_config)
    return out.tolist(), effective


def test_grpo_rollouts_ignore_the_models_generation_config(tmp_path: Path, tiny_model_dir: Path,
                                                            polluted_model_dir: Path) -> None:
    clean, _ = _grpo_rollouts(tiny_model_dir, tmp_path)
    dirty, effective = _grpo_rollouts(polluted_model_dir, tmp_path)
    assert dirty == clean
    assert effective.num_beams == 1 and effective.repetition_penalty == 1.0 and effective.top_p == 1.0
    assert not effective.no_repeat_ngram_size and not effective.bad_words_ids and effective.length_penalty == 1.0
