"""The core's import graph has no circle, and no module of the tree re-exports another module's names.

The graph: one node per module of ``clipood/``; an edge for every import statement that names another module of
the package, **at any depth** (module level, inside functions, under ``if TYPE_CHECKING``): a deferred import
still makes the two modules depend on each other, and the three circles this test was written against were all
deferred ones. ``from P import x`` is an edge to ``P.x`` when that is a module, else to ``P``. The edge that
Python adds from a submodule to its parent package (the package ``__init__`` runs first) is not counted: only
``clipood/__init__.py`` and ``clipood/posthoc/__init__.py`` import anything, and both only import their own
submodules. The checks are themselves tested on planted packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "clipood"
#: packages whose ``__init__`` is their public surface: ``clipood`` (the stable top-level names, lazily) and
#: ``clipood.posthoc`` (the post-hoc scores package's API)
FACADES = ("clipood", "clipood.posthoc")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package_dir: Path) -> dict[str, Path]:
    return {_module_name(p, package_dir.parent): p for p in sorted(package_dir.rglob("*.py"))}


def _source_module(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _in_package(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports (imports at any depth)."""
    mods = _modules(package_dir)
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(filter(None, (_in_package(a.name, mods) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                src = _source_module(module, path, node)
                for a in node.names:
                    t = f"{src}.{a.name}" if f"{src}.{a.name}" in mods else _in_package(src, mods)
                    if t:
                        targets.add(t)
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (c := visit(v)):
            return c
    return None


def _defined(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
                elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
    return names


def borrowed_names(package_dir: Path, files: list[Path], file_root: Path) -> list[str]:
    """``from M import n`` statements in ``files`` whose ``n`` is neither defined in the package module ``M`` nor a
    submodule of it: a name taken from a module that only re-exports it (facade packages excepted)."""
    mods = _modules(package_dir)
    defined = {m: _defined(p) for m, p in mods.items()}
    found = []
    for path in files:
        module = _module_name(path, file_root)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            src = _source_module(module, path, node)
            if src not in mods or src in FACADES:
                continue
            for a in node.names:
                if a.name != "*" and a.name not in defined[src] and f"{src}.{a.name}" not in mods:
                    found.append(f"{path.relative_to(file_root)}:{node.lineno}: {a.name} from {src}")
    return found


def _tree_files() -> list[Path]:
    """The project's Python files (``clipood_recipes/scripts`` is a link to ``recipes/``)."""
    tops = ("clipood", "adapters", "clipood_recipes", "recipes", "benchmarks", "scripts", "tests", "docs")
    return [p for top in tops for p in sorted((ROOT / top).rglob("*.py"))
            if p.relative_to(ROOT).parts[:2] != ("clipood_recipes", "scripts")]


# ------------------------------------------------------------------------------------------------ the tree
def test_the_core_import_graph_has_no_circle():
    graph = import_graph(CORE)
    assert len(graph) > 40 and "clipood.evaluation.benchmark" in graph  # the walk found the rooms
    assert "clipood.config.records" in graph["clipood.evaluation.benchmark"]  # an import under TYPE_CHECKING
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_takes_a_name_from_a_module_that_only_re_exports_it():
    files = _tree_files()
    assert any(p.parts[-2:] == ("clipood_recipes", "krnft.py") for p in files) and len(files) > 150
    assert borrowed_names(CORE, files, ROOT) == []


def test_no_lazy_re_export_hooks_below_the_package_root():
    """A module-level ``__getattr__`` is how the old back-compat re-exports were made; only ``clipood/__init__.py``
    keeps one (the stable top-level names, without importing torch at ``import clipood``)."""
    hooks = [str(p.relative_to(ROOT)) for p in sorted(CORE.rglob("*.py"))
             if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
    assert hooks == ["clipood/__init__.py"]


# ------------------------------------------------------------------------------- the checks, on planted code
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / "pkg" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path / "pkg"


def test_a_circle_through_a_deferred_import_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "room/__init__.py": "",
        "room/a.py": "from ..b import g\n\ndef f():\n    return g()\n",
        "b.py": "def g():\n    from .room.a import f  # deferred, still a circle\n    return f\n",
        "c.py": "from pkg.b import g\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.room.a"] == {"pkg.b"} and graph["pkg.c"] == {"pkg.b"}
    assert find_cycle(graph) in (["pkg.b", "pkg.room.a", "pkg.b"], ["pkg.room.a", "pkg.b", "pkg.room.a"])


def test_type_checking_and_submodule_imports_are_edges(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "from . import a\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "import pkg.a\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycle(graph) is not None
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_a_name_borrowed_from_a_re_exporting_module_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "home.py": "VALUE = 1\n\ndef build():\n    return VALUE\n",
        "shim.py": "from .home import VALUE, build  # re-exported\n",
        "user.py": "from .home import build\nfrom pkg.shim import VALUE\n",
    })
    files = sorted(pkg.rglob("*.py"))
    assert borrowed_names(pkg, files, tmp_path) == ["pkg/user.py:2: VALUE from pkg.shim"]
