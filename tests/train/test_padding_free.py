"""TRL's padding-free SFT batches are correct on GPT-2: the same loss as padded batches.

transformers finds the sequence boundaries of a packed row from its position
ids (with no attention mask and no cache, as TRL's SFT forward runs) and
masks attention between sequences; GPT-2 takes its learned positions from the
same ids. So `sft.padding_free: true` is safe for the GPT-2 recipes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_padding_free_batches_give_the_padded_loss(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from gsm8k_tr.data import synth

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_kernels=False).eval()
    rows = synth.make_problems(16, seed=2)
    examples = [{"input_ids": tokenizer(r["question"] + " " + r["solution"])["input_ids"]} for r in rows]
    assert len({len(e["input_ids"]) for e in examples}) > 4  # rows of different lengths: padding matters
    losses = {}
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(examples)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels") if k in batch}
        with torch.no_grad():
            losses[padding_free] = model(**inputs, use_cache=False).loss.item()  # as TRL's SFT forward runs
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    # With a cache (generation's setting) transformers does not look for packed rows: the check above is the
    # training path, not a coincidence.
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                       use_cache=True).loss.item()
    assert cached != pytest.approx(losses[False], abs=1e-2)


def test_the_sft_stage_trains_padding_free_with_its_own_length_limit(tmp_path, tiny_model_dir) -> None:
    # TRL refuses padding_free with a max_length it would not enforce, in a traceback when the trainer is built; the
    # stage passes it none and drops the longer examples itself, as it does for padded batches.
    import json

    from conftest import TINY_RECIPE, run_cli

    losses, counts = {}, {}
    for padding_free in ("false", "true"):
        run = tmp_path / padding_free
        done = run_cli("sft", "--config", str(TINY_RECIPE), f"output_dir={run}", "sft.max_steps=2",
                       "sft.logging_steps=1", "sft.max_length=120", f"sft.padding_free={padding_free}")
        assert done.returncode == 0, done.stderr[-2000:]
        history = json.loads((run / "sft" / "log_history.json").read_text())
        losses[padding_free] = history[0]["loss"]
        counts[padding_free] = json.loads((run / "sft" / "manifest.json").read_text())["data_counts"]
    assert counts["true"] == counts["false"] and counts["true"]["dropped_too_long"] > 0
    # The same first batch, packed or padded; the tiny model's dropout draws other masks for other shapes.
    assert losses["true"] == pytest.approx(losses["false"], rel=0.03)
