"""Every recipe in recipes/ loads, names its run command and passes `gsm8k-tr check`."""

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
def test_every_recipe_passes_the_check(path: Path, tmp_path: Path):
    # The check `gsm8k-tr check` and every stage run first: both stages' TRL configs built by the stages' own
    # builders, the rewards, eval, the data source and the model's config and tokenizer where they are local.
    from gsm8k_tr.train import recipe_check

    recipe = load_recipe(path, [f"output_dir={tmp_path}"])
    shared = recipe.data.dataset.startswith("../shared/")  # the project's sample data, beside a checkout only
    if shared and not (ROOT / recipe.data.dataset).exists():
        pytest.skip(f"{recipe.data.dataset} is not here (the shared sample data)")
    checked = recipe_check.check(recipe)
    assert checked["sft_steps"] != 0 and checked["grpo_steps"] > 0
