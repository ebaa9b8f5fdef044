"""Writers of malformed inputs: recipes and data files that users get wrong.

Each case is (name, what to run, the fragment the one-line error must hold).
The tests run every case; `python tests/reliability/corpus.py DIR` writes them
to look at.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# Recipe files, as YAML text → the fragment naming the key (or the file's problem).
RECIPES: dict[str, tuple[str, str]] = {
    "unknown_key": ("sft:\n  max_stepz: 3\n", "sft.max_stepz"),
    "unknown_section": ("trainer:\n  lr: 1\n", "trainer"),
    "unknown_model_key": ("model:\n  nam: gpt2\n", "model.nam"),
    "wrong_type_steps": ("sft:\n  max_steps: ten\n", "sft.max_steps"),
    "wrong_type_lora_r": ("lora:\n  r: [1, 2]\n", "lora.r"),
    "wrong_type_section": ("grpo: 5\n", "grpo"),
    "not_a_mapping": ("- a\n- b\n", "mapping"),
    "yaml_syntax": ("sft: {max_steps: 3\n", "YAML"),
    "negative_batch": ("sft:\n  per_device_train_batch_size: -4\n", "sft.per_device_train_batch_size"),
    "zero_batch": ("grpo:\n  per_device_train_batch_size: 0\n", "grpo.per_device_train_batch_size"),
    "zero_steps": ("sft:\n  max_steps: 0\n", "sft.max_steps"),
    "zero_generations": ("grpo:\n  num_generations: 0\n", "grpo.num_generations"),
    "generations_do_not_divide": ("grpo:\n  per_device_train_batch_size: 6\n  num_generations: 4\n", "divisible"),
    "steps_per_generation_with_auto": ("grpo:\n  per_device_train_batch_size: auto\n  steps_per_generation: 16\n",
                                       "grpo.generation_batch_size"),
    "completion_past_context": ("grpo:\n  max_completion_length: 100000\n", "grpo.max_completion_length"),
    "sft_length_past_context": ("sft:\n  max_length: 100000\n", "sft.max_length"),
    "forced_key": ("sft:\n  output_dir: /tmp/elsewhere\n", "sft.output_dir"),
    "secret_in_recipe": ("grpo:\n  hub_token: hf_abcdefgh\n", "HF_TOKEN"),
    "unknown_reward": ("rewards:\n  corectness: 1.0\n", "corectness"),
    "bad_stop_token": ("model:\n  stop_token: '<|no such token|>'\n", "stop"),
    "fp16_on_cpu": ("sft:\n  fp16: true\n", "fp16"),  # bf16 trains on a CPU with bf16 instructions
    "missing_report_backend": ("sft:\n  report_to: [nosuchtracker]\n", "nosuchtracker"),
}


def write_recipes(folder: Path, base: dict | None = None) -> dict[str, Path]:
    """Each malformed recipe as a file in `folder`: `base` (a working recipe) with the case's edit merged in.

    Edits that are not a mapping of sections (a list, broken YAML, a section
    that is a number) are written as they are.
    """
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (text, _) in RECIPES.items():
        paths[name] = folder / f"{name}.yaml"
        try:
            edit = yaml.safe_load(text)
        except yaml.YAMLError:
            edit = None
        if base is not None and isinstance(edit, dict) and all(isinstance(v, dict) for v in edit.values()):
            merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
            for section, values in edit.items():
                merged[section] = {**(merged.get(section) or {}), **values}
            text = yaml.safe_dump(merged, allow_unicode=True)
        paths[name].write_text(text, encoding="utf-8")
    return paths


def _csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or ["question", "answer"])
        writer.writerows(rows)
    return path


GOOD = ["Ali'nin 2 elması var, 3 tane daha alıyor. Kaç elması olur?", "2 + 3 = 5 elma."]


def write_data(folder: Path) -> dict[str, tuple[Path, str, dict[str, int] | None]]:
    """Malformed data files → (path, error fragment, dropped counts or None).

    A fragment means `prepare` stops with that one-line error unless
    `data.skip_invalid_rows=true`, which then skips and counts the rows. An
    empty fragment means the file is read as it is, with those rows counted
    as dropped in prepare_report.json.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str, dict[str, int] | None]] = {}
    empty = folder / "empty.csv"
    empty.write_text("")
    cases["empty_file"] = (empty, "file is empty", None)
    header_only = _csv(folder / "header_only.csv", [])
    cases["header_only"] = (header_only, "has no rows", None)
    latin = folder / "latin1.csv"
    latin.write_bytes("question,answer\nAyşe'nin 3 elması var,3 elma\n".encode("cp1254"))
    cases["wrong_encoding"] = (latin, "not UTF-8", None)
    utf16 = folder / "utf16.jsonl"
    utf16.write_bytes(json.dumps({"question": GOOD[0], "answer": GOOD[1]}).encode("utf-16"))
    cases["utf16_with_bom"] = (utf16, "", {})  # Excel's "Unicode text": read, not refused
    cases["missing_column"] = (_csv(folder / "cols.csv", [GOOD], ["soru", "yanit"]), "no column 'question'", None)
    ragged = _csv(folder / "ragged.csv", [GOOD])
    with open(ragged, "a", encoding="utf-8") as handle:
        handle.write('"only one field"\n"three","fields","here"\n')
    # refused with its line (an unclosed quote swallows the rows after it: a count alone hid where), or counted
    cases["ragged_csv"] = (ragged, "ragged.csv:3: 1 field where the header has 2", {"ragged_csv_row": 2})
    broken = folder / "broken.jsonl"
    broken.write_text(json.dumps({"question": GOOD[0], "answer": GOOD[1]}) + '\n{"question": "x 1", "answer":\n')
    cases["broken_json_line"] = (broken, "broken.jsonl:2", None)
    not_object = folder / "not_object.jsonl"
    not_object.write_text(json.dumps({"question": GOOD[0], "answer": GOOD[1]}) + "\n[1, 2, 3]\n")
    cases["json_line_not_object"] = (not_object, "not_object.jsonl:2", None)
    huge = _csv(folder / "huge.csv", [GOOD, ["Kaç? " + "9" * 2_000_000, "1"]])
    cases["huge_field"] = (huge, "huge.csv:3: a field of over 1,000,000 characters", {"field_too_long": 1})
    cases["no_numbers"] = (_csv(folder / "nonum.csv", [GOOD, ["Kaç elma var?", "Bilmiyorum."]]),
                           "nonum.csv:3: no number", {"no_number": 1})
    cases["empty_question"] = (_csv(folder / "noq.csv", [GOOD, ["   ", "3 elma"]]), "noq.csv:3: empty question",
                               {"empty_question": 1})
    binary = folder / "binary.parquet"
    binary.write_bytes(b"\x00\x01 not parquet at all")
    cases["corrupt_parquet"] = (binary, "binary.parquet", None)
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "malformed")
    write_recipes(target / "recipes")
    print(f"wrote {len(RECIPES)} recipes and {len(write_data(target / 'data'))} data files under {target}")
