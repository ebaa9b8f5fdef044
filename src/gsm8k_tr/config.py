"""Recipes: code defaults < YAML file < `key=value` overrides, checked strictly.

Every section is a dataclass, so the valid keys and their types are written
once, here. Unknown keys and wrong types are errors that name the key and list
the valid ones. The `sft` and `grpo` sections pass through to TRL's
`SFTConfig`/`GRPOConfig`; the stage that builds them checks their keys against
TRL itself, so this module need not import TRL (and `--help` stays instant).
"""

from __future__ import annotations

import dataclasses
import re
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gsm8k_tr.errors import UserError, did_you_mean, one_line
from gsm8k_tr.typed_values import coerce

DEFAULT_INSTRUCTION = (
    "Aşağıdaki matematik sorusunu adım adım çöz. Düşünceni <{reasoning_tag}> ve "
    "</{reasoning_tag}> etiketleri arasına, yalnızca sayısal cevabı <{answer_tag}> ve "
    "</{answer_tag}> etiketleri arasına yaz."
)


@dataclass
class ModelConfig:
    name_or_path: str = "ytu-ce-cosmos/turkish-gpt2-medium-350m-instruct-v0.1"
    revision: str | None = None
    gguf_file: str | None = None
    trust_remote_code: bool = False
    stop_token: str | None = "<|stop|>"  # null: the tokenizer's own eos token
    sft_output: str | None = None  # where GRPO starts: null = {output_dir}/sft; "none" = the base model itself


@dataclass
class DataConfig:
    dataset: str = "ytu-ce-cosmos/gsm8k_tr"
    dataset_config: str | None = None
    reference: str = "openai/gsm8k"
    reference_config: str = "main"
    question_column: str = "question"
    answer_column: str = "answer"
    keep_unaligned: bool = True  # unaligned rows keep their solution's last number as gold
    unaligned_split: str = "train"  # where kept unaligned rows go: train or test
    test_fraction: float = 0.1  # held out by question hash when there is no reference
    validation_fraction: float = 0.05  # of train, by question hash; at least 64 rows when train can spare them
    min_align_score: float = 0.45  # question evidence (numbers, names, concepts) the best match needs
    min_align_margin: float = 0.02  # and how far ahead of the runner-up it must be
    keep_numbers_changed: bool = False  # rows whose translation changed the numbers: train on them with their own gold
    sft_keep_disagreeing: bool = False  # SFT targets from solutions that contradict the gold
    sft_keep_no_work: bool = False  # SFT targets from solutions that only state the result (no step shown)
    # The share of train rows whose worked solution SFT may use (chosen by question hash); the others are question
    # and answer only, as when a user holds more answers than solutions: GRPO trains on them, SFT cannot.
    solution_fraction: float = 1.0
    skip_invalid_rows: bool = False  # count and skip rows with empty fields or no number
    limit: int | None = None  # read only the first N rows (quick trials)


@dataclass
class PromptConfig:
    template: str = "### Kullanıcı:\n{instruction}\n\n{question}\n### Asistan:\n"
    instruction: str = DEFAULT_INSTRUCTION
    reasoning_tag: str = "sebep"
    answer_tag: str = "cevap"


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # null: every linear layer of the architecture


@dataclass
class EvalConfig:
    split: str = "test"
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 256
    temperature: float = 0.0
    every_steps: int = 0  # GRPO grades held-out answers every N steps (0: never)
    # With every_steps: GRPO's output is the adapter of its best held-out check (its start, step 0, among them)
    # rather than its last step's. Off: a small held-out set chooses by noise (docs/benchmarks.md, section 6)
    grpo_keep_best: bool = False
    held_out_split: str = "validation"  # what that in-training check answers; test is for final evaluation
    held_out_size: int = 64  # how many of its questions (SFT's evaluations grade them too)
    sft_patience: int = 0  # stop SFT after this many evaluations without a better metric_for_best_model (0: never)
    device: str | None = None  # null: CUDA, else MPS, else CPU (--device overrides)
    dtype: str = "auto"  # auto: bf16 on a GPU that has it, else fp16 on a GPU, float32 on CPU


@dataclass
class PromptFilterConfig:
    samples: int = 0  # answers per training prompt from the model GRPO starts from; 0: no filtering
    keep_above: float = 0.0  # keep prompts whose pass rate is above this ...
    keep_below: float = 1.0  # ... and below this: by default neither always wrong nor always right
    temperature: float | None = None  # null: GRPO's sampling temperature
    max_new_tokens: int | None = None  # null: grpo.max_completion_length
    batch_size: int = 64  # prompts per generation batch


SPLITS = ("train", "validation", "test")  # what `prepare` writes


def _default_rewards() -> dict[str, float | dict[str, Any]]:
    return {"correctness": 1.0, "strict_format": 1.0, "soft_format": 1.0, "xmlcount": 1.0}


@dataclass
class Recipe:
    output_dir: str = "runs/default"
    seed: int = 42
    on_non_finite: str = "stop"  # a NaN/inf loss or gradient: stop at the last good checkpoint, or skip the step
    sized_for_gib: float | None = None  # the GPU memory (GiB) this recipe is sized for; plan and check warn past it
    # How generate runs each decoding step, in GRPO's rollouts and every evaluation: auto (placement's choice:
    # compiled on CUDA with Triton, else eager, and eager once compiling failed), eager, compiled (a static cache
    # and torch.compile, CUDA graphs on a GPU; infer/compiled_decoding.py), or compiled-step (the whole step one
    # graph; infer/compiled_step.py).
    decoding: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    # name: weight, or name: {weight: w, <the reward's parameters>} (grading/rewards.py)
    rewards: dict[str, float | dict[str, Any]] = field(default_factory=_default_rewards)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prompt_filter: PromptFilterConfig = field(default_factory=PromptFilterConfig)


# An empty text key is refused where it is written: `data.dataset=` read the working directory, `eval.device=` the
# default. These keys say what to name instead.
_EMPTY_HINTS = {"output_dir": "name a folder for the run, e.g. output_dir=runs/try1",
                "model.name_or_path": "name a Hub id, a folder or builtin:NAME",
                "data.dataset": "name a Hub id, a file or folder, or synthetic[:N]",
                "data.reference": "name English GSM8K's Hub id or folder, or none"}
_MAY_BE_EMPTY = ("prompt.instruction",)


def _empty_hint(key: str, tp: Any) -> str:
    nullable = type(None) in typing.get_args(tp)
    return _EMPTY_HINTS.get(key, "give it a value, or null for its default" if nullable else "give it a value")


def _merge(target: Any, values: dict[str, Any], prefix: str = "", update_maps: bool = False) -> None:
    """Write `values` into the dataclass `target`, checking keys and types.

    A recipe file replaces a mapping section (`rewards:` lists the rewards to
    use); a command-line override updates it (`rewards.correctness=2` keeps
    the other rewards, and `rewards.correctness.requires_format=strict` keeps
    its weight).
    """
    if not isinstance(values, dict):
        raise UserError(f"recipe section {prefix.rstrip('.') or 'top level'!r} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            where = f"section {prefix.rstrip('.')!r}" if prefix else "the recipe"
            raise UserError(f"unknown recipe key {key!r}{did_you_mean(name, fields, prefix)}; valid keys in {where}: "
                            f"{', '.join(fields)}")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{key}.", update_maps)
        else:
            value = coerce(value, hints[name], key)
            if isinstance(value, str) and not value.strip() and key not in _MAY_BE_EMPTY:
                raise UserError(f"recipe key {key!r} is empty; {_empty_hint(key, hints[name])}")
            if update_maps and isinstance(current, dict):
                merge = _merge_reward if name == "rewards" and not prefix else lambda old, new: new
                value = {**current, **{k: merge(current.get(k), v) for k, v in value.items()}}
            setattr(target, name, value)


def _merge_reward(old: Any, new: Any) -> Any:
    """An override of one reward entry: a weight or parameters, each keeping the other.

    >>> _merge_reward(2.0, {"requires_format": "strict"}), _merge_reward({"weight": 2.0, "requires_format": "soft"}, 3.0)
    ({'weight': 2.0, 'requires_format': 'strict'}, {'weight': 3.0, 'requires_format': 'soft'})
    """
    if old is None or not isinstance(old, dict) and not isinstance(new, dict):
        return new
    old = old if isinstance(old, dict) else {"weight": old}
    return {**old, **(new if isinstance(new, dict) else {"weight": new})}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `a.b=value` strings into a nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (for example sft.max_steps=3)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return nested


def _check(recipe: Recipe) -> None:
    """Cross-field rules that one key's type cannot express."""
    for name, template in (("prompt.template", recipe.prompt.template), ("prompt.instruction", recipe.prompt.instruction)):
        allowed = {"question", "instruction"} if name == "prompt.template" else set()
        allowed |= {"reasoning_tag", "answer_tag"}
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as error:
            raise UserError(f"recipe key {name!r} is not a valid template ({error}); write literal braces as {{{{ }}}}")
        unknown = fields - allowed
        if unknown:
            raise UserError(f"recipe key {name!r} uses unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if "{question}" not in recipe.prompt.template:
        raise UserError("recipe key 'prompt.template' must contain {question}")
    tags = {key: getattr(recipe.prompt, key) for key in ("reasoning_tag", "answer_tag")}
    for key, tag in tags.items():
        if not re.fullmatch(r"[^\s<>/]+", tag):
            raise UserError(f"recipe key 'prompt.{key}' must be a tag name without spaces, <, > or /, got {tag!r}")
    if len(set(tags.values())) < 2:
        raise UserError(f"recipe keys 'prompt.reasoning_tag' and 'prompt.answer_tag' must differ, both are "
                        f"{recipe.prompt.answer_tag!r}: the answer would be read from the reasoning")
    if not 0 <= recipe.seed < 2**32:  # numpy's range, which transformers' set_seed seeds too
        raise UserError(f"recipe key 'seed' must be from 0 to 2**32 - 1, got {recipe.seed}")
    lora = recipe.lora
    if lora.r < 1 or lora.alpha <= 0 or not 0.0 <= lora.dropout < 1.0:
        # alpha 0 scales the adapter's output to nothing (it would train nothing); dropout 1 drops every input
        raise UserError(f"recipe section 'lora' needs r >= 1, alpha > 0 and 0 <= dropout < 1, got r={lora.r}, "
                        f"alpha={lora.alpha}, dropout={lora.dropout}")
    if lora.target_modules == []:  # PEFT would read an empty list as its default, every linear layer, unasked
        raise UserError("recipe key 'lora.target_modules' is an empty list; name the layers to adapt, or set it to "
                        "null for every linear layer")
    for key in ("min_align_score", "min_align_margin"):  # alignment scores lie in [0, 1]
        if not 0.0 <= getattr(recipe.data, key) <= 1.0:
            raise UserError(f"recipe key 'data.{key}' must be in [0, 1], got {getattr(recipe.data, key)}")
    if recipe.sized_for_gib is not None and recipe.sized_for_gib <= 0:
        raise UserError(f"recipe key 'sized_for_gib' must be above 0 (GiB), got {recipe.sized_for_gib}")
    if recipe.data.unaligned_split not in ("train", "test"):
        raise UserError(f"recipe key 'data.unaligned_split' must be 'train' or 'test', got {recipe.data.unaligned_split!r}")
    from gsm8k_tr.placement import DECODINGS  # light: no torch

    if recipe.decoding not in DECODINGS:
        raise UserError(f"recipe key 'decoding' must be one of {', '.join(DECODINGS)}, got {recipe.decoding!r}")
    if recipe.on_non_finite not in ("stop", "skip"):
        raise UserError(f"recipe key 'on_non_finite' must be 'stop' or 'skip', got {recipe.on_non_finite!r}")
    for key in ("test_fraction", "validation_fraction"):
        value = getattr(recipe.data, key)
        if not 0.0 <= value < 1.0:
            raise UserError(f"recipe key 'data.{key}' must be in [0, 1), got {value}")
    if not 0.0 <= recipe.data.solution_fraction <= 1.0:
        raise UserError(f"recipe key 'data.solution_fraction' must be in [0, 1], got {recipe.data.solution_fraction}")
    pf = recipe.prompt_filter
    if pf.samples < 0 or pf.batch_size < 1 or not 0.0 <= pf.keep_above < pf.keep_below <= 1.0:
        raise UserError("recipe section 'prompt_filter' needs samples >= 0, batch_size >= 1 and "
                        f"0 <= keep_above < keep_below <= 1, got {dataclasses.asdict(pf)}")
    if pf.samples and not any(pf.keep_above < j / pf.samples < pf.keep_below for j in range(pf.samples + 1)):
        # found only after every training prompt was answered K times, which on the real data takes a while
        raise UserError(f"recipe section 'prompt_filter': with samples={pf.samples} a pass rate is a multiple of "
                        f"1/{pf.samples}, and none lies strictly between keep_above={pf.keep_above} and "
                        f"keep_below={pf.keep_below}, so no prompt would be kept; raise samples or widen the bounds")
    ev = recipe.eval
    for key in ("split", "held_out_split"):
        if getattr(ev, key) not in SPLITS:
            raise UserError(f"recipe key 'eval.{key}' must be one of {', '.join(SPLITS)}, got {getattr(ev, key)!r}")
    for key, low in (("batch_size", 1), ("max_new_tokens", 1), ("every_steps", 0), ("held_out_size", 1),
                     ("sft_patience", 0)):
        if getattr(ev, key) < low:
            raise UserError(f"recipe key 'eval.{key}' must be at least {low}, got {getattr(ev, key)}")
    if ev.limit is not None and ev.limit < 1:
        raise UserError(f"recipe key 'eval.limit' must be at least 1 (or null for every question), got {ev.limit}")
    if ev.grpo_keep_best and not ev.every_steps:
        raise UserError("recipe key 'eval.grpo_keep_best' keeps GRPO's best held-out check, which needs "
                        "eval.every_steps above 0")
    if ev.temperature < 0:
        raise UserError(f"recipe key 'eval.temperature' must be 0 (greedy) or more, got {ev.temperature}")
    if pf.temperature is not None and pf.temperature <= 0:
        raise UserError(f"recipe key 'prompt_filter.temperature' must be above 0 (it samples), got {pf.temperature}")
    if pf.max_new_tokens is not None and pf.max_new_tokens < 1:
        raise UserError(f"recipe key 'prompt_filter.max_new_tokens' must be at least 1, got {pf.max_new_tokens}")
    if recipe.eval.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"recipe key 'eval.dtype' must be auto, float32, bfloat16 or float16, got {recipe.eval.dtype!r}")
    if recipe.data.limit is not None and recipe.data.limit < 1:
        raise UserError(f"recipe key 'data.limit' must be at least 1, got {recipe.data.limit}")
    from gsm8k_tr.grading.rewards import reward_spec  # light: pure Python

    for name, entry in recipe.rewards.items():
        reward_spec(name, entry)  # a known reward, its weight and parameters


def _yaml_problem(error: BaseException) -> str:
    """Where and what: PyYAML's first line is only its context ("while scanning for the next token")."""
    import yaml

    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if not isinstance(error, yaml.MarkedYAMLError) or mark is None or not problem:
        return one_line(error)
    hint = "; indent with spaces, not tabs" if "'\\t'" in problem else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}{hint}"


class _OneKeyOnceLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping. YAML forbids it, but PyYAML keeps the last
    without a word: a recipe with two `sft:` sections would train with the second alone."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: keys written beside it override it
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = lines.setdefault(key, key_node.start_mark.line)
            except TypeError:  # a list or a mapping as a key: the safe loader's own error says so
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice in one section (first on line {first + 1}); keep one, "
                    "as YAML takes only the last", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Build a Recipe from defaults, an optional YAML file, then overrides."""
    recipe = Recipe()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"recipe file {str(path)!r} does not exist")
        try:
            values = yaml.load(path.read_text(encoding="utf-8"), Loader=_OneKeyOnceLoader) or {}  # a safe loader
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise UserError(f"recipe file {str(path)!r} is not valid YAML: {_yaml_problem(error)}") from None
        _merge(recipe, values)
    if overrides:
        _merge(recipe, parse_overrides(overrides) if isinstance(overrides, list) else overrides, update_maps=True)
    _check(recipe)
    # `~` is the user's home, not a folder "~" in the working directory; transformers read "~/model" as a bad Hub id.
    recipe.output_dir = str(Path(recipe.output_dir).expanduser())
    for key in ("name_or_path", "sft_output"):
        if (value := getattr(recipe.model, key)) and value.startswith("~"):
            setattr(recipe.model, key, str(Path(value).expanduser()))
    return recipe


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data, in field order."""
    return dataclasses.asdict(recipe)


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each dotted key whose value differs between two nested mappings, as "key old -> new".

    >>> changed_keys({"eval": {"limit": 8, "split": "test"}}, {"eval": {"limit": 16, "split": "test"}})
    ['eval.limit 8 -> 16']
    """
    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    old, new = flat(before), flat(now)
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)]


def save_recipe(recipe: Recipe, directory: str | Path) -> Path:
    """Write the resolved recipe into `directory` as `recipe.yaml`."""
    target = Path(directory) / "recipe.yaml"
    target.write_text(
        "# Resolved recipe (defaults < recipe file < command-line overrides)\n"
        + yaml.safe_dump(recipe_dict(recipe), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return target
