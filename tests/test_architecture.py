"""Imports flow one way: memory is a library below org, and memory's own modules form no cycle.

Every import statement counts, wherever it is: at the top, inside a function, under
TYPE_CHECKING, and `importlib.import_module("...")` / `__import__("...")` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMORY = ROOT / "memory"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _memory_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(MEMORY.rglob("*.py"))}


def _imports(path: Path, module: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything `path` (module `module`) imports. `from a.b import c`
    yields both a.b and a.b.c (c may be a module); relative imports resolve against its package."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base:
                yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def _is_in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_memory_imports_nothing_from_org() -> None:
    offenders = {  # one line per import statement (a from-import also yields its names)
        f"{path.relative_to(ROOT)}:{line}": name
        for path in _memory_modules().values()
        for line, name in reversed(list(_imports(path)))
        if _is_in(name, "org")
    }
    lines = [f"{where}: {name}" for where, name in sorted(offenders.items())]
    assert not offenders, "memory is a library below org; it imports org here:\n" + "\n".join(lines)


def _graph() -> dict[str, set[str]]:
    modules = _memory_modules()
    return {
        module: {name for _, name in _imports(path) if name in modules and name != module}
        for module, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_memory_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert "memory.store" in graph and graph["memory.store"], "the graph found no imports at all"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle inside memory: " + " -> ".join(cycle or [])


def test_the_checks_see_every_form_of_import(tmp_path: Path) -> None:
    """The parser itself: each form below must be found (a check that sees nothing passes)."""
    source = (
        "from __future__ import annotations\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "import org\n"
        "if TYPE_CHECKING:\n"
        "    from org.errors import HarnessError\n"
        "def f():\n"
        "    from org import settings\n"
        "    importlib.import_module('org.database')\n"
        "    __import__('org.cli')\n"
        "    from . import notes\n"
        "    from .store import NoteStore\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(source, encoding="utf-8")
    names = [name for _, name in _imports(probe, "memory.probe")]
    assert sorted(n for n in names if _is_in(n, "org")) == [
        "org", "org", "org.cli", "org.database", "org.errors", "org.errors.HarnessError", "org.settings",
    ]  # fmt: skip
    assert {"memory.notes", "memory.store"} <= set(names)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_target_imports_neither_org_nor_memory() -> None:
    """trainer/ is the default target: it runs in a sandbox with only its own harness."""
    found = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in sorted((ROOT / "trainer").rglob("*.py"))
             for line, name in _imports(path, _module_name(path)) if _is_in(name, "org") or _is_in(name, "memory")]
    assert not found, "\n".join(found)


def test_readme_layout_lists_every_engine_and_memory_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not line.startswith(" ") and name.endswith("/"):
            folder = name.rstrip("/")
        elif line.startswith("  ") and name.endswith(".py"):
            listed.setdefault(folder, set()).add(name)
    for pkg in ("org", "memory"):
        actual = {p.name for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"}
        assert listed.get(pkg) == actual, (pkg, sorted(actual ^ listed.get(pkg, set())))
