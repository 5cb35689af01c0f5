"""The run config stops at the recipe: no core function outside the config room (``clipood/config``: composing
and checking the config is its job) takes the whole run config, and no adapter does.

A parameter counts as the whole config when it is named ``cfg`` without a section type, or is
annotated with ``dict`` / ``Mapping`` / a ``*RunSettings`` schema. Section types (``TrainConfig``, ``CropConfig``,
``MiniWorldConfig``, ``EvalSettings``, an adapter's config class) are what functions take instead.

``STILL_TAKE_THE_CONFIG`` lists the core functions that have not moved to sections yet: the test fails when a
new one appears, and when a listed one no longer takes the config (take it off the list: the list only shrinks).
"""
from __future__ import annotations

import ast

from helpers import ROOT

WHOLE = {"dict", "Mapping", "RunSettings", "TrainRunSettings", "AblationSettings", "ZeroShotSettings"}
STILL_TAKE_THE_CONFIG: dict[str, set[str]] = {}  # every core function takes sections or records now


def _annotation(arg: ast.arg) -> str | None:
    return ast.unparse(arg.annotation) if arg.annotation is not None else None


def _takes_the_config(fn: ast.FunctionDef) -> bool:
    for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
        ann = _annotation(arg)
        names = set(ann.translate(str.maketrans("|[],'\"", " " * 6)).split()) if ann else set()
        if arg.arg == "cfg" and (ann is None or names & WHOLE):
            return True
        if names & (WHOLE - {"dict", "Mapping"}):
            return True
    return False


def config_takers(folder: str, skip: str | None = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if skip and rel.startswith(skip):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and _takes_the_config(n)}
        if found:
            out[rel] = found
    return out


def test_no_adapter_takes_the_run_config():
    assert config_takers("adapters") == {}


def test_core_functions_take_sections_not_the_run_config():
    found = config_takers("clipood", skip="clipood/config/")
    new = {f: sorted(names - STILL_TAKE_THE_CONFIG.get(f, set())) for f, names in found.items()}
    assert {f: n for f, n in new.items() if n} == {}, "take the section(s) the function reads, not the whole config"
    moved = {f: sorted(names - found.get(f, set())) for f, names in STILL_TAKE_THE_CONFIG.items()}
    assert {f: n for f, n in moved.items() if n} == {}, "these no longer take the config: drop them from the list"


def test_the_walk_finds_a_function_that_takes_the_config():
    """The walk itself can fail: a planted ``def f(cfg)`` and ``def g(run: TrainRunSettings)`` are found, a
    section-typed ``def h(cfg: TrainConfig)`` is not."""
    tree = ast.parse("def f(cfg): ...\ndef g(x, run: 'TrainRunSettings'): ...\ndef h(cfg: TrainConfig): ...\n"
                     "def k(cfg: dict | None = None): ...")
    assert {n.name for n in tree.body if _takes_the_config(n)} == {"f", "g", "k"}
