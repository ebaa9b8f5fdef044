"""Every recipe in recipes/ loads, and its `sft`/`grpo` sections are valid TRL configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from gsm8k_tr.config import load_recipe

RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_names_its_run_command(path: Path):
    recipe = load_recipe(path)
    header = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert "# Run:" in header or "# run:" in header.lower(), "each recipe starts with the command that runs it"
    assert recipe.output_dir


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_stage_sections_are_valid_trl_configs(path: Path, tmp_path):
    trl = pytest.importorskip("trl")
    from gsm8k_tr import modeling
    from gsm8k_tr.train import grpo, sft
    from gsm8k_tr.train.trl_configs import trl_config

    recipe = load_recipe(path)
    forced = {"output_dir": (str(tmp_path), ""), "seed": (recipe.seed, "")}
    trl_config(trl.SFTConfig, "sft", recipe.sft, {**sft.DEFAULTS, **modeling.precision(recipe.sft, "sft")}, forced)
    trl_config(trl.GRPOConfig, "grpo", recipe.grpo, {**grpo.DEFAULTS, **modeling.precision(recipe.grpo, "grpo")},
                        {**forced, "reward_weights": (list(recipe.rewards.values()), "")})
