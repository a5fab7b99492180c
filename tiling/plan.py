"""A run over many rasters: find them, open them, report the bad ones, plan the chip grid of the others.

Inputs may be raster files (a ``.vrt`` mosaic included), folders (searched recursively for
:data:`tiling.schema.RASTER_SUFFIXES`) or glob patterns (``tiles/**/*.tif``); each raster is used once,
in the order given (the first given wins where rasters overlap).

Shared by ``saig tile`` (:mod:`tiling.tile`) and ``saig index build`` (:mod:`tiling.index`). The
rasters stay open for the run and are closed when the ``with`` block ends, whatever happens.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from tiling.chips import ChipParams, ChipPlanner, RasterError, open_sources


def report_raster_error(reporter: Reporter, failed: list[str]) -> Callable[..., None]:
    """An ``on_error`` callback: report a bad raster (naming it) and remember it in ``failed``."""
    def on_error(e: RasterError, *_: object) -> None:
        failed.append(e.filename)
        reporter.error(str(e), file=e.filename, kind=type(e).__name__)
    return on_error


@contextmanager
def planned_run(paths: Sequence[str | os.PathLike], params: ChipParams, reporter: Reporter,
                failed: list[str]) -> Iterator[ChipPlanner]:
    """Open and validate the rasters (bad ones reported into ``failed``) and plan their grid.

    Raises :class:`SaigError` when no raster is usable. A raster incompatible with the chip size
    is reported, closed and left out, and the others are planned again.
    """
    on_error = report_raster_error(reporter, failed)
    with ExitStack() as stack:
        sources = open_sources(expand_inputs(paths, reporter, on_error), on_error=on_error)
        for s in sources:
            stack.callback(s.close)
        while sources:
            try:
                planner = ChipPlanner(sources, params, progress=_plan_progress(reporter, stack))
            except RasterError as e:
                on_error(e)
                bad = next(s for s in sources if str(s.path) == e.filename)
                bad.close()
                sources = [s for s in sources if s is not bad]
                for k, s in enumerate(sources):
                    s.index = k
                continue
            planner.count()  # the candidate rows, counted once with progress
            yield planner
            return
        raise SaigError("no usable raster among the inputs: " + ", ".join(failed))


def _plan_progress(reporter: Reporter, stack: ExitStack) -> Callable[[int, int], None]:
    """A progress callback for counting the grid rows: a ``plan`` task opened on first use."""
    task = None

    def progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = stack.enter_context(reporter.task("plan", total))
        task.update(done - task.done)
    return progress


def expand_inputs(paths: Sequence[str | os.PathLike], reporter: Reporter,
                  on_error: Callable[..., None]) -> list[str]:
    """Files, folders (recursive) and globs to raster paths, each once, in the order given; an input that
    matches nothing is reported through ``on_error``."""
    from tiling.schema import RASTER_SUFFIXES

    out: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(str(p))

    for given in map(str, paths):
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                on_error(RasterError(p, f"a folder without rasters ({', '.join(RASTER_SUFFIXES)}), searched "
                                        "recursively"))
            for f in found:
                add(f)
        elif not p.exists() and any(ch in given for ch in "*?["):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                on_error(RasterError(p, "no file matches this pattern"))
            for m in matches:
                if Path(m).is_file():
                    add(Path(m))
        else:
            add(p)
    if len(out) > len(paths):
        reporter.log(f"{len(out)} rasters found in the inputs")
    return out
