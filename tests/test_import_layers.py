"""Imports run the way docs/ARCHITECTURE.md ("Which way imports go") draws them: every import of
one stage from another is an arrow listed there, no module imports itself back through others,
and test modules import only the shared test modules, never one another. Read from the source
(imports inside functions included), nothing is imported."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Installed package -> folder (setup.py's package_dir).
PACKAGES = {"cmgl_dist": ROOT / "cmgl_dist", "cmgl_dist.kernels": ROOT / "kernels",
            "cmgl_dist.shards": ROOT / "shards", "cmgl_dist.configs": ROOT / "configs"}
# Imported from anywhere, importing no stage.
LEAVES = {"atomic", "logs", "phases", "kernel_limits", "untrusted", "locks", "host_reads", "redact"}
# stage -> the stages it may import (docs/ARCHITECTURE.md); leaves and config are open to every stage.
ARROWS = {
    "cli": None,  # each command's module, imported on use
    "__init__": {"api"},
    "api": {"evaluate", "engine", "data", "shards"},
    "predict": {"api", "evaluate", "shards"},
    "pipeline": {"shards"},
    "bench": {"pipeline", "engine", "model", "data", "losses", "shards"},
    "engine": {"model", "losses", "data"},
    "evaluate": {"engine", "data", "losses", "kernels", "shards"},
    "model": set(),
    "losses": {"kernels"},
    "data": {"shards"},
    "kernels": set(),
    "shards": set(),
    "config": set(),
}
SHARED_TEST_MODULES = {"helpers", "conftest", "gloria_oracle"}


def module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGES.items(), key=lambda item: -len(item[0])):
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            return ".".join([package] + (parts[:-1] if parts[-1] == "__init__" else parts))
    raise ValueError(path)


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@functools.cache
def project_imports() -> dict[str, set[str]]:
    """module -> the project's modules it imports."""
    files = [p for folder in PACKAGES.values() for p in folder.rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {m: {n for n in imported_names(p) if n in modules and n != m} for m, p in modules.items()}


def test_every_import_between_stages_is_an_arrow_of_the_map():
    upward = []
    for module, targets in project_imports().items():
        allowed = ARROWS.get(stage(module), set())
        for target in targets:
            to = stage(target)
            if (allowed is not None and to != stage(module) and to not in allowed | LEAVES | {"config"}
                    and not target.startswith("cmgl_dist.configs")):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports docs/ARCHITECTURE.md does not draw: " + ", ".join(sorted(upward))


def test_leaves_import_no_stage():
    for module, targets in project_imports().items():
        if stage(module) in LEAVES:
            assert {stage(t) for t in targets} <= LEAVES, f"{module} imports {sorted(targets)}"


def test_no_module_imports_itself_back():
    """No cycle between modules (a module importing its own package, whose __init__ re-exports it, is none)."""
    graph = project_imports()
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [module, target]))
            elif target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, cycles


def test_test_modules_import_only_the_shared_ones():
    tests = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for path in sorted((ROOT / "tests").glob("*.py")):
        others = {n.split(".")[0] for n in imported_names(path)} & tests - SHARED_TEST_MODULES - {path.stem}
        assert not others, f"{path.name} imports test module(s) {sorted(others)}: move what they share to helpers.py"
