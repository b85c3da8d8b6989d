"""The arrows point from entry points and scripts to the library, never back; bksdm_edge/bench has no cycle.

Imports are read from the source (every ``import`` / ``from ... import``, at module level or inside a
function), so a lazy import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bksdm_edge"
# The entry-point layer: the CLI, its subcommands and the main job (which runs CLI steps). Library modules
# may not import these; they may import each other and the library.
ENTRY_POINTS = ("bksdm_edge.cli", "bksdm_edge.__main__", "bksdm_edge.commands", "bksdm_edge.main_job")
FORBIDDEN_FOR_LIBRARY = ENTRY_POINTS + ("benchmarks", "export")  # export/ = the scripts folder, not bksdm_edge.export


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved; ``from X import y`` gives
    ``X`` and ``X.y``, since y may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def library_modules() -> dict[str, Path]:
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {n: p for n, p in mods.items() if not _within(n, ENTRY_POINTS)}


def test_imports_are_parsed_with_relative_levels():
    found = imports_of(PACKAGE / "bench" / "runner.py")
    assert "bksdm_edge.bench.backends" in found and "bksdm_edge.profiler" in found


def test_library_never_imports_entry_points_or_scripts():
    bad = {name: sorted(i for i in imports_of(path) if _within(i, FORBIDDEN_FOR_LIBRARY))
           for name, path in library_modules().items()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"library modules import the CLI / main job / scripts: {bad}"


def test_no_import_cycle_in_bench():
    mods = {n: p for n, p in library_modules().items() if _within(n, ("bksdm_edge.bench",))}
    graph = {n: {i for i in imports_of(p) if i in mods and i != n} for n, p in mods.items()}
    # Depth-first search for a back edge.
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
