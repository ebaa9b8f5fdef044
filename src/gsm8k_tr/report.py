"""`gsm8k-tr report RUN_DIR`: report.md and PNG plots of what a run did.

Reads only files the stages wrote: `{sft,grpo}/log_history.json` and
`eval/<name>/{metrics.json,predictions.jsonl}` (the stages are `base`, `sft`
and `grpo`; other evaluations are listed too). Plots: each reward and the
total over GRPO steps (with held-out accuracy when it was measured), the SFT
loss, accuracy and format rate by stage, and completion lengths. A table
pairs each stage with the one before it on the same questions
(`infer/compare.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError
from gsm8k_tr.infer.compare import Paired, compare, read_predictions, scores
from gsm8k_tr.outputs import atomic_file, atomic_write_text, full_disk_reported, read_json, read_object
from gsm8k_tr.run_folder import grpo_held_out, read_metrics

STAGES = ("base", "sft", "grpo")


_REDO = "run that stage or evaluation again, or remove the file"


def _history(run: Path, stage: str) -> list[dict[str, Any]]:
    path = run / stage / "log_history.json"
    history = read_json(path, _REDO) if path.is_file() else []
    if not (isinstance(history, list) and all(isinstance(entry, dict) for entry in history)):
        raise UserError(f"{path}: not a list of log entries, as the trainer writes it; {_REDO}")
    return history


def evaluations(run: Path) -> dict[str, dict[str, Any]]:
    """metrics.json of every evaluation in `run/eval`, stages first."""
    found = {}
    for path in sorted((run / "eval").glob("*/metrics.json")):
        found[path.parent.name] = read_metrics(path, _REDO)
    return dict(sorted(found.items(), key=lambda kv: (STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES), kv[0])))


def _predictions(run: Path, name: str) -> list[dict[str, Any]]:
    """An evaluation's predictions.jsonl (empty when it has none), each answer checked for what the report reads."""
    path = run / "eval" / name / "predictions.jsonl"
    return read_predictions(path, _REDO) if path.is_file() else []


def comparisons(run: Path) -> list[Paired]:
    """Each stage against the one before it (base → sft → grpo), on the questions both answered on one split."""
    evals = evaluations(run)
    done = [name for name in STAGES if name in evals]
    graded = {name: scores(_predictions(run, name)) for name in done}  # each read once, the middle stage paired twice
    found = []
    for before, after in zip(done, done[1:]):
        if evals[before].get("split") != evals[after].get("split"):
            continue  # other questions: nothing to pair
        paired = compare(before, graded[before], after, graded[after])
        if paired is not None:
            found.append(paired)
    return found


def _comparison_table(found: list[Paired]) -> list[str]:
    lines = ["## Stage to stage, on the same questions", "",
             "| from → to | questions | accuracy | change (95% interval) | better | worse | sign test p |",
             "|---|---|---|---|---|---|---|"]
    for p in found:
        lines.append(f"| {p.before} → {p.after} | {p.questions} | {p.accuracy_before:.3f} → "
                     f"{p.accuracy_after:.3f} | {p.change:+.3f} ({p.change_low:+.3f} to {p.change_high:+.3f}) | "
                     f"{p.gained} | {p.lost} | {p.p_value:.2g} |")
    return [*lines, "", "Better and worse: questions graded right by one stage and wrong by the other, on `accuracy` "
                        "(the number in the answer tag, so a base model's change counts the format too; with several "
                        "samples, a larger or smaller share right). p: the exact two-sided sign test on those two "
                        "counts; below 0.05, a split this lopsided would come by chance less than once in 20 times "
                        "if the two stages were equally good.", ""]


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in history if isinstance(e.get(key), (int, float)) and "step" in e]
    return [p[0] for p in points], [p[1] for p in points]


def _save(fig: Any, ax: Any, title: str, target: Path) -> bool:
    """Title, lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    fig.tight_layout()
    try:
        with atomic_file(target) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return True


def plot_rewards(history: list[dict[str, Any]], target: Path, held_out: str = "held-out") -> bool:
    """GRPO over its steps: each reward's mean and the weighted total, with held-out accuracy on a second axis
    (`held_out` names its split and size); below, the share of prompt groups that teach nothing."""
    import matplotlib.pyplot as plt

    names = sorted({k for e in history for k in e if k.startswith("rewards/") and k.endswith("/mean")})
    if not names:
        return False
    zero = [(key, label) for key, label in (("frac_reward_zero_std", "by total reward (TRL)"),
                                            ("frac_correctness_zero_std", "by correctness")) if _series(history, key)[0]]
    fig, axes = plt.subplots(2 if zero else 1, 1, figsize=(8, 7 if zero else 4.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] if zero else [1]})
    ax = axes[0][0]
    for key in names:
        ax.plot(*_series(history, key), label=key.split("/")[1].removesuffix("_reward_func"), linewidth=1.2)
    ax.plot(*_series(history, "reward"), label="total (weighted)", color="black", linewidth=2)
    ax.set_ylabel("mean reward")
    steps, accuracy = _series(history, "eval/accuracy")
    if steps:
        right = ax.twinx()
        right.plot(steps, accuracy, "o--", color="tab:red", label=f"accuracy, {held_out}")
        right.set_ylabel(f"accuracy ({held_out})")
        right.set_ylim(0, 1)
        right.legend(loc="lower right")
    ax.legend(loc="upper left", fontsize=8)
    if zero:
        low = axes[1][0]
        for key, label in zero:
            low.plot(*_series(history, key), label=label, linewidth=1.2)
        low.set_ylim(0, 1)
        low.set_ylabel("groups with no advantage")
        low.legend(loc="upper left", fontsize=8)
    axes[-1][0].set_xlabel("GRPO step")
    return _save(fig, ax, "GRPO rewards", target)


def plot_sft_loss(history: list[dict[str, Any]], target: Path) -> bool:
    """SFT training loss over steps, with held-out accuracy from its evaluations on a second axis."""
    import matplotlib.pyplot as plt

    steps, loss = _series(history, "loss")
    if not steps:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, marker=".", label="training loss")
    ax.set_xlabel("SFT step")
    ax.set_ylabel("loss (completion tokens)")
    evaluated, accuracy = _series(history, "eval_accuracy")
    if evaluated:
        right = ax.twinx()
        right.plot(evaluated, accuracy, "o--", color="tab:red", label="held-out accuracy")
        right.set_ylabel("held-out accuracy")
        right.set_ylim(0, 1)
        right.legend(loc="lower right")
    return _save(fig, ax, "SFT loss", target)


def plot_budget(result: dict[str, Any], target: Path) -> bool:
    """`benchmarks/sft_vs_grpo.py`'s output: test accuracy against the budget spent from the base model.

    (a) more SFT and (b) GRPO continue from the SFT start (placed at its own
    cost), one thin line per seed and the mean over seeds; (c) SFT alone for
    the whole budget is one point per seed and their mean. By wall time and by
    tokens trained plus generated.
    """
    import matplotlib.pyplot as plt

    seeds = result.get("seeds") or []
    if not seeds:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, unit in zip(axes, ("seconds", "tokens")):
        def cost(run: dict[str, Any]) -> float:
            if unit == "seconds":
                return run["seconds"]
            tokens = run["tokens"]  # the start's is one number (it only trains), the others' a breakdown
            return tokens["total"] if isinstance(tokens, dict) else tokens

        for key, label, color in (("more_sft", "(a) more SFT", "tab:blue"), ("grpo", "(b) GRPO", "tab:red")):
            lines = []
            for s in seeds:
                run, offset = s[key], cost(s["start"])
                scale = cost(run) / max(run["steps"], 1)
                xs = [offset] + [offset + p["step"] * scale for p in run["curve"]]
                ys = [s["start"]["test_accuracy"]] + [p["accuracy"] for p in run["curve"]]
                ax.plot(xs, ys, color=color, alpha=0.3, linewidth=1)
                lines.append((xs, ys))
            width = min(len(xs) for xs, _ in lines)
            mean_x = [sum(xs[i] for xs, _ in lines) / len(lines) for i in range(width)]
            mean_y = [sum(ys[i] for _, ys in lines) / len(lines) for i in range(width)]
            ax.plot(mean_x, mean_y, "o-", color=color, linewidth=2,
                    label=f"{label} from the SFT start, mean of {len(seeds)} seeds")
        alone = [(cost(s["sft_alone"]), s["sft_alone"]["test_accuracy"]) for s in seeds if "sft_alone" in s]
        if alone:
            ax.scatter([x for x, _ in alone], [y for _, y in alone], color="tab:green", alpha=0.4, s=20)
            ax.scatter([sum(x for x, _ in alone) / len(alone)], [sum(y for _, y in alone) / len(alone)],
                       color="tab:green", marker="*", s=160, label="(c) SFT alone for the whole budget, mean")
    axes[0].set_xlabel("budget from the base model: wall-clock seconds of training")
    axes[1].set_xlabel("budget from the base model: tokens trained + generated")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("The same budget three ways: more SFT, GRPO, or SFT alone")
    return _save(fig, axes[1], "", target)


def plot_stages(evals: dict[str, dict[str, Any]], target: Path) -> bool:
    """Accuracy and format rates per evaluated stage."""
    import matplotlib.pyplot as plt

    if not evals:
        return False
    names = list(evals)
    keys = ("accuracy", "flexible_accuracy", "strict_format_rate")
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [evals[n].get(key, 0.0) for n in names]
        bars = ax.bar([x + i * width for x in range(len(names))], values, width, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([x + width for x in range(len(names))], names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.legend(fontsize=8)
    return _save(fig, ax, "Accuracy and format by stage", target)


def plot_lengths(lengths: dict[str, list[int]], target: Path) -> bool:
    """Distribution of completion lengths (tokens) per evaluation."""
    import matplotlib.pyplot as plt

    lengths = {k: v for k, v in lengths.items() if v}
    if not lengths:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(list(lengths.values()), bins=30, label=list(lengths), histtype="step", linewidth=1.5)
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("completions")
    ax.legend(fontsize=8)
    return _save(fig, ax, "Completion lengths", target)


def _table(evals: dict[str, dict[str, Any]]) -> list[str]:
    keys = ("split", "n", "accuracy", "flexible_accuracy", "strict_format_rate", "soft_format_rate", "mean_completion_tokens",
            "truncated_rate")
    if any("samples" in m for m in evals.values()):  # `evaluate --samples K`: what K answers a question buy
        keys += ("samples", "pass_at_k", "maj_at_k")
    lines = ["| evaluation | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in evals.items():
        cells = [f"{m[k]:.{1 if k == 'mean_completion_tokens' else 3}f}" if isinstance(m.get(k), float)
                 else str(m.get(k, "")) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


BUDGET_TITLE = "Same budget: more SFT, GRPO, or SFT alone"


def _budget(path: Path) -> dict[str, Any] | None:
    """`benchmarks/sft_vs_grpo.py`'s output in a run folder, read once for its plot and its table; None if absent."""
    if not path.is_file():
        return None
    return read_object(path, "run benchmarks/sft_vs_grpo.py again or remove it")


def budget_table(result: dict[str, Any]) -> list[str]:
    """`benchmarks/sft_vs_grpo.py`'s output as a table: test accuracy per seed, then the mean and spread."""
    lines = [f"## {BUDGET_TITLE}", "",
             "| seed | SFT start | (a) more SFT | (b) GRPO | (b) - (a) | (c) SFT alone | (b) - (c) | seconds (a / b) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in result.get("seeds", []):
        a, b, c = s["more_sft"], s["grpo"], s.get("sft_alone")
        alone = f"{c['test_accuracy']:.3f} | {b['test_accuracy'] - c['test_accuracy']:+.3f}" if c else "- | -"
        lines.append(f"| {s['seed']} | {s['start']['test_accuracy']:.3f} | {a['test_accuracy']:.3f} | "
                     f"{b['test_accuracy']:.3f} | {b['test_accuracy'] - a['test_accuracy']:+.3f} | {alone} | "
                     f"{a['seconds']:.0f} / {b['seconds']:.0f} |")
    m = result.get("summary")
    if m:
        def spread(key: str) -> str:
            return f"{m[key]['mean']:+.3f} ({m[key]['min']:+.3f} to {m[key]['max']:+.3f})" if key in m else "-"

        alone = f"{m['sft_alone']['mean']:.3f} ± {m['sft_alone']['std']:.3f}" if "sft_alone" in m else "-"
        lines.append(f"| mean ± std | {m['start']['mean']:.3f} | {m['more_sft']['mean']:.3f} ± {m['more_sft']['std']:.3f} | "
                     f"{m['grpo']['mean']:.3f} ± {m['grpo']['std']:.3f} | {spread('grpo_minus_more_sft')} | {alone} | "
                     f"{spread('grpo_minus_sft_alone')} | |")
        names = {"start": "its SFT start", "more_sft": "(a) more SFT", "sft_alone": "(c) SFT alone"}
        pooled = [f"{names[k]}: {v['gained']} better, {v['lost']} worse (p = {v['p_value']:.2g})"
                  for k, v in m.get("pooled", {}).items() if k in names]
        if pooled:
            lines += ["", "Questions on which (b) GRPO did better and worse over all seeds (each question's grades "
                      "summed over the seeds), against " + "; ".join(pooled)
                      + ". p: the exact two-sided sign test on the two counts."]
    return lines


_CHECKS_SHOWN = 8  # a run with more held-out checks lists its first and last this many


def _held_out(run: Path) -> str:
    """Where GRPO's in-training accuracy came from, e.g. "validation, 64" (from its manifest)."""
    where = grpo_held_out(run)
    return f"{where['split']}, {where['questions']}" if where else "held-out"


def main(run_dir: str) -> Path:
    """Write `run_dir/report.md` and its PNGs; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder {run_dir!r} does not exist")
    sft, grpo, evals = _history(run, "sft"), _history(run, "grpo"), evaluations(run)
    held_out = _held_out(run)
    budget = _budget(run / "sft_vs_grpo.json")
    if not (sft or grpo or evals or budget is not None):
        raise UserError(f"{run_dir!r} has no stage outputs (sft/, grpo/) or evaluations (eval/); is it a run folder?")
    with full_disk_reported(run):  # a full disk: one line, and report.md is never half-written
        plots = {
            "rewards.png": plot_rewards(grpo, run / "rewards.png", held_out),
            "sft_loss.png": plot_sft_loss(sft, run / "sft_loss.png"),
            "stages.png": plot_stages(evals, run / "stages.png"),
            "lengths.png": plot_lengths({n: [a["tokens"] for r in _predictions(run, n) for a in r.get("samples", [r])]
                                         for n in evals}, run / "lengths.png"),
            "sft_vs_grpo.png": budget is not None and plot_budget(budget, run / "sft_vs_grpo.png"),
        }
        lines = [f"# Report: {run.name}", ""]
        if evals:
            lines += ["## Evaluations", "", *_table(evals), ""]
        paired = comparisons(run)
        if paired:
            lines += _comparison_table(paired)
        summary = run / "report.json"
        if summary.is_file():
            stages = read_object(summary, "run the pipeline again, or remove the file").get("stages", {})
            times = [f"{name}: {s['seconds']:.0f} s" for name, s in stages.items()
                     if isinstance(s.get("seconds"), (int, float))]
            if times:
                lines += ["Wall time per stage: " + ", ".join(times) + ".", ""]
        if budget is not None:
            lines += [*budget_table(budget), ""]
        steps, accuracy = _series(grpo, "eval/accuracy")  # as the rewards plot reads them
        if steps:
            shown = [f"{step}: {value:.3f}" for step, value in zip(steps, accuracy)]
            if len(shown) > 2 * _CHECKS_SHOWN:
                shown = [*shown[:_CHECKS_SHOWN], "…", *shown[-_CHECKS_SHOWN:]]
            lines += [f"Held-out accuracy during GRPO, by step (greedy answers to the {held_out} questions; plotted "
                      f"with the rewards): {', '.join(shown)}.", ""]
        kept = grpo_held_out(run, "held_out_kept")
        if kept:
            last = kept.get("last_held_out_accuracy")  # none when a resume found the run finished
            lines += [f"GRPO kept the adapter of its best held-out check, step {kept['kept_step']} (accuracy "
                      f"{kept['kept_held_out_accuracy']:.3f}; step 0 is its start)"
                      + (f"; its last step, {kept['last_step']}, had {last:.3f}" if last is not None else "")
                      + " (`eval.grpo_keep_best`).", ""]
        for name, title in (("rewards.png", "GRPO rewards"), ("sft_loss.png", "SFT loss"),
                            ("stages.png", "Accuracy and format by stage"), ("lengths.png", "Completion lengths"),
                            ("sft_vs_grpo.png", BUDGET_TITLE)):
            if plots[name]:
                lines += [f"## {title}", "", f"![{title}]({name})", ""]
        target = run / "report.md"
        atomic_write_text(target, "\n".join(lines))
        return target
