"""The package's floors (docs/ARCHITECTURE.md): imports point down only, and no two modules import each other.

The test walks every module of ``src/lastvit`` with ``ast`` and collects each first-party import, at module level or
inside a function alike (a function-local import is still a dependency; that is how circles used to hide). It fails
on an import from a lower floor to a higher one, on a circle between modules, and on ``except ImportError`` around a
first-party import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lastvit"

#: Top floor first. A module belongs to the first entry that is a prefix of its dotted name (``lastvit.x`` or
#: ``lastvit.x.y``). A module may import from its own floor and from floors below it, never above.
FLOORS: list[tuple[str, ...]] = [
    ("lastvit.cli",),
    ("lastvit.demo", "lastvit.study"),
    ("lastvit.paradigms", "lastvit.ovdet_miniature"),
    ("lastvit.train",),
    ("lastvit.detection",),
    ("lastvit.factory",),
    ("lastvit.evaluate",),
    ("lastvit.analysis",),
    ("lastvit.viz", "lastvit.report"),
    ("lastvit.checkpoints",),
    ("lastvit.models",),
    ("lastvit.data",),
    ("lastvit.recipes", "lastvit.rundir", "lastvit.io", "lastvit.aggregate"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def first_party_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every ``lastvit`` import in the file, resolving relative imports."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lastvit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "lastvit":
                continue
            # ``from lastvit.pkg import submodule`` depends on the submodule
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else mod))
    return out


def _is_module(dotted: str) -> bool:
    p = SRC.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


#: the package root re-exports the public names (``lastvit.create_model`` ...): it stands on the factory's floor
ROOT_FLOOR = "lastvit.factory"


def floor_of(mod: str) -> int | None:
    if mod == "lastvit":
        mod = ROOT_FLOOR
    for i, names in enumerate(FLOORS):
        if any(mod == n or mod.startswith(n + ".") for n in names):
            return i
    return None


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_floor():
    unplaced = [m for m in _modules() if floor_of(m) is None]
    assert not unplaced, f"modules with no floor in FLOORS (add them to docs/ARCHITECTURE.md and here): {unplaced}"


def test_imports_point_down_only():
    bad = []
    for mod, path in _modules().items():
        mine = floor_of(mod)
        for line, target in first_party_imports(path):
            theirs = floor_of(target)
            if theirs is not None and mine is not None and theirs < mine:
                bad.append(f"{path.relative_to(SRC.parent)}:{line} ({mod}) imports {target} from a higher floor")
    assert not bad, "\n".join(bad)


def test_no_import_circles_between_modules():
    graph: dict[str, set[str]] = {}
    mods = _modules()
    for mod, path in mods.items():
        graph[mod] = set()
        for _, target in first_party_imports(path):
            # importing a package runs its __init__; importing lastvit.x.y runs lastvit.x too
            while target and target not in mods:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
    # Tarjan's strongly connected components: a component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_no_first_party_import_guards():
    bad = []
    for path in _modules().values():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not catches & {"ImportError", "ModuleNotFoundError"}:
                continue
            for inner in node.body:
                for sub in ast.walk(inner):
                    names = []
                    if isinstance(sub, ast.ImportFrom):
                        names = [sub.module or ""] if not sub.level else ["lastvit"]
                    elif isinstance(sub, ast.Import):
                        names = [a.name for a in sub.names]
                    if any(n.split(".")[0] == "lastvit" for n in names):
                        bad.append(f"{path.relative_to(SRC.parent)}:{sub.lineno}")
    assert not bad, f"first-party imports guarded by except ImportError: {bad}"


@pytest.mark.parametrize("source, expected", [
    ("from lastvit.models import vit\n", ["lastvit.models.vit"]),
    ("from . import io\n", ["lastvit.io"]),
    ("def f():\n    import lastvit.train.runner\n", ["lastvit.train.runner"]),
])
def test_import_walker_sees_every_form(source, expected):
    # the walker itself: module-level, relative and function-local imports are all seen
    assert [m for _, m in first_party_imports(SRC / "_probe.py", source)] == expected
