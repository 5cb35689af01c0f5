"""A training-curve tracker that is always there: ``log_with=jsonl`` (no extra package).

Accelerate's trackers (tensorboard, wandb, ...) each need their own package; this one writes
``<output_dir>/<run name>/metrics.jsonl`` (one ``{"step": s, <term>: value, ...}`` per logged step) and
``config.json`` (the run's flat settings) through Accelerate's ``GeneralTracker`` interface, so the training
loop logs to it exactly as to any other tracker. The file is rewritten by every session of a run: a resumed
run replays the logged steps of its earlier sessions first (:func:`clipood.training.loop.fit`), so it always holds
the whole run.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["BUILTIN_TRACKERS", "JSONLTracker", "make_tracker"]

#: trackers clipood ships (``log_with=<name>``); other names go to Accelerate
BUILTIN_TRACKERS = ("jsonl",)


def make_tracker(name: str, run_name: str, logging_dir: str):
    """A built-in tracker instance for ``Accelerator.log_with``."""
    if name == "jsonl":
        return JSONLTracker(run_name, logging_dir)
    raise ValueError(name)


def _tracker_base():
    from accelerate.tracking import GeneralTracker

    return GeneralTracker


class JSONLTracker(_tracker_base()):
    """``<logging_dir>/<run_name>/metrics.jsonl`` + ``config.json`` (main process only)."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.run_name = run_name
        self.folder = Path(logging_dir) / run_name
        self.path = self.folder / "metrics.jsonl"
        self._file = None

    @property
    def tracker(self):
        return self.path

    def start(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")

    def store_init_configuration(self, values: dict):
        from ..io import write_json

        write_json(self.folder / "config.json", values)

    def log(self, values: dict, step: int | None = None, **kwargs):
        if self._file is None:
            self.start()
        self._file.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        self._file.flush()

    def finish(self):
        if self._file is not None:
            self._file.close()
            self._file = None
