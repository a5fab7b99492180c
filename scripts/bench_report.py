"""Generate docs/benchmarks.md and docs/scale.md from benchmarks/results/*.json: `make bench-report`.

Every figure in those pages comes from a result file written by a script in benchmarks/ (format:
benchmarks/record.py); nothing is typed by hand. A file that is not a result object is an error naming it.

    python scripts/bench_report.py                 # writes docs/benchmarks.md and docs/scale.md
    python scripts/bench_report.py --check         # exit 1 when the committed pages are stale
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration_plot  # noqa: E402 - after the path set-up
import scale_plan  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs"
REQUIRED = ("benchmark", "title", "command", "machine", "date", "load_average", "figures", "goals")
# sections in this order; any other benchmark follows, alphabetically
ORDER = ("encoder", "train_step", "tiling", "index", "index_saig_s", "index_ray", "search", "search_scale",
         "descriptors", "accuracy", "calibration", "demo", "plugin")


class ResultError(ValueError):
    """A result file that cannot be reported (the message names it)."""


def load_results(folder: Path) -> list[dict]:
    """Every result object in ``folder``, in report order; raises ResultError naming a bad file."""
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except ValueError as e:
            raise ResultError(f"{path}: not valid JSON ({e})") from None
        missing = [k for k in REQUIRED if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise ResultError(f"{path}: not a benchmark result (missing {', '.join(missing)}; "
                              "see benchmarks/record.py)")
        obj["_file"] = path.name
        results.append(obj)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["benchmark"], len(ORDER)), r["benchmark"]))


def fmt(value) -> str:
    """A figure as report text: 4 significant digits, thousands separators, lists joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(fmt(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, separators=(", ", ": ")) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def conditions(result: dict) -> str:
    """'idle' or 'busy' from the load average at the start against the core count, with the figures."""
    start, end = result["load_average"]["start"], result["load_average"]["end"]
    cores = result["machine"].get("cores") or 1
    state = "idle" if start[0] < cores else "busy"
    return f"{state} (load average {start[0]:.2f} at the start, {end[0]:.2f} at the end; {cores} cores)"


def machine_line(result: dict) -> str:
    """The machine in one line."""
    m = result["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items())
    mem = f", {m['memory_gb']:g} GiB" if m.get("memory_gb") else ""
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} logical CPUs{mem}, {m.get('platform', '')}" + (
        f"; {libs}" if libs else "")


def table(rows: list[dict]) -> list[str]:
    """A Markdown table of flat dicts (columns: the union of keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def figures_md(figures: dict, depth: int = 3) -> list[str]:
    """Scalars as one key/value table, lists of dicts as tables, nested dicts as subsections."""
    lines: list[str] = []
    scalars = {k: v for k, v in figures.items() if not isinstance(v, dict)
               and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
    if scalars:
        lines += ["| figure | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in scalars.items()]
        lines.append("")
    for key, value in figures.items():
        if key in scalars:
            continue
        lines.append(f"{'#' * min(depth, 6)} {key}")
        lines.append("")
        lines += table(value) if isinstance(value, list) else figures_md(value, depth + 1)
        lines.append("")
    return lines


def goals_md(goals: list[dict]) -> list[str]:
    """The goals checked in the run."""
    if not goals:
        return []
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    for g in goals:
        unit = f" {g.get('unit')}" if g.get("unit") else ""
        lines.append(f"| {fmt(g['name'])} | {fmt(g['value'])}{unit} | {g['op']} {fmt(g['target'])}{unit} | "
                     f"{'✓' if g['met'] else '✗'} |")
    return lines + [""]


def section(result: dict) -> list[str]:
    """One benchmark's section."""
    lines = [f"## {result['title']}", "",
             f"`{result['command']}` ({result.get('mode', 'full')} mode) — {result['date']}, "
             f"{result.get('seconds', '?')} s — {conditions(result)}.", "",
             f"Machine: {machine_line(result)}. Source: `benchmarks/results/{result['_file']}`.", ""]
    lines += goals_md(result["goals"])
    lines += figures_md(result["figures"])
    lines += [f"- {n}" for n in result.get("notes", [])]
    return lines + ([""] if result.get("notes") else [])


def benchmarks_md(results: list[dict], figures: list[str] = ()) -> str:
    """The whole docs/benchmarks.md."""
    lines = ["# Benchmarks", "",
             "> Generated by `make bench-report` (`scripts/bench_report.py`) from `benchmarks/results/*.json`; "
             "do not edit by hand. Each benchmark script writes its own result file (format: "
             "`benchmarks/record.py`); re-run one with the command shown in its section, then `make bench-report`.",
             "", "Conditions: *idle* when the 1-minute load average at the start of the run was below the number of "
             "cores, else *busy* (other processes shared the cores: absolute times are pessimistic, ratios timed in "
             "turns hold up better).", "",
             "| benchmark | date | conditions | goals met |", "|---|---|---|---|"]
    for r in results:
        met = sum(g["met"] for g in r["goals"])
        lines.append(f"| [{r['title']}](#{anchor(r['title'])}) | {r['date'][:10]} | {conditions(r).split(' (')[0]} "
                     f"(load {r['load_average']['start'][0]:.1f}) | {met} of {len(r['goals'])} |")
    lines.append("")
    for figure in figures:
        lines += [figure, ""]
    for r in results:
        lines += section(r)
    return "\n".join(lines).rstrip() + "\n"


def anchor(title: str) -> str:
    """GitHub's heading anchor for a title."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def render(results_dir: Path = RESULTS) -> dict[Path, str]:
    """Every generated page: path -> text."""
    results = load_results(results_dir)
    by_name = {r["benchmark"]: r for r in results}
    svg = calibration_plot.render(by_name)
    figures = ["Confidence calibration (from `calibration.json` and `accuracy.json`): each point is a bin of photos "
               "by the confidence of their top-1 candidate, at the share whose reported position was within 25 m of "
               "the truth; on the diagonal, confidence means what it says.", "",
               "![Calibration curves](calibration.svg)"] if svg else []
    pages = {DOCS / "benchmarks.md": benchmarks_md(results, figures), DOCS / "scale.md": scale_plan.render(by_name)}
    if svg:
        pages[DOCS / "calibration.svg"] = svg
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--check", action="store_true", help="only compare with the committed pages")
    args = ap.parse_args(argv)
    try:
        pages = render(args.results_dir)
    except ResultError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stale = [p for p, text in pages.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(REPO)} is stale: run make bench-report", file=sys.stderr)
        return 1 if stale else 0
    for path, text in pages.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
