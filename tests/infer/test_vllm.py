"""The vLLM paths without a GPU: one-line errors, and the settings a GPU run would get."""

from __future__ import annotations

import pytest
from conftest import TINY_RECIPE, run_cli

from gsm8k_tr.errors import UserError
from gsm8k_tr.infer import evaluate, vllm_engine

HAS_VLLM = vllm_engine.importlib.util.find_spec("vllm") is not None


@pytest.fixture
def fake_vllm(monkeypatch):
    """Pretend vLLM and a GPU are there, to check what the settings become."""
    real = vllm_engine.importlib.util.find_spec
    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec", lambda name: object() if name == "vllm" else real(name))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_the_extra_both_paths_name_it():
    with pytest.raises(UserError, match=r"pip install -e \.\[vllm\]"):
        evaluate.check_backend("vllm")
    with pytest.raises(UserError, match=r"grpo.use_vllm .*pip install -e \.\[vllm\]"):
        vllm_engine.grpo_settings({"use_vllm": True}, [1])
    with pytest.raises(UserError, match=r"server mode\) needs the vllm extra"):
        vllm_engine.grpo_settings({"use_vllm": True, "vllm_mode": "server"}, [1])


def test_without_a_gpu_use_vllm_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU.*grpo.use_vllm=false"):
        vllm_engine.grpo_settings({"use_vllm": True}, [1])
    with pytest.raises(UserError, match="needs a CUDA GPU.*--backend hf"):
        evaluate.check_backend("vllm")


def test_vllm_settings_stop_on_the_stop_token_and_build_a_trl_config(fake_vllm, monkeypatch, tmp_path):
    import torch
    import trl

    from gsm8k_tr.train.trl_configs import trl_config

    values = vllm_engine.grpo_settings({"use_vllm": True, "generation_kwargs": {"stop_token_ids": [7]}}, [3, 7])
    assert values["generation_kwargs"]["stop_token_ids"] == [3, 7]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # TRL's config would query the fake GPU
    config = trl_config(trl.GRPOConfig, "grpo", values,
                                 {"output_dir": str(tmp_path), "report_to": [], "bf16": False, "use_cpu": True}, {})
    assert config.use_vllm and config.vllm_mode == "colocate"
    assert config.generation_kwargs == {"stop_token_ids": [3, 7]}
    assert vllm_engine.grpo_settings({"use_vllm": False}, [3]) == {"use_vllm": False}
    with pytest.raises(UserError, match="'grpo.vllm_mode' must be colocate or server"):
        vllm_engine.grpo_settings({"use_vllm": True, "vllm_mode": "remote"}, [3])


def test_vllm_gets_a_full_model_folder(tmp_path, tiny_model_dir):
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer.evaluate import load_for_inference

    recipe = load_recipe(str(TINY_RECIPE), [])
    model, tokenizer, name = load_for_inference(str(tiny_model_dir), recipe)
    with vllm_engine.model_folder(model, tokenizer, name) as folder:
        assert folder == str(tiny_model_dir)  # used as it is, nothing copied
    with vllm_engine.model_folder(model, tokenizer, "builtin:tiny-gpt2") as folder:
        saved = sorted(p.name for p in __import__("pathlib").Path(folder).iterdir())
        assert "model.safetensors" in saved and "config.json" in saved and not any(n.endswith(".bin") for n in saved)
    with vllm_engine.model_folder(model, tokenizer, "someone/some-model") as folder:
        assert folder == "someone/some-model"


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_evaluate_backend_vllm_from_the_command_line_is_one_line():
    done = run_cli("evaluate", "--model", "builtin:tiny-gpt2", "--backend", "vllm", "--config", str(TINY_RECIPE))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "pip install -e .[vllm]" in done.stderr
