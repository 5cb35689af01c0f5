"""User-facing errors: one line that names the file or value and says what to do."""
from __future__ import annotations

import difflib
from typing import Iterable


class ClipoodError(ValueError):
    """An error caused by the user's input or environment, with an actionable one-line message."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ClipoodError:
    """Build the standard 'unknown X' error listing the valid choices."""
    choices = sorted(set(map(str, choices)))
    listed = ", ".join(choices) if len(choices) <= 25 else ", ".join(choices[:25]) + f", ... ({len(choices)} in all)"
    return ClipoodError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose one of: {listed}")
