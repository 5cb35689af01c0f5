"""Recipe configuration: YAML files + presets + ``key=value`` command-line overrides.

A recipe owns a dict of defaults; a YAML file and then ``key=value`` pairs override it (dotted keys reach into
nested sections, values are parsed as YAML: ``lambda2=10``, ``mini.seed=3``, ``scores=[neglabel,mcm]``).
``preset=NAME`` applies one of the recipe's named presets first. Unknown keys are errors with a "did you mean".
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ClipoodError, did_you_mean, unknown


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        out[key] = v
    return out


def _free_form(dotted: str, known: dict[str, Any]) -> bool:
    """Keys below a section whose default is an empty mapping are free-form (validated by their consumer)."""
    parts = dotted.split(".")
    return any(isinstance(known.get(".".join(parts[:i])), Mapping) and not known[".".join(parts[:i])]
               for i in range(1, len(parts)))


def flat_leaves(d: Mapping | None, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (leaves only)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, Mapping):
            out.update(flat_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(d: dict, dotted: str, value: Any, known: dict[str, Any], where: str) -> None:
    if _free_form(dotted, known):
        node = d
        for p in dotted.split(".")[:-1]:
            node = node.setdefault(p, {})
        node[dotted.split(".")[-1]] = value
        return
    if dotted not in known:
        raise ClipoodError(f"unknown config key '{dotted}' in {where}{did_you_mean(dotted, known)}")
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    old = known[dotted]
    if isinstance(old, Mapping) and not isinstance(value, Mapping) and value is not None:
        raise ClipoodError(f"config key '{dotted}' in {where} is a section; set one of its keys "
                           f"({', '.join(sorted(old))})")
    if isinstance(old, Mapping) and isinstance(value, Mapping):
        for k, v in value.items():
            _set(d, f"{dotted}.{k}", v, known, where)
        return
    node[parts[-1]] = value


_SCI = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; make such values floats, as users mean them."""
    if isinstance(value, str) and _SCI.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse_overrides(args: Sequence[str]) -> list[tuple[str, Any]]:
    """``["a.b=3", "name=x"]`` → ``[("a.b", 3), ("name", "x")]`` (values parsed as YAML)."""
    import yaml

    out = []
    for a in args:
        if "=" not in a or a.startswith("="):
            raise ClipoodError(f"cannot parse command-line argument '{a}': use key=value (e.g. lambda2=10)")
        k, v = a.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_") if k.startswith("--") else k.strip()
        try:
            out.append((k, _numbers(yaml.safe_load(v)) if v != "" else None))
        except yaml.YAMLError:
            out.append((k, v))
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ClipoodError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ClipoodError(f"config file {p}{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ClipoodError(f"config file {p} must hold a mapping of keys to values")
    return _numbers(data)


def build_config(defaults: Mapping, argv: Sequence[str] = (), presets: Mapping[str, Mapping] | None = None,
                 config_file: str | os.PathLike | None = None) -> dict:
    """defaults ← preset ← YAML file ← command-line overrides. Returns a new nested dict."""
    cfg = copy.deepcopy(dict(defaults))
    known = _flatten(defaults)
    overrides = parse_overrides([a for a in argv if not a.startswith("--config")])
    file_data: dict = load_yaml(config_file) if config_file else {}
    preset = dict(overrides).get("preset", file_data.get("preset", cfg.get("preset")))
    if preset is not None and presets is not None:
        if preset not in presets:
            raise unknown("preset", preset, presets)
        for k, v in _flatten(presets[preset]).items():
            if not isinstance(v, Mapping):
                _set(cfg, k, v, known, f"preset '{preset}'")
    for k, v in _flatten(file_data).items():
        if (not isinstance(v, Mapping) or not v) and not (isinstance(v, Mapping) and _free_form(k, known)):
            _set(cfg, k, v, known, str(config_file))
    for k, v in overrides:
        _set(cfg, k, v, known, "the command line")
    return cfg


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config FILE`` / ``--config=FILE`` / ``config=FILE`` out of argv."""
    argv = list(argv)
    path = None
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ClipoodError("--config needs a file path")
            path = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config=") or a.startswith("config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node
