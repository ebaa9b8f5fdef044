"""Does GRPO pay for its cost? From the same SFT start, the same budget spent two ways, over seeds.

    python benchmarks/sft_vs_grpo.py                                  # the demo recipe, seeds 42 43 44
    python benchmarks/sft_vs_grpo.py --seeds 42 --grpo-steps 100 grpo.learning_rate=5e-4

For each seed:
1. SFT to its plateau: the recipe's SFT with its evaluations and
   `eval.sft_patience` (validation accuracy stops improving; the best
   checkpoint is kept). This is the common start.
2. (b) GRPO from it, as the recipe says (the in-training held-out check off: it
   is monitoring, not training). Its wall time is the budget.
3. (a) More SFT from the same start for the same wall time: a fresh LoRA
   adapter on the start's merged weights, the recipe's SFT settings, as many
   steps as the budget buys at the start's own timing (`timing`: its seconds
   per step, per held-out check and once per run), evaluated as
   the recipe's SFT evaluates, the best checkpoint by validation kept (no
   early stop: it may use its whole budget).
4. (c) SFT alone from the base model for the pipeline's whole budget (the
   start's time plus GRPO's), as one run with one learning-rate schedule, the
   best checkpoint by validation kept: what a user would get by not running
   GRPO at all.
All are graded on the test split at the end, (a) and (b) also at `--points`
checkpoints on the way (the curve of accuracy against budget; the reported
(a) is its best checkpoint by validation, as SFT keeps). The budget is also counted in
tokens: trained (TRL's `num_tokens`, prompt and completion) plus generated.

Prints a table per seed, the mean and spread over seeds, and the mean gain of
(b) over (a) and (c). Each seed's (b) is also paired with (a), (c) and the start
on the same test questions (questions better and worse, exact sign test), and
over all seeds question by question (`pooled`: one sign test per way); writes
`{output}/sft_vs_grpo.json` and `{output}/sft_vs_grpo.png` (`gsm8k-tr report
{output}` shows them too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CALLED = time.time()  # a stage whose manifest finished before this was trained by an earlier call


def _earlier(manifest: dict[str, Any]) -> bool:
    return datetime.strptime(manifest["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp() < CALLED


SHORT = 0.9  # an SFT way with less of its budget than this is named


def timing(manifest: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, float]:
    """An SFT run's wall time in three parts, from its manifest and log history: `step`, the mean optimizer step
    (the `step_time` each training log carries, weighted by the steps it covers); `check`, each held-out check with
    its checkpoint (the trainer's runtime less its steps, over its checks); `once`, the rest of the stage's
    `train_seconds` (outside `trainer.train`). The SFT ways are sized with these, not with the start's seconds per
    step: those spread a short run's checks over its few steps, and gave the long SFT ways 0.76-1.08 of their
    budget."""
    steps = seconds = 0.0
    logged = 0
    for entry in history:
        if "loss" not in entry:
            continue
        if "step_time" in entry:
            steps += entry["step"] - logged
            seconds += entry["step_time"] * (entry["step"] - logged)
        logged = entry["step"]
    runtime = next((e["train_runtime"] for e in history if "train_runtime" in e), None)
    if not steps or runtime is None:  # e.g. a start shorter than its logging_steps logs no step time
        print("the SFT start's log history has no step time or no train_runtime (a start shorter than "
              "sft.logging_steps logs no step time): the SFT ways are sized by its seconds per step, which counts "
              "its checks and start-up as steps", flush=True)
        return {"step": manifest["train_seconds"] / max(1, manifest["global_step"]), "check": 0.0, "once": 0.0}
    step = seconds / steps
    checks = sum("eval_runtime" in e for e in history)
    return {"step": step, "check": max(0.0, runtime - manifest["global_step"] * step) / checks if checks else 0.0,
            "once": max(0.0, manifest["train_seconds"] - runtime)}


def sft_steps(budget: float, timed: dict[str, float], checks: int = 0, every: int = 0) -> int:
    """The steps an SFT run trains in `budget` seconds at the start's `timing`, with `checks` held-out checks in all
    or one each `every` steps."""
    per_step = timed["step"] + (timed["check"] / every if every else 0.0)
    return max(1, round((budget - timed["once"] - checks * timed["check"]) / per_step))


def _checks(sft: dict[str, Any]) -> dict[str, int]:
    """How often an SFT section checks held-out accuracy, as `sft_steps` takes it: one each `every` steps, or
    `checks` in all (`eval_steps` below 1 is a share of the run). Checks by epoch are not counted: the recipes
    check by steps."""
    if str(sft.get("eval_strategy", "no")).lower() != "steps":
        return {}
    every = sft.get("eval_steps") or sft.get("logging_steps") or 500  # TrainingArguments' defaults
    return {"checks": round(1 / every)} if every < 1 else {"every": int(every)}


def short_of_budget(seed: dict[str, Any]) -> list[str]:
    """The SFT ways that trained for less than `SHORT` of the wall time they were given (`sft_steps` sizes them
    from the start's timing; the machine's pace can still change between the start and the SFT ways)."""
    found = []
    for way, name, given in (("more_sft", "(a) more SFT", seed["grpo"]["seconds"]),
                             ("sft_alone", "(c) SFT alone", seed["sft_alone"]["pipeline_seconds"])):
        share = seed[way]["seconds"] / given
        if share < SHORT:
            found.append(f"seed {seed['seed']}: {name} trained {seed[way]['seconds']:.0f} s of its {given:.0f} s "
                         f"({share:.2f}): more time helps it only if its best step was near its last")
    return found


def _history(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "log_history.json").read_text())


def _tokens(history: list[dict[str, Any]], completions_per_step: int = 0) -> dict[str, float]:
    """Tokens trained (TRL's cumulative `num_tokens`) and, for GRPO, generated: each log entry's mean completion
    length (TRL's mean over the steps since the entry before) x completions per step x those steps."""
    trained = max((e["num_tokens"] for e in history if "num_tokens" in e), default=0.0)
    generated, logged = 0.0, 0
    for entry in history:
        if "completions/mean_length" in entry:
            generated += entry["completions/mean_length"] * completions_per_step * (entry["step"] - logged)
            logged = entry["step"]
    return {"trained": trained, "generated": generated, "total": trained + generated}


def _test(model: str, recipe: Any, output: Path) -> float:
    from gsm8k_tr.infer import evaluate

    return evaluate.main(model, recipe, output=str(output), overwrite=True)["accuracy"]


def _curve(stage: Path, recipe: Any, seconds: float, steps: int, out: Path) -> list[dict[str, float]]:
    """Test accuracy at each saved checkpoint, placed on the budget by its share of the run's steps."""
    points = []
    for checkpoint in sorted(stage.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(checkpoint.name.split("-")[1])
        points.append({"step": step, "seconds": seconds * step / steps,
                       "accuracy": _test(str(checkpoint), recipe, out / f"eval-{stage.name}-{step}")})
    return points


def one_seed(config: str, seed: int, out: Path, grpo_steps: int | None, points: int,
             overrides: list[str]) -> dict[str, Any]:
    """The start, (a) and (b) for one seed."""
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.run_folder import prepared_data
    from gsm8k_tr.train import grpo, sft

    folder = out / f"seed-{seed}"
    common = [f"seed={seed}", *overrides]
    start_recipe = load_recipe(config, [f"output_dir={folder / 'start'}", *common])
    data = str(prepared_data(start_recipe))
    start = sft.main(start_recipe, resume=True)
    start_dir = folder / "start" / "sft"
    start_history = _history(start_dir)
    timed = timing(start, start_history)
    start_tokens = _tokens(start_history)["total"]
    result: dict[str, Any] = {"seed": seed, "start": {
        "steps": start["global_step"], "best_step": start.get("best_step"), "seconds": start["train_seconds"],
        "timing": timed, "tokens": start_tokens,
        "test_accuracy": _test(str(start_dir), start_recipe, folder / "eval-start")}}

    grpo_recipe = load_recipe(config, [f"output_dir={folder / 'grpo'}", f"model.sft_output={start_dir}",
                                       f"data.dataset={data}", "eval.every_steps=0", *common,
                                       *([f"grpo.max_steps={grpo_steps}"] if grpo_steps else [])])
    steps = grpo_recipe.grpo.get("max_steps", 500)
    grpo_recipe.grpo["save_steps"] = max(1, steps // points)
    grpo_recipe.grpo["save_total_limit"] = None
    manifest = grpo.main(grpo_recipe, resume=True)
    completions = grpo_recipe.grpo.get("per_device_train_batch_size", 8) * \
        grpo_recipe.grpo.get("gradient_accumulation_steps", 1)
    budget = manifest["train_seconds"]
    grpo_dir = folder / "grpo" / "grpo"
    result["grpo"] = {"steps": manifest["global_step"], "seconds": budget,
                      "tokens": _tokens(_history(grpo_dir), completions),
                      "test_accuracy": _test(str(grpo_dir), grpo_recipe, folder / "eval-grpo"),
                      "curve": _curve(grpo_dir, grpo_recipe, budget, manifest["global_step"], folder)}

    more_steps = sft_steps(budget, timed, checks=points)
    more = load_recipe(config, [f"output_dir={folder / 'more-sft'}", f"model.name_or_path={start_dir / 'merged'}",
                                f"data.dataset={data}", f"sft.max_steps={more_steps}", "eval.sft_patience=0", *common])
    every = max(1, more_steps // points)
    more.sft.update({"save_steps": every, "eval_steps": every, "save_total_limit": None})
    more_manifest = sft.main(more, resume=True)
    more_dir = folder / "more-sft" / "sft"
    result["more_sft"] = {"steps": more_manifest["global_step"], "best_step": more_manifest.get("best_step"),
                          "seconds": more_manifest["train_seconds"], "tokens": _tokens(_history(more_dir)),
                          "test_accuracy": _test(str(more_dir), more, folder / "eval-more-sft"),
                          "curve": _curve(more_dir, more, more_manifest["train_seconds"], more_manifest["global_step"],
                                          folder)}

    # (c) SFT alone from the base model for the pipeline's whole budget, as one run with one schedule.
    total = start["train_seconds"] + budget
    alone = load_recipe(config, [f"output_dir={folder / 'sft-alone'}", f"data.dataset={data}",
                                 "eval.sft_patience=0", *common])
    alone.sft["max_steps"] = sft_steps(total, timed, **_checks(alone.sft))
    alone_manifest = sft.main(alone, resume=True)
    alone_dir = folder / "sft-alone" / "sft"
    result["sft_alone"] = {"steps": alone_manifest["global_step"], "best_step": alone_manifest.get("best_step"),
                           "seconds": alone_manifest["train_seconds"], "tokens": _tokens(_history(alone_dir)),
                           "test_accuracy": _test(str(alone_dir), alone, folder / "eval-sft-alone"),
                           "pipeline_seconds": total, "pipeline_tokens": start_tokens + result["grpo"]["tokens"]["total"]}
    if _earlier(start) and not (_earlier(more_manifest) and _earlier(alone_manifest)):
        # The SFT ways' steps are the budget over the start's seconds per step: timed on another day or load, they
        # get another share of GRPO's wall time (a start copied from a slower day gave them 0.6 of it).
        print(f"seed {seed}: the SFT start was trained by an earlier call ({start['finished_at']}) and the SFT ways "
              f"now, at its seconds per step; compare their seconds with GRPO's, or remove {folder / 'start'} and "
              "the SFT ways to time all in one call", flush=True)
    result["paired"] = paired(folder)
    return result


PAIRS = {"start": "eval-start", "more_sft": "eval-more-sft", "sft_alone": "eval-sft-alone"}


def paired(folder: Path) -> dict[str, dict[str, Any]]:
    """(b) GRPO against each other way on the same test questions: questions better and worse, sign test."""
    from gsm8k_tr.infer.compare import compare, folder_scores

    grpo = str(folder / "eval-grpo")
    graded = folder_scores(grpo)  # read once for the three pairs
    return {name: compare(str(folder / other), folder_scores(str(folder / other)), grpo, graded).as_dict()
            for name, other in PAIRS.items() if (folder / other).is_dir()}


def pooled(out: Path, seeds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """(b) GRPO against each other way over every seed, question by question (`infer/compare.py`'s `Pooled`: each
    question's grades summed over the seeds, one sign test on the questions above zero against those below)."""
    from gsm8k_tr.infer.compare import folder_scores
    from gsm8k_tr.infer.compare import pooled as pool

    found = {}
    for name, other in PAIRS.items():
        folders = [out / f"seed-{s['seed']}" for s in seeds]
        folders = [f for f in folders if (f / other).is_dir() and (f / "eval-grpo").is_dir()]
        together = pool([(folder_scores(str(f / other)), folder_scores(str(f / "eval-grpo"))) for f in folders])
        if together is not None:
            found[name] = together.as_dict()
    return found


def summary(seeds: list[dict[str, Any]], out: Path | None = None) -> dict[str, Any]:
    """Mean, standard deviation and range over seeds of each way's test accuracy, and of (b) - (a); with `out`, the
    folder the seeds ran in, also (b) against each other way question by question over the seeds (`pooled`)."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    gains = [s["grpo"]["test_accuracy"] - s["more_sft"]["test_accuracy"] for s in seeds]
    over_start = [s["grpo"]["test_accuracy"] - s["start"]["test_accuracy"] for s in seeds]
    found = {"start": stats([s["start"]["test_accuracy"] for s in seeds]),
             "more_sft": stats([s["more_sft"]["test_accuracy"] for s in seeds]),
             "grpo": stats([s["grpo"]["test_accuracy"] for s in seeds]),
             "grpo_minus_more_sft": stats(gains), "grpo_minus_start": stats(over_start),
             "grpo_gained_on_every_seed": all(g > 0 for g in over_start)}
    if all("sft_alone" in s for s in seeds):
        found["sft_alone"] = stats([s["sft_alone"]["test_accuracy"] for s in seeds])
        found["grpo_minus_sft_alone"] = stats([s["grpo"]["test_accuracy"] - s["sft_alone"]["test_accuracy"]
                                               for s in seeds])
    if out is not None:
        found["pooled"] = pooled(out, seeds)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--grpo-steps", type=int, help="GRPO steps (default: the recipe's)")
    parser.add_argument("--points", type=int, default=4, help="checkpoints graded on the way, per run")
    parser.add_argument("--output", default=str(ROOT / "runs" / "sft-vs-grpo"))
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run, key=value")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = [one_seed(args.config, seed, out, args.grpo_steps, args.points, args.overrides) for seed in args.seeds]
    result = {"config": args.config, "overrides": args.overrides, "seeds": seeds, "summary": summary(seeds, out),
              "seconds": round(time.perf_counter() - started)}
    (out / "sft_vs_grpo.json").write_text(json.dumps(result, indent=1))
    from gsm8k_tr import report

    report.plot_budget(result, out / "sft_vs_grpo.png")
    print(f"{'seed':>5} {'start':>7} {'(a) more SFT':>13} {'(b) GRPO':>9} {'b - a':>7} {'(c) SFT alone':>14} {'b - c':>7}"
          f"   budget: s (a / b), tokens (a / b); (c) s / pipeline s")
    for s in seeds:
        a, b, c = s["more_sft"], s["grpo"], s["sft_alone"]
        print(f"{s['seed']:>5} {s['start']['test_accuracy']:>7.3f} {a['test_accuracy']:>13.3f} {b['test_accuracy']:>9.3f} "
              f"{b['test_accuracy'] - a['test_accuracy']:>+7.3f} {c['test_accuracy']:>14.3f} "
              f"{b['test_accuracy'] - c['test_accuracy']:>+7.3f}   {a['seconds']:.0f} / {b['seconds']:.0f} s, "
              f"{a['tokens']['total']:,.0f} / {b['tokens']['total']:,.0f} tokens; "
              f"{c['seconds']:.0f} / {c['pipeline_seconds']:.0f} s")
    m = result["summary"]
    print(f"mean over {len(seeds)} seeds: start {m['start']['mean']:.3f}, (a) {m['more_sft']['mean']:.3f} "
          f"± {m['more_sft']['std']:.3f}, (b) {m['grpo']['mean']:.3f} ± {m['grpo']['std']:.3f}, "
          f"(c) {m['sft_alone']['mean']:.3f} ± {m['sft_alone']['std']:.3f}; (b) - (a) "
          f"{m['grpo_minus_more_sft']['mean']:+.3f} (range {m['grpo_minus_more_sft']['min']:+.3f} to "
          f"{m['grpo_minus_more_sft']['max']:+.3f}); (b) - (c) {m['grpo_minus_sft_alone']['mean']:+.3f} (range "
          f"{m['grpo_minus_sft_alone']['min']:+.3f} to {m['grpo_minus_sft_alone']['max']:+.3f}); GRPO gained over "
          f"its start on every seed: {m['grpo_gained_on_every_seed']}")
    names = {"start": "its start", "more_sft": "(a) more SFT", "sft_alone": "(c) SFT alone"}
    for s in seeds:
        print(f"seed {s['seed']}, (b) GRPO against " + "; ".join(
            f"{names[k]}: {v['gained']} better, {v['lost']} worse, p = {v['p_value']:.2g}"
            for k, v in s["paired"].items()))
    for s in seeds:
        for line in short_of_budget(s):
            print(line)
    print(f"over the {len(seeds)} seeds, questions on which (b) GRPO did better and worse than " + "; ".join(
        f"{names[k]}: {v['gained']} better, {v['lost']} worse of {v['questions']}, p = {v['p_value']:.2g}"
        for k, v in m["pooled"].items()))
    print(f"wrote {out / 'sft_vs_grpo.json'} and {out / 'sft_vs_grpo.png'}")


if __name__ == "__main__":
    main()
