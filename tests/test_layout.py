"""The package's rooms and the one direction imports run in, read from the source with `ast`.

Every import of a gsm8k_tr module counts, the ones inside functions too: a
lazy import is still a dependency, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "gsm8k_tr"

# Lowest first. A module may import modules of its own level or below, never above. Inference sits below training,
# so it can never import the trainer; data sits below both and never imports either.
LEVELS: list[set[str]] = [
    {"gsm8k_tr", "errors", "grading"},  # grading needs nothing of ours: pure Python
    # placement: what runs where, decided once
    {"config", "typed_values", "outputs", "gguf_convert", "toolchain", "placement", "hub"},
    {"data"},
    {"builtin"},
    {"modeling", "processes"},
    {"run_folder"},  # what training writes and inference reads: finished stages, the prepared data
    {"infer"},
    {"train"},
    {"report"},
    {"pipeline"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """`gsm8k_tr.train.sft` → `train`; the package itself → `gsm8k_tr`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def level(module: str) -> int:
    return next(i for i, names in enumerate(LEVELS) if room(module) in names)


def imports(path: Path) -> set[str]:
    """The gsm8k_tr modules `path` imports (a `from package import module` names the module)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gsm8k_tr")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gsm8k_tr"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) - {module_name(path)} for path in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{m} (level {level(m)}) imports {t} (level {level(t)})"
            for m, targets in edges.items() for t in sorted(targets) if level(t) > level(m)]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                trail = [*path, node]
                return [*trail[trail.index(target):], target]
            if target not in state and (cycle := visit(target, [*path, node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_every_module_has_a_room() -> None:
    unknown = sorted(m for m in graph() if not any(room(m) in names for names in LEVELS))
    assert not unknown, f"add these to LEVELS: {unknown}"


def test_no_module_imports_one_above_it() -> None:
    assert not upward_imports(graph()), "\n".join(upward_imports(graph()))


def test_there_is_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " → ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import() -> None:
    # The two faults the issue names: artifacts ↔ a stage module, and inference importing the trainer.
    edges = {"gsm8k_tr.train.artifacts": {"gsm8k_tr.train.stage"}, "gsm8k_tr.train.stage": {"gsm8k_tr.train.artifacts"},
             "gsm8k_tr.infer.evaluate": {"gsm8k_tr.train.stage"}}
    cycle = find_cycle(edges)
    assert cycle and cycle[0] == cycle[-1] and set(cycle) == {"gsm8k_tr.train.artifacts", "gsm8k_tr.train.stage"}
    assert upward_imports(edges) == ["gsm8k_tr.infer.evaluate (level 6) imports gsm8k_tr.train.stage (level 7)"]


def test_grading_and_data_do_not_import_torch() -> None:
    # The grader is shared by the reward and evaluation, and must stay importable anywhere, fast.
    for path in [*(PACKAGE / "grading").rglob("*.py"), *(PACKAGE / "data").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert "torch" not in names, path


def test_no_module_is_over_the_size_limit() -> None:
    # The house style keeps a module to about 400 lines, one job each; far past that, a module holds more than one.
    long = [(module_name(p), n) for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450]
    assert not long, long


def test_the_readme_file_tree_names_every_module() -> None:
    # One line per file in the README's tree (the house style): a module added without one is found here.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tree = readme[readme.index("## Files"):]
    missing = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if p.name != "__init__.py" and not re.search(rf"(?<![\w/.]){re.escape(p.name)}\b", tree))
    assert not missing, f"name these in the README's Files section: {missing}"
