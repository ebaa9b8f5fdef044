"""Recipes: precedence, strictness, saving."""

from pathlib import Path

import pytest
import yaml

from gsm8k_tr.config import load_recipe, parse_overrides, save_recipe
from gsm8k_tr.typed_values import coerce
from gsm8k_tr.errors import UserError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
ACCELERATE = sorted((Path(__file__).resolve().parents[1] / "recipes" / "accelerate").glob("*.yaml"))


def test_precedence_defaults_file_overrides(tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("output_dir: runs/a\ndata:\n  limit: 10\n  reference: none\nsft:\n  max_steps: 5\n")
    recipe = load_recipe(recipe_file, ["data.limit=3", "sft.max_steps=7", "output_dir=runs/b"])
    assert recipe.output_dir == "runs/b" and recipe.data.limit == 3 and recipe.sft == {"max_steps": 7}
    assert recipe.data.reference == "none"  # from the file
    assert recipe.data.question_column == "question"  # from the defaults


BAD = [
    # (overrides, message fragment, what it checks)
    (["data.datset=x"], "unknown recipe key 'data.datset' (did you mean 'data.dataset'?); valid keys in section "
                        "'data': dataset", "typo in a nested key"),
    (["outptu_dir=x"], "'outptu_dir' (did you mean 'output_dir'?); valid keys in the recipe: output_dir",
     "typo at the top level"),
    (["lora.rank=4"], "unknown recipe key 'lora.rank'; valid keys in section 'lora': r,", "no key close enough"),
    (["data.limit=abc"], "'data.limit' must be int", "wrong type"),
    (["data.keep_unaligned=3"], "'data.keep_unaligned' must be bool", "int for a bool"),
    (["data=5"], "section 'data' must be a mapping", "scalar for a section"),
    (["data.limit=0"], "'data.limit' must be at least 1", "range check"),
    (["rewards.format=1.0"], "unknown reward 'format'", "reward name checked against the registry"),
    (["rewards.correctness.requires=strict"], "unknown parameter 'rewards.correctness.requires'",
     "reward parameters checked against the reward's signature"),
    (["rewards.correctness.requires_format=always"], "must be one of none, soft, strict", "a parameter's choices"),
    (["rewards.xmlcount.trailing_penalty=lots"], "'rewards.xmlcount.trailing_penalty' must be float",
     "a parameter's type"),
    (["rewards.xmlcount.answer_tag=x"], "tags come from the 'prompt' section", "tags have one home"),
    (["rewards.xmlcount.weight=heavy"], "'rewards.xmlcount.weight' must be float", "a weight's type"),
    (["eval.split=dev"], "'eval.split' must be one of train, validation, test", "eval split names"),
    (["eval.held_out_split=dev"], "'eval.held_out_split' must be one of", "held-out split names"),
    (["eval.batch_size=0"], "'eval.batch_size' must be at least 1", "eval batch size"),
    (["eval.temperature=-1"], "'eval.temperature' must be 0 (greedy) or more", "eval temperature"),
    (["prompt_filter.temperature=0"], "'prompt_filter.temperature' must be above 0", "filter samples"),
    (["prompt.template=no placeholder"], "must contain {question}", "template without the question"),
    (["prompt.template={question} {oops}"], "unknown placeholder(s) ['oops']", "unknown placeholder"),
    (["novalue"], "is not key=value", "malformed override"),
    (["eval.temperature=.nan"], "recipe key 'eval.temperature' must be a finite number, got nan", "YAML's nan"),
    (["prompt.template=Soru: {question}"], "got {'Soru': {'question': None}} (dict); YAML read the text as structure: "
                                           "put it in quotes", "text that YAML reads as a mapping"),
    (["data.dataset="], "recipe key 'data.dataset' is empty; name a Hub id", "an empty source read as the current folder"),
    (["data.reference=' '"], "recipe key 'data.reference' is empty", "blank is empty too"),
    (["model.name_or_path="], "recipe key 'model.name_or_path' is empty", "the Hub's message named '' but not the key"),
    (["eval.device="], "recipe key 'eval.device' is empty; give it a value, or null", "an empty device read as auto"),
    (["model.sft_output="], "recipe key 'model.sft_output' is empty", "an empty start read as its default"),
]


@pytest.mark.parametrize("overrides,message,why", BAD, ids=[b[2] for b in BAD])
def test_bad_recipes_name_the_key(overrides: list[str], message: str, why: str) -> None:
    with pytest.raises(UserError) as error:
        load_recipe(None, overrides)
    assert message in str(error.value), why
    assert "\n" not in str(error.value)


def test_missing_and_broken_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_recipe(broken)
    # Where the problem is, and what: a tab in the indentation is the usual one.
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("seed: 1\nsft:\n\tlearning_rate: 1.0e-4\n")
    with pytest.raises(UserError) as error:
        load_recipe(tabbed)
    assert str(error.value).endswith("is not valid YAML: line 3, column 1: found character '\\t' that cannot start "
                                     "any token; indent with spaces, not tabs")


def test_a_key_written_twice_is_refused_where_yaml_would_keep_the_last(tmp_path: Path) -> None:
    # Before, the first `sft:` section was dropped without a word and the run trained with the second alone.
    twice = tmp_path / "twice.yaml"
    twice.write_text("sft:\n  learning_rate: 1.0e-4\n  max_steps: 5\ngrpo:\n  max_steps: 3\nsft:\n  max_steps: 7\n")
    with pytest.raises(UserError) as error:
        load_recipe(twice)
    assert str(error.value).endswith("is not valid YAML: line 6, column 1: key 'sft' is written twice in one section "
                                     "(first on line 1); keep one, as YAML takes only the last")
    twice.write_text("sft:\n  max_steps: 5\n  max_steps: 7\n")
    with pytest.raises(UserError, match="line 3, column 3: key 'max_steps' is written twice in one section"):
        load_recipe(twice)
    # YAML's merge key: what is written beside it overrides what it brings in, as YAML means it to
    merged = tmp_path / "merged.yaml"
    merged.write_text("sft: &common\n  max_steps: 5\n  learning_rate: 1.0e-4\ngrpo:\n  <<: *common\n  max_steps: 7\n")
    recipe = load_recipe(merged)
    assert (recipe.sft["max_steps"], recipe.grpo["max_steps"], recipe.grpo["learning_rate"]) == (5, 7, 1.0e-4)


def test_overrides_update_mapping_sections_and_files_replace_them(tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("rewards:\n  correctness: 1.0\n  xmlcount: 0.5\nsft:\n  max_steps: 5\n")
    recipe = load_recipe(recipe_file, ["rewards.correctness=2", "sft.learning_rate=0.001"])
    assert recipe.rewards == {"correctness": 2.0, "xmlcount": 0.5}  # the file chose two rewards
    assert recipe.sft == {"max_steps": 5, "learning_rate": 0.001}
    # A parameter override keeps the weight, and a weight override keeps the parameters.
    recipe = load_recipe(recipe_file, ["rewards.correctness.requires_format=strict"])
    assert recipe.rewards["correctness"] == {"weight": 1.0, "requires_format": "strict"}
    recipe_file.write_text("rewards:\n  correctness: {weight: 2.0, requires_format: soft}\n")
    recipe = load_recipe(recipe_file, ["rewards.correctness=3"])
    assert recipe.rewards == {"correctness": {"weight": 3.0, "requires_format": "soft"}}


def test_int_widens_to_float_and_numbers_to_strings() -> None:
    recipe = load_recipe(None, ["data.min_align_score=1", "output_dir=2024"])
    assert recipe.data.min_align_score == 1.0 and recipe.output_dir == "2024"


def test_a_strategy_written_no_reads_as_no_not_as_false() -> None:
    trainer_utils = pytest.importorskip("transformers.trainer_utils")
    strategy = trainer_utils.IntervalStrategy | str
    assert coerce(False, strategy, "sft.eval_strategy") == "no"  # YAML 1.1: `no` is false
    assert coerce("steps", strategy, "sft.eval_strategy") == "steps"
    with pytest.raises(UserError, match="'sft.eval_strategy' must be IntervalStrategy, got True"):
        coerce(True, strategy, "sft.eval_strategy")


def test_parse_overrides_nests_dotted_keys() -> None:
    assert parse_overrides(["a.b.c=1", "a.b.d=[x, y]", "e=null"]) == {"a": {"b": {"c": 1, "d": ["x", "y"]}}, "e": None}


def test_saved_recipe_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(None, ["data.limit=4", "rewards={correctness: 2.0}"])
    saved = save_recipe(recipe, tmp_path)
    again = load_recipe(saved)
    assert again == recipe and yaml.safe_load(saved.read_text())["data"]["limit"] == 4


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(path: Path) -> None:
    assert load_recipe(path).output_dir


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_accelerate_configs_load_and_say_how_to_run(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    text = path.read_text()
    assert f"accelerate launch --config_file recipes/accelerate/{path.name} -m gsm8k_tr grpo" in text
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 2 and config.mixed_precision == "no"


def test_an_empty_instruction_is_a_recipes_choice() -> None:
    assert load_recipe(None, ["prompt.instruction="]).prompt.instruction == ""
