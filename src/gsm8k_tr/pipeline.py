"""`gsm8k-tr pipeline`: prepare → sft → grpo, an evaluation after each, and the report.

It chains the stage commands' own functions, so a pipeline run and the
commands typed one by one write the same folders. `report.json` in the run
folder sums it up: per stage (`base`, `sft`, `grpo`) the evaluation metrics
and the wall time of training and of evaluation.

`--resume` keeps what already finished (prepared data, finished stages, and
evaluations whose inputs are unchanged) and continues an interrupted stage
from its last checkpoint; `--overwrite` starts the run again from nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsm8k_tr.config import Recipe, changed_keys, recipe_dict
from gsm8k_tr.errors import UserError
from gsm8k_tr.outputs import atomic_write_text
from gsm8k_tr.run_folder import held_by_one_run, read_metrics

log = logging.getLogger(__name__)

STAGES = ("base", "sft", "grpo")
METRICS = ("split", "accuracy", "flexible_accuracy", "strict_format_rate", "soft_format_rate", "mean_completion_tokens",
           "truncated_rate", "n")
RUN_PARTS = ("data", "sft", "grpo", "eval", "report.json")


def _check_run_folder(run: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse what cannot go on; return what --overwrite removes (only what a pipeline writes)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one")
    if run.exists() and not run.is_dir():
        raise UserError(f"{run} exists and is not a folder; choose another output_dir")
    held = [part for part in RUN_PARTS if (run / part).exists()]
    if held and not resume and not overwrite:
        raise UserError(f"{run} already holds a run ({', '.join(held)}); pass --resume to continue it "
                        "or --overwrite to start again")
    return [run / part for part in held] if overwrite else []


# The recipe's keys besides the model that shape an evaluation's answers. A finished evaluation is reused on
# --resume only when they and its model are unchanged. The eval section's other keys shape training (GRPO's
# held-out checks, SFT's patience).
EVALUATION_KEYS = ("seed", "decoding", "prompt", *(f"eval.{key}" for key in ("split", "limit", "batch_size",
                                                                             "max_new_tokens", "temperature",
                                                                             "device", "dtype")))


def _evaluation_inputs(recipe: Recipe, name: str, data: str) -> dict[str, Any]:
    """What stage `name`'s evaluation depends on: the prepared data (`data`, its fingerprint), the recipe's
    `EVALUATION_KEYS`, and the model (the base model's recipe keys, or when the trained stage finished)."""
    from gsm8k_tr.run_folder import read_manifest

    settings = recipe_dict(recipe)
    inputs: dict[str, Any] = {"data": data}
    for key in EVALUATION_KEYS:
        section, _, part = key.partition(".")
        if part:
            inputs.setdefault(section, {})[part] = settings[section][part]
        else:
            inputs[key] = settings[key]
    if name == "base":
        inputs["model"] = {k: v for k, v in settings["model"].items() if k != "sft_output"}
    else:
        manifest = read_manifest(Path(recipe.output_dir) / name)  # the stage as GRPO records the SFT it starts from
        inputs["model"] = {key: manifest.get(key) for key in ("finished_at", "train_seconds")}
    return json.loads(json.dumps(inputs))  # as metrics.json reads back: lists, not tuples


def _evaluate(recipe: Recipe, name: str, model: str, resume: bool, data: str) -> tuple[dict[str, Any], float]:
    from gsm8k_tr.infer import evaluate

    output = Path(recipe.output_dir) / "eval" / name
    metrics_file = output / "metrics.json"
    inputs = _evaluation_inputs(recipe, name, data)
    if resume and metrics_file.is_file():
        result = read_metrics(metrics_file, "remove it to evaluate again")
        saved = result.get("evaluated_with")
        if saved == inputs:
            log.info("evaluation %s already done", name)
            return result, float(result.get("seconds", 0.0))
        # evaluated again rather than kept (as a finished stage is): the report compares stages question by question,
        # so each must answer the same questions the same way, and an evaluation costs far less than training
        changes = "; ".join(changed_keys(saved, inputs)) if isinstance(saved, dict) else "its inputs were not recorded"
        log.warning("--resume: %s was evaluated with other inputs than now (%s); evaluating it again", output, changes)
    started = time.perf_counter()
    result = evaluate.main(model, recipe, output=str(output), overwrite=True, evaluated_with=inputs)
    return result, time.perf_counter() - started


# Held here as well as in the stages' own mains, which are re-entrant: a second run into a busy folder stops before
# importing TRL: `grpo` in 6.9 s rather than 15.3, `sft` in 4.8 rather than 10.3 (measured on 2 cores).
@held_by_one_run
def _run_sft(recipe: Recipe, resume: bool = False, overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    from gsm8k_tr.train import sft

    return sft.main(recipe, resume=resume, overwrite=overwrite, check=check)


@held_by_one_run
def _run_grpo(recipe: Recipe, resume: bool = False, overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    from gsm8k_tr.train import grpo

    return grpo.main(recipe, resume=resume, overwrite=overwrite, check=check)


# The training stages by name, for the pipeline and the `sft`/`grpo` commands. Imported when run, so the CLI's
# --help does not load torch.
TRAINING_STAGES: dict[str, Callable[..., dict[str, Any]]] = {"sft": _run_sft, "grpo": _run_grpo}


def _train(recipe: Recipe, stage: str, resume: bool) -> float:
    manifest = TRAINING_STAGES[stage](recipe, resume=resume, overwrite=False, check=False)  # checked at the start
    return float(manifest.get("train_seconds", 0.0))


def summary(stages: dict[str, dict[str, Any]]) -> list[str]:
    """A plain-text table of accuracy and format rate per stage."""
    lines = [f"{'stage':<6} {'split':<10} {'n':>5} {'accuracy':>9} {'flexible':>9} {'strict fmt':>11} {'soft fmt':>9} "
             f"{'train s':>8}"]
    for name, s in stages.items():
        lines.append(f"{name:<6} {s.get('split', ''):<10} {s['n']:>5} {s['accuracy']:>9.3f} {s['flexible_accuracy']:>9.3f} "
                     f"{s['strict_format_rate']:>11.3f} {s['soft_format_rate']:>9.3f} {s['train_seconds']:>8.0f}")
    return lines


@held_by_one_run
def main(recipe: Recipe, resume: bool = False, overwrite: bool = False,
         announce: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage of `recipe`; returns what it writes to `{output_dir}/report.json`."""
    from gsm8k_tr import report
    from gsm8k_tr.data.splits import fingerprint, prepared_folder
    from gsm8k_tr.processes import process_state
    from gsm8k_tr.run_folder import grpo_held_out, prepared_data
    from gsm8k_tr.train import recipe_check

    run = Path(recipe.output_dir)
    recipe_check.check(recipe)  # every section, before any data is prepared or any model loaded
    remove = _check_run_folder(run, resume, overwrite)  # every process decides the same, so an error stops all
    state = process_state()  # under accelerate launch every process runs this; only the main one writes and speaks
    if state.is_main_process:
        for target in remove:  # a user's other files in the folder stay
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:
        announce = _silent
    state.wait_for_everyone()
    started = time.perf_counter()
    folder, ready = prepared_folder(recipe)  # data.dataset may name a folder `prepare` wrote: read there, as it is
    announce(f"[1/7] {'prepared data in' if ready else 'preparing data into'} {folder}")
    data_dir = prepared_data(recipe)
    prepare_seconds = time.perf_counter() - started
    data = fingerprint(data_dir)  # what each evaluation records it answered, read once

    stages: dict[str, dict[str, Any]] = {}
    models = {"base": recipe.model.name_or_path, "sft": str(run / "sft"), "grpo": str(run / "grpo")}
    step = 2
    for name in STAGES:
        train_seconds = 0.0
        if name != "base":
            announce(f"[{step}/7] training: {name}")
            train_seconds = _train(recipe, name, resume)
            step += 1
        announce(f"[{step}/7] evaluating {name} on the {recipe.eval.split} split")
        result, eval_seconds = _evaluate(recipe, name, models[name], resume, data)
        step += 1
        stages[name] = {**{k: result[k] for k in METRICS}, "train_seconds": round(train_seconds, 1),
                        "eval_seconds": round(eval_seconds, 1),
                        "seconds": round(train_seconds + eval_seconds, 1)}
    paired = report.comparisons(run)  # each stage against the one before, question by question
    result = {"run": str(run), "data": str(data_dir), "stages": stages, "held_out_during_grpo": grpo_held_out(run),
              "comparisons": [p.as_dict() for p in paired],
              "prepare_seconds": round(prepare_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1)}
    if state.is_main_process:
        atomic_write_text(run / "report.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        report_path = report.main(str(run))
        for line in [*summary(stages), *(p.sentence() for p in paired)]:
            announce(line)
        announce(f"report: {report_path} (plots: {', '.join(p.name for p in sorted(run.glob('*.png')))})")
    state.wait_for_everyone()
    return result


def _silent(line: str) -> None:
    """The announcer of processes other than the main one."""
