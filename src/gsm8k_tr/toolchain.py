"""What this machine has for compiling kernels: Triton, and the C compiler Triton builds its launchers with.

`placement` decides from these where decoding compiles; the recipe check says where a recipe asks to compile
without them.
"""

from __future__ import annotations

import os
import shutil

from gsm8k_tr.errors import UserError


def has_triton() -> bool:
    """Whether torch's compiler can generate kernels for the CUDA GPU here: Triton installed and the card new
    enough for it, by torch's own check (False on a torch without that check), and a C compiler for Triton."""
    try:
        from torch.utils._triton import has_triton as triton_here
    except ImportError:
        return False
    return triton_here() and c_compiler() is not None


def c_compiler() -> str | None:
    """The C compiler Triton builds kernel launchers with, found as Triton finds it (`CC`, else gcc or clang). Slim
    container images have none: torch's `has_triton` says yes, and the first compiled call fails."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")


def require_c_compiler(what: str, instead: str = "leave decoding at auto, which decodes eager without one") -> None:
    """One line where a recipe asks to compile on a CUDA GPU without a C compiler for Triton."""
    if c_compiler() is None:
        raise UserError(f"{what} compiles kernels with Triton, which needs a C compiler on this machine (none in CC, "
                        f"gcc or clang on the PATH): install one (apt-get install gcc) or set CC, or {instead}")
