"""The command line: instant help for every subcommand, without heavy imports."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from gsm8k_tr.cli import COMMANDS

CHECK = (
    "import sys; from gsm8k_tr.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "heavy = [m for m in ('torch', 'transformers', 'datasets', 'trl', 'peft') if m in sys.modules]\n"
    "assert not heavy, heavy\n"
)


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in COMMANDS])
def test_help_answers_without_importing_torch(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: gsm8k-tr" in result.stdout


def test_module_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "gsm8k_tr", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "gsm8k-tr" in result.stdout


def test_the_hubs_warnings_print_once() -> None:
    # huggingface_hub prints its warnings (the Hub's retries, one a second to eight) with a handler of its own and
    # also passed them on to the command's, so each came twice.
    code = ("import logging, sys; from gsm8k_tr.cli import main\n"
            "main(['report', '/nonexistent'])\n"
            "import huggingface_hub.utils._http  # as transformers imports it: its own handler on its root logger\n"
            "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.count("Retrying in 1s") == 1, result.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_continuous_batchings_per_call_lines_show_only_with_verbose(verbose: bool) -> None:
    # transformers' continuous batching logs about six INFO lines a rollout call through a handler of its own
    code = ("import logging; from gsm8k_tr.cli import main\n"
            f"main([*{['-v'] if verbose else []}, 'report', '/nonexistent'])\n"
            "import transformers.generation.continuous_batching.utils  # its handler, as generate_batch imports it\n"
            "logger = logging.getLogger('ContinuousBatchingLogger')\n"
            "logger.info('Paged cache initialized'); logger.warning('a real warning')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "a real warning" in result.stderr, result.stderr
    assert ("Paged cache initialized" in result.stderr) == verbose, result.stderr


@pytest.mark.parametrize("command", ["sft", "plan"])
def test_a_torch_below_transformers_own_floor_is_one_line(command: str, tmp_path: Path) -> None:
    # transformers decides from torch's installed version (its `is_torch_available`); here it reads 2.4.1, below
    # the floor of every transformers this project admits, and turns PyTorch off as it would on such an install.
    code = ("import importlib.metadata as m, sys; real = m.version\n"
            "m.version = lambda name: '2.4.1' if name == 'torch' else real(name)\n"
            "from gsm8k_tr.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    args = [command, "--config", str(ROOT / "recipes" / "tiny.yaml"), f"output_dir={tmp_path}"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"gsm8k-tr {command}: error: transformers ") and "cannot use torch 2.4.1" in line
    assert "Traceback" not in result.stderr


def test_no_torch_at_all_is_one_line_too(monkeypatch) -> None:
    import importlib.metadata

    import transformers.utils

    from gsm8k_tr.errors import UserError
    from gsm8k_tr.modeling import require_torch

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "torch":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(UserError, match="^torch is not installed: install it"):
        require_torch()


@pytest.mark.parametrize("argv,named", [
    (["prepare", "--dataset", "x.csv", "--output", ""], "--output"),  # wrote to the recipe's default folder
    (["prepare", "--config", "", "--dataset", "x.csv"], "--config"),  # read as the recipe file '.'
    (["evaluate", "--model", "m", "--split", " "], "--split"),  # answered the test split
    (["generate", "--model", "m", ""], "a question"),  # answered an empty prompt
    (["compare", "a", ""], "an EVAL folder"),
    (["report", ""], "RUN_DIR"),
])
def test_an_empty_argument_is_refused_naming_it(argv: list[str], named: str, tmp_path: Path, monkeypatch,
                                                capsys) -> None:
    from gsm8k_tr.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"gsm8k-tr {argv[0]}: error: {named} is empty (an unset shell variable?); "
                                       "give it a value\n")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv,said", [
    (["evaluate", "--model", "m", "--limt", "3"], "--limt (did you mean '--limit'?)"),  # was the top-level usage
    (["generate", "--model", "m", "--devise", "cpu", "2+2?"], "--devise (did you mean '--device'?)"),
    (["report", "run", "--xyz"], "--xyz"),  # nothing close: no guess
    (["pipeline", "--model"], "--model"),  # the dashes alone made it close to "--help"
    (["evaluate", "--model", "m", "--limt=3"], "--limt=3 (did you mean '--limit'?)"),  # with its value
])
def test_a_mistyped_option_names_the_closest(argv: list[str], said: str, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    from gsm8k_tr.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"gsm8k-tr {argv[0]}: error: unrecognized arguments: {said}; see gsm8k-tr "
                                       f"{argv[0]} --help\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,verbose", [(["report", "r", "-v"], True), (["report", "r", "--verbose"], True),
                                          (["-v", "report", "r"], True), (["report", "r"], False)])
def test_verbose_goes_before_or_after_the_command(argv: list[str], verbose: bool) -> None:
    # after the command it was an unrecognized argument
    from gsm8k_tr.cli import build_parser

    args, extra = build_parser().parse_known_args(argv)
    assert args.verbose is verbose and extra == []


@pytest.mark.parametrize("argv,said", [
    (["evalute", "--model", "m"], "unknown command 'evalute' (did you mean 'evaluate'?)"),
    (["-v", "sftt"], "unknown command 'sftt' (did you mean 'sft'?)"),
    (["xyz"], "unknown command 'xyz'"),  # nothing close: no guess
])
def test_a_mistyped_command_names_the_closest(argv: list[str], said: str, capsys) -> None:
    from gsm8k_tr.cli import COMMANDS, main

    assert main(argv) == 2
    assert capsys.readouterr().err == f"gsm8k-tr: error: {said}; the commands are {', '.join(COMMANDS)}\n"
