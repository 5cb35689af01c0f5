"""Strict YAML for config files and ``key=value`` values: plain data only, checked before anything expands.

What PyYAML's ``safe_load`` accepts but a config must not:

- **anchors and aliases** (``&a`` / ``*a``, and merge keys ``<<: *a`` that need them): a few hundred bytes of
  nested aliases expand to gigabytes (the "billion laughs"), and nothing can check a value before it has
  expanded. They are refused at the first anchor or alias, with its line;
- **duplicate keys** in one mapping (PyYAML keeps the last one silently): refused with both lines;
- **files over** :data:`MAX_BYTES` (a config is a few kilobytes) and nesting deeper than :data:`MAX_DEPTH`.

Every problem is one :class:`clipood.errors.ClipoodError` naming the file (or "the command line") and line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ClipoodError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "strict_yaml", "read_yaml_file"]

#: the largest config file read (the shipped presets are under 3 kB)
MAX_BYTES = 1 << 20
#: the deepest nesting of mappings and lists accepted
MAX_DEPTH = 64


def _loader_class():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader without anchors, aliases or duplicate keys, and with a nesting limit."""

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
                raise _Refused(f"a YAML {kind} ('{'*' if kind == 'alias' else '&'}{event.anchor}')", event.start_mark,
                               "anchors and aliases are not supported in configs; write the values out")
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", event.start_mark,
                                   "a config is a shallow mapping of keys to values")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Refused("a merge key ('<<')", key_node.start_mark, "write the values out")
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise _Refused("a key that is a list or mapping", key_node.start_mark, "use a plain key") from None
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _Refused(f"key '{key}' twice (first on line {seen[key]})", key_node.start_mark,
                                   "keep one of them")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


class _Refused(Exception):
    def __init__(self, what: str, mark, fix: str):
        super().__init__(what)
        self.what, self.mark, self.fix = what, mark, fix


_LOADER = None


def strict_yaml(text: str, where: str, *, literal_on_syntax_error: bool = False) -> Any:
    """``text`` parsed as strict YAML (see the module docstring); ``where`` names the source in errors. With
    ``literal_on_syntax_error`` (a ``key=value`` value) text that is not YAML is returned as the string itself."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader_class()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ClipoodError(f"{where} is larger than {MAX_BYTES // 1024} kB; a config file is a few kB of keys")
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        line = f" line {e.mark.line + 1}" if e.mark is not None else ""
        raise ClipoodError(f"{where}{line} holds {e.what}; {e.fix}") from None
    except yaml.YAMLError as e:
        if literal_on_syntax_error:
            return text
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ClipoodError(f"{where}{line} is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise ClipoodError(f"{where} is nested too deeply to read; a config is a shallow mapping") from None


def read_yaml_file(path: str | os.PathLike) -> Any:
    """A config file's strict YAML; a missing, oversized, binary or non-UTF-8 file is one line naming it."""
    p = Path(path)
    if not p.is_file():
        raise ClipoodError(f"config file not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    size = p.stat().st_size
    if size > MAX_BYTES:  # before reading it: the size limit comes before anything expands
        raise ClipoodError(f"config file {p} is {size // 1024} kB, larger than {MAX_BYTES // 1024} kB; a config "
                           f"file is a few kB of keys")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ClipoodError(f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                           f"UTF-8") from None
    if "\x00" in text:
        raise ClipoodError(f"config file {p} holds NUL bytes (a binary file?); give a YAML text file")
    return strict_yaml(text, f"config file {p}")
