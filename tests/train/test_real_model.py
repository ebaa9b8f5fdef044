"""A real pretrained model through every stage: prepare → sft → grpo → evaluate on SmolLM2-135M-Instruct.

The project's own GPT-2 stand-ins cannot show what a real model brings: a
Llama architecture (LoRA on q/k/v/o and the MLP projections), a real tokenizer
with ChatML markers and a 49k vocabulary, `<|im_end|>` as the stop token, and
weights that already know language. Real GSM8K-TR rows from the shared sample,
aligned with English GSM8K, are the data. A few steps only: this checks that
the paths work on the real thing, not what it learns (see
recipes/smollm2-cpu.yaml and the README for that).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from gsm8k_tr.config import load_recipe
from gsm8k_tr.grading import rewards

pytestmark = pytest.mark.slow

STOP = "<|im_end|>"
LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_smollm2_through_prepare_sft_grpo_and_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       smollm2_dir: Path, shared_sample: tuple[Path, Path]) -> None:
    import torch
    from safetensors.torch import load_file

    from gsm8k_tr.infer import evaluate
    from gsm8k_tr.train import grpo, sft

    rows, gsm8k = shared_sample
    texts: list[str] = []
    strict: list[float] = []
    real_reward = rewards.REWARDS["strict_format"]

    def spy(completions: list[Any], **kwargs: Any) -> list[float]:
        texts.extend(rewards.completion_text(c) for c in completions)
        strict.extend(real_reward(completions, **kwargs))
        return strict[-len(completions):]

    spy.__name__ = real_reward.__name__
    monkeypatch.setitem(rewards.REWARDS, "strict_format", spy)
    scored: list[Any] = []
    real_score = grpo.GRPOTrainer._get_per_token_logps_and_entropies

    def score(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_score(self, *args, **kwargs)
        scored.append(result[0].detach().clone())
        return result

    monkeypatch.setattr(grpo.GRPOTrainer, "_get_per_token_logps_and_entropies", score)
    # The base model does not stop within a few tokens, so the first completion of each batch is replaced by a
    # well-formed answer that ends in the stop token, as a trained model writes it; the others are sampled.
    answer = "<sebep>\n2+3=5\n</sebep>\n<cevap>\n5\n</cevap>"
    real_sample = grpo.GRPOTrainer._generate_single_turn

    def rollouts(self: Any, prompt_ids: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        completion_ids, logprobs = real_sample(self, prompt_ids, *args, **kwargs)
        tokenizer = self.processing_class
        written = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(STOP)]
        return [written, *completion_ids[1:]], logprobs

    monkeypatch.setattr(grpo.GRPOTrainer, "_generate_single_turn", rollouts)
    recipe = load_recipe(str(ROOT / "recipes" / "smollm2-cpu.yaml"), [
        f"output_dir={tmp_path / 'run'}", f"data.dataset={rows}", f"data.reference={gsm8k}", "data.limit=60",
        "sft.max_steps=1", "sft.per_device_train_batch_size=1", "sft.gradient_accumulation_steps=1",
        "sft.max_length=384", "sft.save_steps=1", "grpo.max_steps=1", "grpo.per_device_train_batch_size=2",
        "grpo.num_generations=2", "grpo.max_completion_length=24", "eval.every_steps=0", "eval.limit=4",
        "eval.max_new_tokens=24"])
    sft.main(recipe)
    grpo.main(recipe)

    for stage in ("sft", "grpo"):  # Llama LoRA targets: attention and MLP projections, not the head
        adapter = load_file(str(tmp_path / "run" / stage / "adapter" / "adapter_model.safetensors"))
        assert {key.split(".")[-3] for key in adapter} == LLAMA_TARGETS, stage
    assert scored and all(torch.isfinite(s).all() for s in scored[:1])  # the first scored batch
    assert texts and not any(STOP in text for text in texts)  # the rewards never see the stop token
    assert texts[0] == answer and strict[0] == 0.5  # and score what the model wrote
    manifest = json.loads((tmp_path / "run" / "grpo" / "manifest.json").read_text())
    assert manifest["stop_token"] == STOP

    result = evaluate.main(str(tmp_path / "run" / "grpo"), recipe, output=str(tmp_path / "eval"))
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert result["n"] == len(records) == 4 and all(isinstance(r["correct"], bool) for r in records)
    assert all(r["completion"] and STOP not in r["completion"] for r in records)
    assert all(math.isfinite(result[key]) for key in ("accuracy", "flexible_accuracy", "mean_completion_tokens"))
