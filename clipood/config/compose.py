"""Typed run configuration: dataclass schemas (OmegaConf structured configs) ← YAML files ← ``key=value``.

A schema is a dataclass tree whose fields carry a type, a default and a one-line help
(``field(default=..., metadata={"help": ...})``). :func:`compose` starts from the schema's defaults and applies
layers in order (a preset file, a ``--config`` file, the command line). Every key is checked against the
schema as it is applied: an unknown key fails with a "did you mean", a value of the wrong type fails with the
key named, both before any model or image is touched. Fields typed ``Dict[str, Any]`` are free-form (their
consumer validates them, e.g. an adapter's options); a mapping given for one in a YAML file replaces it whole.

``resets`` ties a free-form section to a choice: ``{"adapter.name": "adapter.options"}`` means that a layer
choosing another adapter starts from empty options (that adapter's defaults) unless it also sets options.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ClipoodError, did_you_mean

__all__ = ["compose", "parse_overrides", "load_yaml", "split_config_arg", "flat_leaves", "get", "to_dict",
           "field_help", "describe"]

#: (where it comes from, a nested mapping or [(dotted key, value), ...])
Layer = tuple[str, "Mapping[str, Any] | Sequence[tuple[str, Any]]"]


def flat_leaves(d: Mapping | None, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (leaves only)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, Mapping):
            out.update(flat_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    """``get(cfg, "eval.batch_size")``: a nested value, or ``default`` where a key is missing."""
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


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
    """``["a.b=3", "name=x"]`` → ``[("a.b", 3), ("name", "x")]`` (values parsed as strict YAML: no anchors,
    aliases or duplicate keys; text that is not YAML is the string itself)."""
    from .yaml import strict_yaml

    out = []
    for a in args:
        if "=" not in a or a.startswith("="):
            raise ClipoodError(f"cannot parse command-line argument '{a}': use key=value (e.g. losses.kr=10)")
        k, v = a.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_") if k.startswith("--") else k.strip()
        where = f"the command line ({k}=...)"
        out.append((k, _numbers(strict_yaml(v, where, literal_on_syntax_error=True)) if v != "" else None))
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from ``path``, read strictly (:mod:`clipood.config.yaml`: a size limit first, no anchors,
    aliases or duplicate keys); every problem is one line naming file and line."""
    from .yaml import read_yaml_file

    p = Path(path)
    data = read_yaml_file(p)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ClipoodError(f"config file {p} must hold a mapping of keys to values")
    return _numbers(data)


def split_config_arg(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pull every ``--config FILE`` / ``--config=FILE`` / ``config=FILE`` out of argv (in order: later files are
    applied over earlier ones)."""
    argv = list(argv)
    paths: list[str] = []
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ClipoodError("--config needs a file path")
            paths.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config=") or a.startswith("config="):
            paths.append(a.split("=", 1)[1])
            if not paths[-1]:
                raise ClipoodError(f"{a} needs a file path")
        else:
            rest.append(a)
        i += 1
    return paths, rest


# ------------------------------------------------------------------------------------------------ schemas
def _kind(schema: type, dotted: str) -> tuple[str, Any]:
    """What ``dotted`` names in ``schema``: ``("section", cls)``, ``("free", None)`` (inside or at a free-form
    Dict field), ``("leaf", field)`` or ``("unknown", known_keys)``."""
    cls: Any = schema
    parts = dotted.split(".")
    for i, p in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if p not in fields:
            return "unknown", [".".join(parts[:i] + [k]) for k in fields]
        t = _field_type(cls, p)
        if dataclasses.is_dataclass(t):
            if i == len(parts) - 1:
                return "section", t
            cls = t
            continue
        if _is_free(t):
            return "free", None
        return ("leaf", fields[p]) if i == len(parts) - 1 else ("unknown", [".".join(parts[:i + 1])])
    return "section", cls


def _field_type(cls: type, name: str) -> Any:
    return _type_hints(cls)[name]


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """A schema class's resolved field types (resolving them is slow: a comparison composes 14 configs)."""
    import typing

    return typing.get_type_hints(cls)


def _is_free(t: Any) -> bool:
    import typing

    return t is dict or typing.get_origin(t) is dict or (
        typing.get_origin(t) is typing.Union and any(_is_free(a) for a in typing.get_args(t) if a is not type(None)))


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(schema):
        t = _field_type(schema, f.name)
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(t):
            out += _all_keys(t, f"{prefix}{f.name}.")
    return out


def _ordered(items: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Dotted pairs in order; a key given twice keeps its last value (as ``a=1 a=2`` on a command line)."""
    out: dict[str, Any] = {}
    for k, v in items:
        out.pop(k, None)
        out[k] = v
    return list(out.items())


def _flatten_layer(schema: type, data: Mapping, where: str, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested mapping (a YAML file) as dotted assignments; mappings under free-form fields stay whole."""
    out = []
    for k, v in data.items():
        dotted = f"{prefix}{k}"
        kind, info = _kind(schema, dotted)
        if kind == "unknown":
            raise ClipoodError(f"unknown config key '{dotted}' in {where}{did_you_mean(dotted, info)}")
        if kind == "section" and isinstance(v, Mapping):
            out += _flatten_layer(schema, v, where, dotted + ".")
        else:
            out.append((dotted, v))
    return out


#: what ``${`` is stored as inside OmegaConf: user values are data, never interpolations or resolver calls
#: (``${oc.env:SECRET}`` would copy an environment variable into config.json), and a literal ``${`` must work
_DOLLAR_BRACE, _STORED = "${", "\ue000{"


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_DOLLAR_BRACE, _STORED)
    if isinstance(value, (list, tuple)):
        return type(value)(_escape(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _escape(v) for k, v in value.items()}
    return value


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_STORED, _DOLLAR_BRACE)
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


def compose(schema: type, layers: Sequence[Layer], resets: Mapping[str, str] | None = None, start=None):
    """The schema's defaults (or ``start``, a ``DictConfig`` of this schema composed before: it is changed) with
    every layer applied in order; returns a typed OmegaConf ``DictConfig``.

    A layer is ``(where, [(dotted_key, value), ...])``; ``where`` names the file or "the command line" in
    errors. Values are data: ``${...}`` is never an interpolation or a resolver call (``${oc.env:X}`` stays that
    text, it does not read the environment). Raises ClipoodError on an unknown key (with the closest known key) or a value of the wrong type.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(schema) if start is None else start
    resets = dict(resets or {})
    for where, given in layers:
        items = _flatten_layer(schema, dict(given) if isinstance(given, Mapping) else dict(_ordered(given)), where)
        touched = {k for k, _ in items}
        for dotted, value in items:
            kind, info = _kind(schema, dotted)
            if kind == "section":
                keys = ", ".join(f.name for f in dataclasses.fields(info))
                raise ClipoodError(f"config key '{dotted}' in {where} is a section; set one of its keys ({keys})")
            for key, target in resets.items():
                if dotted == key and _escape(value) != OmegaConf.select(cfg, key) and not any(
                        t == target or t.startswith(target + ".") for t in touched):
                    OmegaConf.update(cfg, target, {}, merge=False)
            _assign(cfg, dotted, value, where, schema)
    return cfg


def _assign(cfg, dotted: str, value: Any, where: str, schema: type) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    kind, info = _kind(schema, dotted)
    if kind == "free" and value is None and _is_free_root(schema, dotted):
        value = {}  # ``adapter.options=null``: back to the defaults of whatever consumes the section
    try:
        OmegaConf.update(cfg, dotted, _escape(value), merge=False, force_add=kind == "free")
    except OmegaConfBaseException as e:
        msg = _unescape(str(e).splitlines()[0])
        want = ""
        if kind == "leaf":
            want = f" (expected {_type_name(_field_type_of(schema, dotted))})"
        raise ClipoodError(f"config key '{dotted}' in {where} has a wrong value {value!r}{want}: {msg}") from None


def _is_free_root(schema: type, dotted: str) -> bool:
    parent, _, name = dotted.rpartition(".")
    cls = schema if not parent else _kind(schema, parent)[1]
    return dataclasses.is_dataclass(cls) and _is_free(_field_type(cls, name))


def _field_type_of(schema: type, dotted: str) -> Any:
    parent, _, name = dotted.rpartition(".")
    cls = schema if not parent else _kind(schema, parent)[1]
    return _field_type(cls, name)


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def to_dict(cfg) -> dict:
    """A plain nested dict (tuples as lists) of a composed config, for code, JSON and checkpoints. Nothing is
    resolved: a ``${...}`` in a value is that text (see :func:`compose`)."""
    from omegaconf import OmegaConf

    return _unescape(OmegaConf.to_container(cfg, resolve=False))


def field_help(schema: type, prefix: str = "") -> dict[str, str]:
    """``{dotted key: one-line help}`` for every field of a schema tree."""
    out = {}
    for f in dataclasses.fields(schema):
        t = _field_type(schema, f.name)
        if f.metadata.get("help"):
            out[prefix + f.name] = f.metadata["help"]
        if dataclasses.is_dataclass(t):
            out.update(field_help(t, f"{prefix}{f.name}."))
    return out


def describe(schema: type, values: Mapping) -> str:
    """``values`` as YAML with each key's help as a trailing comment (what ``--help`` prints)."""
    import yaml

    helps = field_help(schema)
    lines = []

    def emit(node: Mapping, prefix: str, indent: int) -> None:
        for k, v in node.items():
            dotted, pad = f"{prefix}{k}", "  " * indent
            note = f"  # {helps[dotted]}" if dotted in helps else ""
            if isinstance(v, Mapping) and v and dotted in set(_all_keys(schema)) and \
                    _kind(schema, dotted)[0] == "section":
                lines.append(f"{pad}{k}:{note}")
                emit(v, dotted + ".", indent + 1)
            else:
                text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
                text = text[:-4].strip() if text.endswith("...") else text
                lines.append(f"{pad}{k}: {text}{note}")

    emit(values, "", 0)
    return "\n".join(lines)
