"""The one format every benchmark writes: one JSON object per file, ``benchmarks/results/<name>.json``.

``scripts/bench_report.py`` (``make bench-report``) turns these files into ``docs/benchmarks.md`` and
``docs/scale.md``; no figure in those pages is typed by hand. A result file holds:

* ``benchmark``: its name (also the file name), ``title``: a heading for the report;
* ``command``: how to re-run it (one command line), ``mode``: ``full`` or ``quick``;
* ``machine``: ``cpu`` (model name), ``cores`` (logical CPUs), ``memory_gb``, ``platform``, ``python``,
  and the versions of the libraries it timed (``libraries``);
* ``date`` (UTC, ISO 8601), ``seconds`` (wall time of the whole run);
* ``load_average``: ``start`` and ``end`` (1, 5, 15-minute load averages of the machine: other processes
  sharing the cores make absolute times pessimistic; ratios timed in turns hold up better);
* ``figures``: what was measured: scalars (a key/value table in the report), lists of flat dicts (one table
  each), nested dicts (a subsection each);
* ``goals``: a list of ``{"name", "value", "op", "target", "unit", "met"}`` (``op`` is ``>=`` or ``<=``),
  the issue's goals checked in the same run;
* ``notes``: sentences the report prints under the figures (method, caveats).

Usage::

    run = Run("search", "Search", command="python benchmarks/search.py")
    ...
    run.goal("10-recall@10 at 1M x 384", recall, ">=", 0.95)
    run.write(figures)        # prints the object on stdout and writes benchmarks/results/search.json
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t}


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo (or the architecture)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def memory_gb() -> float | None:
    """Total memory of the machine in GiB (Linux), or None."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries already imported that benchmarks time (torch, faiss, numpy, ray, rasterio)."""
    out = {}
    for name in ("numpy", "torch", "faiss", "ray", "rasterio", "onnxruntime", "pyarrow"):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module else None
        if version:
            out[name] = str(version)
    return out


def machine() -> dict:
    """What the figures were measured on."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gb": memory_gb(),
            "platform": f"{platform.system()} {platform.machine()}", "python": platform.python_version()}


def goal(name: str, value: float, op: str, target: float, unit: str = "") -> dict:
    """One goal checked in a run: ``value op target`` (``op`` is ``>=`` or ``<=``)."""
    if op not in OPS:
        raise ValueError(f"goal op must be one of {sorted(OPS)}, got {op!r}")
    return {"name": name, "value": value, "op": op, "target": target, "unit": unit,
            "met": bool(OPS[op](value, target))}


class Run:
    """One benchmark run: remembers when it started and the load then, collects goals, writes the file."""

    def __init__(self, benchmark: str, title: str, command: str, mode: str = "full") -> None:
        self.benchmark, self.title, self.command, self.mode = benchmark, title, command, mode
        self.date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.load_start = [round(v, 2) for v in os.getloadavg()]
        self.started = time.perf_counter()
        self.goals: list[dict] = []
        self.notes: list[str] = []

    def goal(self, name: str, value: float, op: str, target: float, unit: str = "") -> dict:
        """Check and record a goal (see :func:`goal`)."""
        self.goals.append(goal(name, value, op, target, unit))
        return self.goals[-1]

    def note(self, text: str) -> None:
        """A sentence printed under the figures in the report."""
        self.notes.append(text)

    def result(self, figures: dict) -> dict:
        """The result object (see the module docstring)."""
        return {
            "benchmark": self.benchmark, "title": self.title, "command": self.command, "mode": self.mode,
            "machine": {**machine(), "libraries": library_versions()}, "date": self.date,
            "seconds": round(time.perf_counter() - self.started, 1),
            "load_average": {"start": self.load_start, "end": [round(v, 2) for v in os.getloadavg()]},
            "figures": figures, "goals": self.goals, "notes": self.notes,
        }

    def write(self, figures: dict, results_dir: str | os.PathLike | None = None) -> dict:
        """Print the result on stdout and write it to ``results_dir/<benchmark>.json`` (atomically)."""
        result = self.result(figures)
        text = json.dumps(result, indent=1) + "\n"
        sys.stdout.write(json.dumps(result) + "\n")
        folder = Path(results_dir) if results_dir is not None else RESULTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.benchmark}.json"
        tmp = folder / f".{self.benchmark}.json.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)
        return result


def add_results_arg(parser) -> None:
    """``--results-dir`` (default benchmarks/results) for a benchmark's argparse parser."""
    parser.add_argument("--results-dir", default=str(RESULTS),
                        help="where the result JSON is written (default benchmarks/results)")
