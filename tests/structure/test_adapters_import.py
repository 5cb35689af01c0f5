"""Package identity (AdapterHub shadowing), explicit registration and dependency direction (layers)."""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import adapters
from adapters import base
from clipood_recipes._compat import import_adapters
from clipood.errors import ClipoodError

ROOT = Path(__file__).resolve().parents[2]


def test_marker_and_compat_import():
    assert adapters.__clipood_adapters__ is True
    assert import_adapters() is adapters


def test_foreign_adapters_package_gives_clear_error(tmp_path):
    fake = tmp_path / "adapters"
    fake.mkdir()
    (fake / "__init__.py").write_text("# stands in for AdapterHub's package\n")
    code = (
        "from clipood_recipes._compat import import_adapters\n"
        "from clipood.errors import ClipoodError\n"
        "try:\n    import_adapters()\nexcept ClipoodError as e:\n    print(e)\nelse:\n    print('NO ERROR')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    msg = out.stdout.strip()
    assert str(fake / "__init__.py") in msg
    assert "not clipood's adapters package" in msg and "pip uninstall adapters" in msg


def test_reimport_does_not_raise():
    """A module re-import re-runs register_adapter with a re-created class of the same definition.

    Simulated without importlib.reload, which would leave other test modules holding stale classes.
    """
    spec = base.get_adapter_spec("nft")
    base.register_adapter("nft", spec.config_cls, spec.adapter_cls)  # same objects: fine
    clone = type(spec.adapter_cls.__name__, (spec.adapter_cls,), {"__module__": spec.adapter_cls.__module__,
                                                                   "__qualname__": spec.adapter_cls.__qualname__})
    try:
        base.register_adapter("nft", spec.config_cls, clone)  # same module + qualname: a reload, not a clash
        assert base.get_adapter_class("nft") is clone
    finally:
        base._REGISTRY["nft"] = spec
    assert base.get_adapter_class("nft") is adapters.NFT


@dataclasses.dataclass
class _Cfg(base.AdapterConfig):
    pass


class _Other(base.Adapter):
    pass


def test_registry_rules():
    with pytest.raises(ClipoodError, match="already registered"):
        base.register_adapter("nft", _Cfg, _Other)
    with pytest.raises(ClipoodError, match="lowercase"):
        base.register_adapter("NFT2", _Cfg, _Other)
    with pytest.raises(ClipoodError, match="must subclass"):
        base.register_adapter("thing", _Cfg, dict)
    try:
        base.register_adapter("test_other", _Cfg, _Other)
        assert "test_other" in adapters.list_adapters()
        assert adapters.get_adapter_class("test_other") is _Other and _Other.name == "test_other"
    finally:
        base._REGISTRY.pop("test_other", None)


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:  # module level only: imports inside functions are allowed to be heavy
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


#: what the core must never reach: the method registry, the layer above it, the adapters' entry-point group
UPPER = re.compile(r"^(adapters|clipood_recipes)(\.|$)|^clipood\.adapters$")
IMPORTERS = {"import_module", "__import__", "find_spec", "spec_from_file_location", "spec_from_loader",
             "load_module", "exec_module", "entry_points", "run_path", "run_module"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def layer_violations(source: str, filename: str = "<core>") -> list[str]:
    """Every route from a core module to ``adapters`` / ``clipood_recipes``, found on every AST node: import
    statements at any depth, string names of those packages anywhere in code (``importlib.import_module``,
    ``__import__``, ``sys.modules[...]``, entry-point groups), and importer calls whose target is computed."""
    tree = ast.parse(source, filename)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if UPPER.match(a.name)]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and UPPER.match(mod):
                found.append(f"{where} from {mod} import ...")
            found += [f"{where} from {'.' * node.level}{mod} import {a.name}" for a in node.names
                      if UPPER.match(a.name) or (mod in ("importlib", "importlib.util", "runpy")
                                                 and a.name in IMPORTERS and a.asname not in (None, a.name))]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if UPPER.match(node.value.strip()):
                found.append(f"{where} string {node.value!r}")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in IMPORTERS and node.args and not isinstance(node.args[0], ast.Constant):
                found.append(f"{where} {name}(<computed name>)")
            if name == "getattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in IMPORTERS:
                found.append(f"{where} getattr(..., {node.args[1].value!r})")
    return found


CORE = sorted((ROOT / "clipood").rglob("*.py"))


def test_core_never_reaches_the_method_layers():
    """The core (``clipood/``) knows no method: no route to ``adapters`` or ``clipood_recipes`` at all."""
    assert len(CORE) > 20
    bad = [v for path in CORE for v in layer_violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert bad == []


PLANTED = {
    "function-level import": "def f():\n    import adapters\n    return adapters\n",
    "from-import in a method": "class A:\n    def m(self):\n        from adapters.base import Adapter\n",
    "submodule import": "import adapters.registry as r\n",
    "upper layer": "def f():\n    from clipood_recipes.methods import build_method\n",
    "importlib": "import importlib\ndef f():\n    return importlib.import_module('adapters')\n",
    "__import__": "def f():\n    return __import__('adapters.base')\n",
    "computed name": "import importlib\ndef f(n):\n    return importlib.import_module(n)\n",
    "aliased importer": "from importlib import import_module as load\nx = load('json')\n",
    "sys.modules": "import sys\ndef f():\n    return sys.modules['adapters']\n",
    "entry points": "from importlib.metadata import entry_points\neps = entry_points(group='clipood.adapters')\n",
    "getattr importer": "import importlib\nf = getattr(importlib, 'import_module')\n",
    "relative name": "from .. import adapters\n",
}


@pytest.mark.parametrize("route", sorted(PLANTED))
def test_dependency_test_catches_a_planted_violation(route, tmp_path):
    """The checker itself: each planted route is reported, and a real core file with it planted fails."""
    assert layer_violations(PLANTED[route]), route
    clean = (ROOT / "clipood" / "errors.py").read_text(encoding="utf-8")
    assert layer_violations(clean) == []
    assert layer_violations(clean + "\n" + PLANTED[route]), route


def test_docstrings_and_harmless_importlib_pass():
    ok = '''"""Mentions adapters and `import adapters` in prose only."""
from importlib.util import find_spec
spec = find_spec("timm")
def f():
    """A docstring naming clipood_recipes."""
    return "the adapters of this run"  # a string that merely contains the word
'''
    assert layer_violations(ok) == []


def test_light_imports():
    heavy = {"open_clip", "datasets", "matplotlib", "accelerate", "timm"}
    for path in (ROOT / "adapters").glob("*.py"):
        assert not (_top_level_imports(path) & heavy), path
