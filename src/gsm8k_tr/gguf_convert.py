"""GGUF files as ordinary models: dequantized by transformers, unmarked as quantized, saved as safetensors.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=...)`,
with the pure-Python `gguf` package) and unpacks every tensor into dense
float weights. This is the route a user takes to fine-tune a GGUF model, and
`builtin:smollm2-135m` takes it once to make a plain safetensors folder.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsm8k_tr.errors import UserError

log = logging.getLogger(__name__)


def require_gguf() -> None:
    """The `gguf` package reads the files; say so in one line if it is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a GGUF file needs the gguf package: pip install gguf")


def unmark_dequantized(model: Any) -> None:
    """A GGUF file unpacked into dense float weights is an ordinary model: say so.

    transformers keeps the GGUF quantizer attached even when it dequantized
    every tensor (no packed-matmul kernel on CPU), and the Trainer then
    refuses to train it. Packed weights would not be floating point; those
    stay marked, and the Trainer's own error explains them.
    """
    if getattr(model, "hf_quantizer", None) is None or not all(p.is_floating_point() for p in model.parameters()):
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@contextmanager
def read_once() -> Iterator[None]:
    """Within the block, each GGUF file's header is parsed once, and gguf's tensor-name map built once per shape.

    For the architectures that transformers loads through its legacy GGUF
    path (Llama among them, in 5.25), one model load parses the whole header
    with gguf's pure-Python reader three times (for the config, again for the
    config with the weights, and for the weights), and builds gguf's
    tensor-name map once per module of the model (397 times for SmolLM2).
    transformers only reads the reader's `fields` and `tensors` and asks the
    map for names, so sharing them changes nothing that is loaded: SmolLM2's
    converted files are byte-identical. On 2 cores its conversion took 24 s
    against 50, and loading its GGUF file with `model.gguf_file` 23 s against 45.
    """
    require_gguf()
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path: os.PathLike[str] | str, mode: str = "r") -> Any:
        status = os.stat(path)  # a file replaced in between is read again
        key = (os.path.realpath(path), status.st_size, status.st_mtime_ns, mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def convert(gguf_path: Path, target: Path) -> None:
    """Write the model and tokenizer of a GGUF file into `target` as a safetensors model folder (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("dequantizing %s into %s", gguf_path, target)
    with read_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # Without Hub kernels, as `modeling.load_model` loads (transformers 5.25 would fetch them, or fail without them)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, use_kernels=False)
    unmark_dequantized(model)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
