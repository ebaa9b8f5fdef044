"""Batched generation: transformers' false "may be padded" warning stays out of a batch without padding."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

_WARNING = "We strongly recommend passing in an `attention_mask`"


def _warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage().startswith(_WARNING) for r in caplog.records)


def test_a_batch_of_one_prompt_length_generates_without_the_padding_warning(tiny_model_dir, caplog) -> None:
    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig, PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt
    from gsm8k_tr.infer import generation

    config = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = modeling.load_tokenizer(config), modeling.load_model(config)
    modeling.configure_tokens(tokenizer, model, config.stop_token)
    prompts = [build_prompt(synth.make_problems(1, seed=3)[0]["question"], PromptConfig())] * 4
    batch = tokenizer(prompts, return_tensors="pt")
    assert batch["attention_mask"].all()  # one length: nothing to pad, so generate drops the mask
    settings = generation.generation_config(model, tokenizer.pad_token_id, 6, 0.0)
    with torch.inference_mode():
        ids = model.generate(**batch, generation_config=settings)
    # A finished row is fed the pad id; as its stand-in, the pad id here is a token the rows emit and feed back.
    model.config.pad_token_id = int(ids[0, batch["input_ids"].shape[1] + 1])
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root, where caplog listens
    try:
        logging.Logger.warning_once.cache_clear()  # transformers logs it once per process
        with torch.inference_mode():
            model.generate(**batch, generation_config=settings)
        assert _warned(caplog)  # transformers' own behaviour
        caplog.clear()
        logging.Logger.warning_once.cache_clear()
        found = generation.generate(model, tokenizer, prompts, 6, batch_size=4)
        assert len(found) == 4
        assert not _warned(caplog)
        model.config.pad_token_id = tokenizer.pad_token_id
        padded = tokenizer([prompts[0], prompts[0][:40]], return_tensors="pt", padding=True)
        with generation.quiet_unpadded(padded["attention_mask"]), torch.inference_mode():
            model(input_ids=padded["input_ids"])  # a padded batch without its mask still warns
        assert _warned(caplog)
    finally:
        logger.removeHandler(caplog.handler)
        logging.Logger.warning_once.cache_clear()
