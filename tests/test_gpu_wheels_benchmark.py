"""`benchmarks/gpu_wheels.py`: the GPU machine's wheel set is the whole closure at this environment's versions, and
a set that would not import there (a requirement missing, or met only at the wrong version) is named before the
machine is used."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, load_benchmark

bench = load_benchmark("gpu_wheels")


def metadata(name: str, version: str, requires: list[str]) -> str:
    return "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                    *(f"Requires-Dist: {line}\n" for line in requires)])


def wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata(name, version, requires))
    return path


def installed(folder: Path, name: str, version: str, requires: list[str]) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(metadata(name, version, requires))


def test_the_closure_pins_what_is_installed_and_leaves_torch_to_the_image() -> None:
    versions = bench.closure()
    for name in ("transformers", "trl", "huggingface-hub", "tokenizers", "safetensors", "packaging"):
        assert versions[name] == importlib.metadata.version(name)
    assert not any(bench.left_to_image(name) for name in versions)
    assert "torch" not in versions and "numpy" not in versions


def test_a_closed_set_passes_and_an_open_one_names_each_missing_requirement(tmp_path: Path) -> None:
    # transformers 5.25 with huggingface-hub 1.33 beside it: the set that stopped every GPU part on 2026-12-04
    wheel(tmp_path, "transformers", "5.25.0", ["huggingface-hub<3.0,>=2.4.0", "numpy>=1.17", "tqdm>=4.27"])
    wheel(tmp_path, "huggingface_hub", "1.33.0", ['pywin32; sys_platform == "win32"', 'pytest; extra == "testing"'])
    assert bench.check_folder(tmp_path) == [
        "transformers 5.25.0 needs huggingface-hub<3.0,>=2.4.0: the set has huggingface-hub 1.33.0",
        "transformers 5.25.0 needs tqdm>=4.27: no tqdm in the set",
    ]  # numpy is the image's; a Windows-only or extra's requirement does not apply
    (tmp_path / "huggingface_hub-1.33.0-py3-none-any.whl").unlink()
    wheel(tmp_path, "huggingface_hub", "2.4.0", [])
    wheel(tmp_path, "tqdm", "4.70.1", [])
    assert bench.check_folder(tmp_path) == []
    wheel(tmp_path, "tqdm", "4.60.0", [])
    assert bench.check_folder(tmp_path) == [f"{tmp_path}: two wheels of tqdm (4.60.0 and 4.70.1): remove the older"]
    assert bench.check_folder(tmp_path / "empty")[0].endswith("no wheels; fill it with "
                                                              "`.venv/bin/python benchmarks/gpu_wheels.py`")


def test_what_was_installed_is_checked_against_what_imports_first(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    site, image = tmp_path / "site", tmp_path / "image"
    installed(site, "transformers", "5.25.0", ["huggingface-hub>=2.4.0", "numpy>=1.17", "pyarrow>=999"])
    installed(image, "huggingface_hub", "1.33.0", [])
    monkeypatch.syspath_prepend(str(image))
    monkeypatch.syspath_prepend(str(site))  # the set first, as gpu_session.sh puts it
    # numpy's version is this environment's, as the image's would be there; an image package's unmet requirement
    # is said apart, and does not stop the parts
    problems, notes = bench.check_installed(site)
    assert problems == ["transformers 5.25.0 needs huggingface-hub>=2.4.0: the set has huggingface-hub 1.33.0"]
    assert len(notes) == 1 and notes[0].startswith("transformers 5.25.0 needs pyarrow>=999: ")
    installed(site, "huggingface_hub", "2.4.0", [])  # the set's own hub shadows the image's
    assert bench.check_installed(site)[0] == []
    assert bench.check_installed(tmp_path / "none")[0][0].endswith("nothing installed there; install the set with "
                                                                   f"pip install --target {tmp_path / 'none'}")
    assert bench.main(["--check-installed", str(site)]) == 0


def test_a_dry_run_stops_before_its_parts_when_the_set_would_not_import(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks")
    (tmp_path / ".whl").mkdir()
    wheel(tmp_path / ".whl", "transformers", "5.25.0", ["huggingface-hub>=2.4.0"])
    out = tmp_path / "out"
    env = {**os.environ, "CPU": "1", "OUT": str(out), "PY": sys.executable}
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh", "check"], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "transformers 5.25.0 needs huggingface-hub>=2.4.0: no huggingface-hub in the set" in summary
    assert "wheels rc=1" in summary and "== check at" not in summary
