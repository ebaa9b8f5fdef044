"""The `gsm8k-tr` command: one subcommand per stage, each calling that stage's main().

Heavy libraries (torch, transformers, datasets) are imported inside the
commands, so `--help` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import warnings
from collections.abc import Callable

from gsm8k_tr import __version__
from gsm8k_tr.errors import Stopped, UserError, did_you_mean, one_line
from gsm8k_tr.outputs import NO_SPACE


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe; its keys override the defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides with dotted keys, e.g. data.limit=50 output_dir=runs/try1")


def _device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="D", help="cuda, cuda:N, mps or cpu (eval.device; default: CUDA, else "
                        "MPS, else CPU)")


def _prepare(args: argparse.Namespace) -> int:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data import prepare

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.reference:
        overrides.append(f"data.reference={args.reference}")
    recipe = load_recipe(args.config, _as_strings(overrides))
    output = args.output or f"{recipe.output_dir}/data"
    report = prepare.main(recipe, output=output, overwrite=args.overwrite)
    summary = {k: report[k] for k in ("rows_read", "aligned", "unaligned", "aligned_rate", "test_rows_found",
                                      "numbers_changed", "dropped", "excluded", "solution_gold_disagreements",
                                      "written")}
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    print(f"wrote {output}/train.jsonl, validation.jsonl, test.jsonl, excluded.jsonl and prepare_report.json")
    return 0


def _as_strings(overrides: list[str]) -> list[str]:
    # Paths from flags must stay strings even when they look like numbers or YAML.
    return [f"{k}={json.dumps(v)}" if k in ("data.dataset", "data.reference", "output_dir") else item
            for item in overrides for k, _, v in [item.partition("=")]]


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _prepare_args(parser: argparse.ArgumentParser) -> None:
    _recipe_args(parser)
    parser.add_argument("--dataset", metavar="SRC", help="Hub id, or a local CSV/JSON/JSONL/Parquet file or folder (data.dataset)")
    parser.add_argument("--reference", metavar="REF", help="English GSM8K: Hub id, folder with train/test.jsonl, or 'none' (data.reference)")
    parser.add_argument("--output", metavar="DIR", help="folder for the splits, excluded.jsonl and prepare_report.json (default: {output_dir}/data)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


COMMANDS["prepare"] = ("align GSM8K-TR with English GSM8K: verified answers and the official split", _prepare_args, _prepare)


def _stage_args(parser: argparse.ArgumentParser) -> None:
    _recipe_args(parser)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in the stage folder")
    what.add_argument("--overwrite", action="store_true", help="delete an existing stage folder and start again")


def _stage(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from gsm8k_tr.config import load_recipe
        from gsm8k_tr.pipeline import TRAINING_STAGES
        from gsm8k_tr.processes import speaks

        recipe = load_recipe(args.config, _as_strings(list(args.overrides)))
        manifest = TRAINING_STAGES[name](recipe, resume=args.resume, overwrite=args.overwrite)
        if speaks():
            print(f"{name}: {manifest['global_step']} steps; outputs in {recipe.output_dir}/{name} (merged/, adapter/, "
                  "README.md)")
        return 0

    return run


COMMANDS["sft"] = ("LoRA supervised fine-tuning: teach the answer format", _stage_args, _stage("sft"))
COMMANDS["grpo"] = ("LoRA GRPO from the SFT output with rule-based rewards", _stage_args, _stage("grpo"))


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    _recipe_args(parser)
    parser.add_argument("--model", required=True, metavar="M",
                        help="Hub id, builtin:NAME, a model folder, a LoRA adapter folder or a stage output (runs/x/sft)")
    parser.add_argument("--split", metavar="NAME", help="prepared split to answer (eval.split, default test)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions (eval.limit)")
    parser.add_argument("--samples", type=int, default=1, metavar="K",
                        help="answers per question; K > 1 samples and adds pass_at_k and maj_at_k")
    parser.add_argument("--output", metavar="DIR", help="folder for metrics.json and predictions.jsonl "
                        "(default: {output_dir}/eval/<model>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                        help="generation engine: transformers (default) or vLLM (GPU, pip install -e .[vllm])")
    _device_arg(parser)


def _evaluate(args: argparse.Namespace) -> int:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.infer import evaluate
    from gsm8k_tr.processes import speaks

    recipe = load_recipe(args.config, _as_strings(list(args.overrides)))
    output = args.output or evaluate.default_output(recipe, args.model)
    result = evaluate.main(args.model, recipe, args.split, args.limit, args.samples, output, args.overwrite,
                           args.backend, args.device)
    if speaks():
        print(json.dumps(result, ensure_ascii=False, indent=2))
        print(f"wrote {output}/metrics.json and predictions.jsonl")
    return 0


COMMANDS["evaluate"] = ("answer a prepared split and grade it: accuracy, format rates, pass@k", _evaluate_args, _evaluate)


_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=")


def _pipeline(args: argparse.Namespace) -> int:
    from gsm8k_tr import pipeline
    from gsm8k_tr.config import load_recipe

    recipe = load_recipe(args.config, _as_strings(list(args.overrides)))
    pipeline.main(recipe, resume=args.resume, overwrite=args.overwrite)
    return 0


COMMANDS["pipeline"] = ("the whole run: prepare, sft, grpo, evaluate each stage, report", _stage_args, _pipeline)


def _generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe (prompt, tags and eval settings)")
    parser.add_argument("--model", required=True, metavar="M", help="as for evaluate")
    parser.add_argument("items", nargs="*", metavar="SORU",
                        help="questions, and key=value recipe overrides; without questions, one per line from stdin")
    _device_arg(parser)


def _generate(args: argparse.Namespace) -> int:
    import dataclasses

    from gsm8k_tr.config import Recipe, load_recipe
    from gsm8k_tr.infer import generate_command

    # An override names a recipe section or key: "x=5 ise x+3 kaçtır?" is a question.
    sections = {field.name for field in dataclasses.fields(Recipe)}
    overrides = [item for item in args.items if _OVERRIDE.match(item) and item.split("=")[0].split(".")[0] in sections]
    questions = [item for item in args.items if item not in overrides]
    recipe = load_recipe(args.config, _as_strings(overrides))
    if not questions and not sys.stdin.isatty():
        # a file saved on Windows opens with a byte-order mark, which would reach the first prompt
        questions = [text for line in sys.stdin if (text := line.strip().lstrip("\ufeff").strip())]
    if not questions:
        raise UserError('no question given: gsm8k-tr generate --model M "soru…", or one question per line on stdin')
    generate_command.main(args.model, recipe, questions, args.device)
    return 0


COMMANDS["generate"] = ("answer questions with a model; the extracted number is highlighted", _generate_args, _generate)


def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's output_dir (holds sft/, grpo/, eval/)")


def _report(args: argparse.Namespace) -> int:
    from gsm8k_tr import report

    path = report.main(args.run_dir)
    print(f"wrote {path} and its plots")
    return 0


COMMANDS["report"] = ("write RUN_DIR/report.md with plots of rewards, loss, accuracy and lengths", _report_args, _report)


def _compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("evaluations", nargs="+", metavar="EVAL_A EVAL_B",
                        help="evaluation folders (with predictions.jsonl), or the files, in pairs: before, after; "
                             "several pairs (seeds, reruns) are also pooled question by question")
    parser.add_argument("--flexible", action="store_true",
                        help="grade by the last number anywhere (flexible_accuracy), not the answer tag's")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def _compare(args: argparse.Namespace) -> int:
    from gsm8k_tr.infer import compare

    pairs, pooled = compare.compare_runs(args.evaluations, "flexible_correct" if args.flexible else "correct")
    if args.json:
        found = pairs[0].as_dict() if pooled is None else {
            "pairs": [p.as_dict() for p in pairs], "pooled": pooled.as_dict()}
        print(json.dumps(found, indent=2, ensure_ascii=False))  # Turkish paths as written
    else:
        print("\n".join([p.sentence() for p in pairs] + ([pooled.sentence()] if pooled else [])))
    return 0


COMMANDS["compare"] = ("compare evaluations question by question: change, confidence interval, sign test; "
                       "several pairs pooled", _compare_args, _compare)


def _plan_args(parser: argparse.ArgumentParser) -> None:
    _recipe_args(parser)
    parser.add_argument("--gpu-memory", type=float, metavar="GIB",
                        help="plan for a GPU with this much memory (default: this machine's GPU, free memory)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _plan(args: argparse.Namespace) -> int:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import plan

    recipe = load_recipe(args.config, _as_strings(list(args.overrides)))
    if args.gpu_memory is not None and not 0 < args.gpu_memory < float("inf"):  # argparse's float reads nan and inf
        raise UserError(f"--gpu-memory must be a positive number of GiB, got {args.gpu_memory}")
    config = plan.model_config(recipe)  # read once: without the Hub, reading it warns
    shape, plans = plan.plan_recipe(recipe, args.gpu_memory, config)
    warning = plan.sized_for_warning(recipe, config)
    if warning:
        logging.getLogger("gsm8k_tr.plan").warning(warning)
    memory_gib = next(iter(plans.values())).memory_gib
    note, changes = plan.layout_note(shape), plan.to_fit(shape, plans)
    if args.json:
        print(json.dumps({"model": recipe.model.name_or_path, "parameters": shape.parameters,
                          "planned_for": "cpu" if memory_gib is None else "gpu", "memory_gib": memory_gib,
                          "layout_note": note, "stages": {name: {**p.as_dict(), "to_fit": changes.get(name)}
                                                          for name, p in plans.items()}}, indent=2))
    else:
        # Without a GPU the plan is this CPU's (training in float32, math attention): say so, as a GPU would need far
        # less. A stage in bf16 there keeps its rollouts' weight copies and KV cache in bf16.
        in_bf16 = sorted(name for name, p in plans.items() if p.settings["mixed_precision"])
        precision = "in float32" + (f" (the rollouts of {', '.join(in_bf16)} in bf16)" if in_bf16 else "")
        target = (f"this machine's CPU, {precision} (no GPU here; --gpu-memory GIB plans for a GPU of that size)"
                  if memory_gib is None else f"a GPU with {memory_gib:g} GiB" +
                  (" free" if args.gpu_memory is None else ""))
        print(f"{recipe.model.name_or_path}: {shape.parameters / 1e6:.0f}M parameters, {shape.layers} layers, "
              f"context {shape.context}; estimated peak memory in GiB on {target}:")
        print("\n".join(plan.table(plans)))
        for name, change in changes.items():
            print(f"{name} does not fit in {memory_gib:g} GiB: {change}")
        if note:
            print(note)
    return 0


COMMANDS["plan"] = ("estimate each stage's peak GPU memory from the recipe and the model's config", _plan_args, _plan)


def _check(args: argparse.Namespace) -> int:
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.train import recipe_check

    recipe_check.check(load_recipe(args.config, _as_strings(list(args.overrides))))
    print("ok")
    return 0


COMMANDS["check"] = ("check a whole recipe in seconds (every section, both stages' TRL configs); prints ok",
                     _recipe_args, _check)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="gsm8k-tr", description="Teach a small Turkish language model grade-school math.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_args(command)
        # after the command too ("gsm8k-tr sft ... -v"); SUPPRESS leaves the top-level value where it is not given
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log debug messages")
        # argparse keeps no public list of a parser's options; its actions hold them, for a mistyped one's hint
        command.set_defaults(run=run, options=tuple(o for action in command._actions for o in action.option_strings))
    return parser


_POSITIONALS = {"run_dir": "RUN_DIR", "evaluations": "an EVAL folder", "items": "a question",
                "overrides": "a key=value override"}


def _refuse_empty(args: argparse.Namespace) -> None:
    """An empty value (`--output "$DIR"` with DIR unset) is refused, not read as its default or as the current folder:
    `--output ""` wrote to the recipe's default folder, `--split ""` answered the test split, `--config ""` read '.'."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.strip():
                shown = _POSITIONALS.get(name, "--" + name.replace("_", "-"))
                raise UserError(f"{shown} is empty (an unset shell variable?); give it a value")


# The commands that build a model (or its meta copy, for the plan and the check) through transformers.
_MODEL_COMMANDS = ("sft", "grpo", "pipeline", "evaluate", "generate", "plan", "check")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line and exit with status 2."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    command = next((item for item in given if not item.startswith("-")), None)
    if command is not None and command not in COMMANDS:  # "evalute": argparse lists the commands, guessing none
        print(f"gsm8k-tr: error: unknown command {command!r}{did_you_mean(command, COMMANDS)}; the commands are "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # key=value overrides may come after options too (argparse takes positionals only in one run).
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if not _OVERRIDE.match(item)]
    if stray:  # "--limt 3": one line naming the option it is closest to, not the top-level usage
        # compared without the dashes, which every option shares: with them "--model" was close to "--help"
        long = [option[2:] for option in args.options if option.startswith("--")]
        hints = "".join(did_you_mean(item[2:].split("=", 1)[0], long, "--") for item in stray if item.startswith("--"))
        print(f"gsm8k-tr {args.command}: error: unrecognized arguments: {' '.join(stray)}{hints}; see gsm8k-tr "
              f"{args.command} --help", file=sys.stderr)
        return 2
    if extra:
        field = "items" if hasattr(args, "items") else "overrides"
        if not hasattr(args, field):
            parser.error(f"{args.command} takes no key=value overrides: {' '.join(extra)}")
        setattr(args, field, [*getattr(args, field), *extra])
    # force: the command owns the process's logging (and a second call in one process logs to its own stderr)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    # huggingface_hub prints its warnings with a handler of its own: once, not twice (its own
    # `disable_propagation()`, without importing it here)
    logging.getLogger("huggingface_hub").propagate = False
    # transformers' continuous batching (TRL's use_transformers_continuous_batching) logs through a handler of its own
    # about six INFO lines a rollout call, every GRPO step: its warnings only, unless -v
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # TRL 1.16 reads transformers 5's deprecated `is_gradient_checkpointing` around each generation, and with
    # activation checkpointing on calls the deprecated `gradient_checkpointing_disable`/`_enable` there
    # (`unwrap_model_for_generation`): FutureWarnings in every stage that nothing in a recipe can change
    warnings.filterwarnings("ignore", message="`(is_gradient_checkpointing|gradient_checkpointing_(disable|enable))` "
                            "is deprecated", category=FutureWarning)
    if args.command in ("sft", "grpo", "pipeline"):
        from gsm8k_tr.processes import cpu_processes_without_gpus

        cpu_processes_without_gpus()
    try:
        _refuse_empty(args)
        if args.command in _MODEL_COMMANDS:
            from gsm8k_tr.modeling import require_torch

            require_torch()
            from gsm8k_tr.processes import before_process_group

            before_process_group()
        code = args.run(args)
        from gsm8k_tr.processes import close_processes

        close_processes()  # on the way out only: a rank that raised leaves the others to torchrun, not to a teardown
        return code
    except UserError as error:
        print(f"gsm8k-tr {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"gsm8k-tr {args.command}: {stop}", file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        print(f"gsm8k-tr {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk that no command's own writer named a folder for (a cache, a log)
        if error.errno not in NO_SPACE:
            raise
        print(f"gsm8k-tr {args.command}: error: the disk filled up ({one_line(error)[:160]}); free some space, then "
              "run the same command again", file=sys.stderr)
        return 2
