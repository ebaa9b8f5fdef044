"""The wheels for a GPU machine without a package index: one set that installs beside the machine's own torch and
works whatever versions of the rest its image holds.

`../shared/gpu/wheels.sh` fetches the named packages alone (transformers, TRL, PEFT, ...) at `.venv`'s versions.
On 2026-12-04 that set held transformers 5.25.0, which asks for huggingface-hub 2.4 or newer (and kernels 0.19),
beside a GPU image with huggingface-hub 1.33: transformers refused to import and every part stopped. This fetches
the whole dependency closure of the packages the GPU parts import, at `.venv`'s versions, leaving to the image only
torch and what is built against it (IMAGE), and checks that the set is closed:

    .venv/bin/python benchmarks/gpu_wheels.py                 # fill .whl/ (needs a package index), then --check
    .venv/bin/python benchmarks/gpu_wheels.py --check .whl    # every wheel's requirements met by the set or the image
    python3 benchmarks/gpu_wheels.py --check-installed /tmp/site   # on the GPU machine, after installing the set

`benchmarks/gpu_session.sh` runs the two checks: `--check` in a dry run on a CPU, `--check-installed` on the GPU
machine before its first part, so a set that cannot import stops in seconds with the requirement it misses.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

# What the GPU parts import; their dependencies follow from the metadata.
ROOTS = ("trl", "transformers", "peft", "accelerate", "datasets", "gguf", "rich", "pyyaml")
# Left to the image: its CUDA torch and the packages torch brings or that are built against numpy's ABI (and large).
IMAGE = ("torch", "triton", "numpy", "pandas", "pyarrow", "sympy", "mpmath", "networkx", "setuptools")
IMAGE_PREFIXES = ("nvidia-", "cuda-")
# The GPU image's Python and platform (`../shared/gpu/README.md`).
PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
ENVIRONMENT = {"python_version": PYTHON, "python_full_version": PYTHON + ".0", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def key(name: str) -> str:
    """A distribution's name as packaging compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def left_to_image(name: str) -> bool:
    return key(name) in IMAGE or key(name).startswith(IMAGE_PREFIXES)


def needed(requires: list[str] | None) -> list[Requirement]:
    """The requirements that apply on the GPU machine: markers evaluated there, extras not asked for."""
    out = []
    for line in requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(ENVIRONMENT):
            out.append(requirement)
    return out


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """Each distribution the roots need, with the version this Python has installed (`.venv`'s)."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if key(name) in found or left_to_image(name):
            continue
        distribution = importlib.metadata.distribution(name)
        found[key(name)] = distribution.version
        todo.extend(requirement.name for requirement in needed(distribution.requires))
    return dict(sorted(found.items()))


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """A wheel's name, version and requirements, from its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = Parser().parsestr(archive.read(member).decode())
    return message["Name"], message["Version"], message.get_all("Requires-Dist") or []


def unmet(have: dict[str, str], requires: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Each requirement that `have` (name -> version) does not meet: the name required, and a line saying so."""
    found = []
    for owner, lines_required in sorted(requires.items()):
        for requirement in needed(lines_required):
            version = have.get(key(requirement.name))
            if version is None:
                found.append((requirement.name, f"{owner} needs {requirement}: no {requirement.name} in the set"))
            elif requirement.specifier and not requirement.specifier.contains(Version(version), prereleases=True):
                found.append((requirement.name, f"{owner} needs {requirement}: the set has {requirement.name} "
                                                f"{version}"))
    return found


def check_folder(folder: Path) -> list[str]:
    """Whether the wheels in `folder` form a closed set, the image's own packages aside."""
    have, requires = {}, {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version, lines = wheel_metadata(wheel)
        if key(name) in have:
            return [f"{folder}: two wheels of {name} ({have[key(name)]} and {version}): remove the older"]
        have[key(name)] = version
        requires[f"{name} {version}"] = lines
    if not have:
        return [f"{folder}: no wheels; fill it with `.venv/bin/python benchmarks/gpu_wheels.py`"]
    # a package left to the image: its version there is unknown until the machine runs (check_installed)
    return [line for name, line in unmet(have, requires) if not (key(name) not in have and left_to_image(name))]


def check_installed(folder: Path) -> tuple[list[str], list[str]]:
    """Whether what was installed into `folder` imports here: its requirements against what this Python sees
    (the folder first on its path, as gpu_session.sh sets it, then the image). Returns the problems, and apart the
    requirements on the image's own packages (torch, numpy, pyarrow, ...) that it does not meet: metadata often
    asks for more than an import needs, and the image's versions ran before, so those are said, not stopped at."""
    have: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():  # in path order: the first one is what imports
        have.setdefault(key(distribution.metadata["Name"]), distribution.version)
    requires = {}
    for distribution in importlib.metadata.distributions(path=[str(folder)]):
        requires[f"{distribution.metadata['Name']} {distribution.version}"] = distribution.requires
    if not requires:
        return [f"{folder}: nothing installed there; install the set with pip install --target {folder}"], []
    found = unmet(have, requires)
    return [line for name, line in found if not left_to_image(name)], [line for name, line in found
                                                                       if left_to_image(name)]


def fetch(folder: Path, versions: dict[str, str]) -> None:
    """Download each pinned wheel for the GPU machine's Python, and drop any other version already there."""
    folder.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON, "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + [f"{name}=={version}" for name, version in versions.items()], check=True)
    for wheel in folder.glob("*.whl"):
        name, version, _ = wheel_metadata(wheel)
        if versions.get(key(name)) != version:
            wheel.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path(".whl"), help="where the wheels go (default .whl)")
    parser.add_argument("--check", type=Path, metavar="FOLDER", help="only check a folder of wheels")
    parser.add_argument("--check-installed", type=Path, metavar="FOLDER",
                        help="only check what was installed into FOLDER against this Python's packages")
    args = parser.parse_args(argv)
    notes: list[str] = []
    if args.check_installed:
        problems, notes = check_installed(args.check_installed)
    elif args.check:
        problems = check_folder(args.check)
    else:
        fetch(args.folder, closure())
        problems = check_folder(args.folder)
    for line in notes:
        print(f"gpu_wheels: {line} (the image's own package; going on)", file=sys.stderr)
    for line in problems:
        print(f"gpu_wheels: {line}", file=sys.stderr)
    if not problems:
        print("gpu_wheels: the set is closed" + (" and imports here" if args.check_installed else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
