"""Progress, logs and results for the CLI: a progress bar for people, JSON lines for programs.

With ``mode="json"`` every event is one JSON object per line on stdout, which is what the QGIS
plugin reads::

    {"event": "progress", "stage": "encode", "done": 40, "total": 100, "fraction": 0.4}
    {"event": "log", "level": "info", "message": "..."}
    {"event": "result", ...}          # command-specific payload
    {"event": "error", "message": "...", "file": "..."}

With ``mode="bar"`` progress is a tqdm bar on stderr and logs go to stderr; ``result`` lines are
still JSON on stdout when the command was asked for JSON output.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from saig_core.runtime.choices import PROGRESS_MODES


class Reporter:
    """Where a command's progress, logs, errors and results go: ``json``, ``bar``, ``none`` or ``auto``.

    ``auto`` picks ``bar`` when stderr is a terminal, else ``none``.
    """

    def __init__(self, mode: str = "none", out: TextIO | None = None, err: TextIO | None = None) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {PROGRESS_MODES}")
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if mode == "auto":
            mode = "bar" if self.err.isatty() else "none"
        self.mode = mode

    @property
    def json(self) -> bool:
        """Whether events are written as JSON lines (``mode="json"``)."""
        return self.mode == "json"

    def emit(self, event: str, **fields: Any) -> None:
        """Write one JSON line on stdout (always, whatever the mode)."""
        self.out.write(json.dumps({"event": event, **fields}, default=_jsonable) + "\n")
        self.out.flush()

    def log(self, message: str, level: str = "info") -> None:
        """A log event in JSON mode, otherwise the bare message on stderr."""
        if self.json:
            self.emit("log", level=level, message=message)
        else:
            print(message, file=self.err, flush=True)

    def error(self, message: str, **fields: Any) -> None:
        """An error event in JSON mode (with ``fields``, e.g. ``file``), and always ``error: ...`` on stderr."""
        if self.json:
            self.emit("error", message=message, **fields)
        print(f"error: {message}", file=self.err, flush=True)

    def task(self, stage: str, total: int | None = None) -> Task:
        """A :class:`Task` reporting progress of ``stage`` through this reporter."""
        return Task(self, stage, total)


class Task:
    """One stage of work with a known (or unknown) total; use as a context manager."""

    _JSON_INTERVAL_S = 0.25

    def __init__(self, reporter: Reporter, stage: str, total: int | None) -> None:
        self.reporter, self.stage, self.total = reporter, stage, total
        self.done = 0
        self._last = 0.0
        self._bar = None
        if reporter.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=stage, file=reporter.err, unit="it", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; JSON progress lines are rate-limited to one per 0.25 s."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.reporter.json:
            now = time.monotonic()
            if now - self._last >= self._JSON_INTERVAL_S:
                self._last = now
                self._emit()

    def set_total(self, total: int) -> None:
        """Set the total once it is known (e.g. after counting the inputs)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def _emit(self) -> None:
        fraction = (self.done / self.total) if self.total else None
        self.reporter.emit("progress", stage=self.stage, done=self.done, total=self.total, fraction=fraction)

    def close(self) -> None:
        """Finish the stage: close the bar, or emit a final progress line in JSON mode."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.reporter.json:
            self._emit()

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
