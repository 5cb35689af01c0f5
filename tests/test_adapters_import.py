"""Package identity (AdapterHub shadowing), explicit registration and dependency direction."""
from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import adapters
from adapters import base
from clipood._compat import import_adapters
from clipood.errors import ClipoodError

ROOT = Path(__file__).resolve().parents[1]


def test_marker_and_compat_import():
    assert adapters.__clipood_adapters__ is True
    assert import_adapters() is adapters


def test_foreign_adapters_package_gives_clear_error(tmp_path):
    fake = tmp_path / "adapters"
    fake.mkdir()
    (fake / "__init__.py").write_text("# stands in for AdapterHub's package\n")
    code = (
        "from clipood._compat import import_adapters\n"
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


def test_dependency_direction_and_light_imports():
    heavy = {"open_clip", "datasets", "matplotlib", "accelerate", "timm"}
    for path in (ROOT / "adapters").glob("*.py"):
        assert not (_top_level_imports(path) & heavy), path
    for path in (ROOT / "clipood").rglob("*.py"):
        assert "adapters" not in _top_level_imports(path), f"{path} imports adapters at module level"
