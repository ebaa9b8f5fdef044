"""A finished stage's outputs: adapter, merged model, recipe, manifest, log history, model card.

Each folder is written to a temporary sibling and renamed into place, and
`manifest.json` comes last, so a kill during the final save leaves a stage that
`--resume` finishes instead of one that looks complete.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe, save_recipe
from gsm8k_tr.errors import UserError
from gsm8k_tr.outputs import atomic_directory
from gsm8k_tr.train.disk import RESUME
from gsm8k_tr.train.faults import inject_fault

PACKAGES = ("gsm8k-tr", "torch", "transformers", "peft", "trl", "datasets", "accelerate")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The source checkout's commit, when running from one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


ADAPTER_STAGING = ".adapter.saving"  # where trainer.save_model writes the gathered adapter
RESUME_ONLY = ("training_args.bin",)  # the Trainer's pickled arguments: resume state, not an output


def merge_adapter(recipe: Recipe, base: str | None, adapter: Path, stop: str) -> Any:
    """The base model (a folder, or None for the recipe's model) with the adapter merged in, on the CPU, float32.

    Built from the files, not from the training model: that one may be
    sharded across processes, and this is the route a user takes too.
    """
    from gsm8k_tr import modeling

    modeling.refuse_pickle(adapter)  # before the minutes of loading the base
    tokenizer, model = modeling.load_tokenizer(recipe.model, base), modeling.load_model(recipe.model, base)
    modeling.configure_tokens(tokenizer, model, stop)
    return modeling.merged_adapter(model, adapter)


def save_stage(trainer: Any, folder: Path, recipe: Recipe, stage: str, info: dict[str, Any], staging: Path,
               base: str | None) -> dict[str, Any]:
    """Write every stage output into `folder` from the adapter in `staging` (main process only); returns the manifest."""
    if not (staging / "adapter_model.safetensors").is_file():
        raise UserError(f"the trainer saved no adapter weights into {staging}; under FSDP set "
                        "fsdp_state_dict_type: FULL_STATE_DICT in the accelerate config (recipes/accelerate/fsdp.yaml)")
    tokenizer = trainer.processing_class
    with atomic_directory(folder / "adapter", overwrite=True, remedy=RESUME) as tmp:
        for path in staging.iterdir():
            if path.name not in RESUME_ONLY:
                shutil.move(str(path), tmp / path.name)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(staging, ignore_errors=True)
    merged = merge_adapter(recipe, base, folder / "adapter", info["stop_token"])
    with atomic_directory(folder / "merged", overwrite=True, remedy=RESUME) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        inject_fault("kill-during-merge")  # the merged model is half in place: its folder is still temporary
        tokenizer.save_pretrained(tmp)
    save_recipe(recipe, folder)
    history = trainer.state.log_history
    (folder / "log_history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    manifest = {
        "stage": stage,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "global_step": trainer.state.global_step,
        "seed": recipe.seed,
        "git_commit": git_commit(),
        "versions": versions(),
        "command": " ".join(sys.argv),
        **info,
    }
    (folder / "README.md").write_text(model_card(recipe, stage, manifest, history), encoding="utf-8")
    tmp_manifest = folder / ".manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp_manifest.replace(folder / "manifest.json")
    return manifest


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    values = [entry[key] for entry in history if isinstance(entry.get(key), (int, float))]
    return values[-1] if values else None


def model_card(recipe: Recipe, stage: str, manifest: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """A Hugging Face style README.md for the merged model."""
    base = manifest.get("base_model", recipe.model.name_or_path)
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: transformers",
        f"tags: [gsm8k-tr, {stage}, lora, trl, turkish, math]",
        "language: [tr]",
        "---",
        f"# {Path(recipe.output_dir).name} / {stage}",
        "",
        f"{stage.upper()} with LoRA (r={recipe.lora.r}, alpha={recipe.lora.alpha}) on `{base}`, trained by gsm8k-tr.",
        f"The model answers in `<{recipe.prompt.reasoning_tag}>` reasoning and `<{recipe.prompt.answer_tag}>` answer "
        f"tags and stops on `{manifest.get('stop_token')}`.",
        "",
        "| | |", "|---|---|",
        f"| steps | {manifest['global_step']} |",
        f"| data | `{recipe.data.dataset}` (fingerprint {manifest.get('data_fingerprint')}) |",
        f"| rows | {manifest.get('data_counts')} |",
        f"| device | {manifest.get('device')} |",
        f"| wall time | {manifest.get('train_seconds', 0):.0f} s |",
    ]
    for key in ("train_loss", "loss", "reward", "accuracy"):
        value = _last(history, key)
        if value is not None:
            lines.append(f"| last {key} | {value:.4g} |")
    lines += [
        "",
        "`merged/` holds the full model (safetensors); `adapter/` the LoRA adapter alone.",
        "`recipe.yaml` reproduces the run; `manifest.json` has package versions, the commit and the seed.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("merged")',
        'tokenizer = AutoTokenizer.from_pretrained("merged")',
        "```",
        "",
    ]
    return "\n".join(lines)
