"""A run over many rasters: open them, report the bad ones, plan the chip grid of the others.

Shared by ``saig tile`` (:mod:`tiling.tile`) and ``saig index build`` (:mod:`tiling.index`). The
rasters stay open for the run and are closed when the ``with`` block ends, whatever happens.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

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
        sources = open_sources(paths, on_error=on_error)
        for s in sources:
            stack.callback(s.close)
        while sources:
            try:
                planner = ChipPlanner(sources, params)
            except RasterError as e:
                on_error(e)
                bad = next(s for s in sources if str(s.path) == e.filename)
                bad.close()
                sources = [s for s in sources if s is not bad]
                for k, s in enumerate(sources):
                    s.index = k
                continue
            yield planner
            return
        raise SaigError("no usable raster among the inputs: " + ", ".join(failed))
