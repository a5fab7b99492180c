"""``saig tile``: rasters to a chip manifest (GeoPackage), with per-raster error reporting.

A raster that cannot be used (not a raster, no CRS, rotated, truncated, chip smaller than a pixel)
is reported as an error naming it and the others are still chipped; the command then exits 1. No
output is written when no raster yields a valid chip.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from tiling.chips import Chip, ChipParams, NoChipError, RasterError, default_workers, iter_chips
from tiling.lock import output_lock
from tiling.manifest import chip_records, write_manifest
from tiling.plan import planned_run, report_raster_error


@dataclass
class TileResult:
    """What ``saig tile`` wrote: the manifest, its chip count and grid CRS, and the rasters that failed."""

    output: Path
    count: int
    crs: str
    failed: list[str] = field(default_factory=list)


def tile_rasters(paths: list[str], params: ChipParams, out: str | os.PathLike, reporter: Reporter,
                 overwrite: bool = False, workers: int | None = None) -> TileResult:
    """Chip the rasters and write the manifest GeoPackage at ``out``; bad rasters are reported and skipped.

    Chips are read by ``workers`` processes (default: every core) and the manifest is streamed to a
    temporary file in batches, renamed into place at the end. Raises :class:`NoChipError` (writing
    nothing) when no raster yields a valid chip.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise SaigError(f"{out} already exists; pass --overwrite to replace it")
    failed: list[str] = []
    with output_lock(out, "saig tile"), planned_run(paths, params, reporter, failed) as planner:
        total = planner.count()
        reporter.log(f"grid {planner.grid.crs_string} ({planner.grid.kind}), {len(planner.sources)} raster(s), "
                     f"{total} candidate chips")
        per_source = dict.fromkeys(range(len(planner.sources)), 0)
        tmp = out.with_name(f".{out.stem}.part-{os.getpid()}{out.suffix}")
        try:
            with reporter.task("tile", total) as task:
                chips = _chips(planner, per_source, task, reporter, failed, workers)
                write_manifest(chip_records(chips), planner.grid.crs_string, tmp)
            count = sum(per_source.values())
            if not count:
                raise NoChipError(f"no valid chip in {', '.join(str(s.path) for s in planner.sources)}: every "
                                  f"candidate chip has less than {params.min_valid:.0%} valid pixels (or the reads "
                                  "failed)")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        for s in planner.sources:
            if not per_source[s.index] and str(s.path) not in failed:
                reporter.log(f"{s.path}: no valid chip (all covered by earlier rasters or mostly nodata)", "warning")
        return TileResult(out, count, planner.grid.crs_string, failed)


def _chips(planner, per_source: dict[int, int], task, reporter: Reporter, failed: list[str],
           workers: int | None) -> Iterator[Chip]:
    """The run's valid chips, counting them per source and advancing the progress as candidates pass."""
    done = 0

    def on_skip(n: int) -> None:
        nonlocal done
        done += n
        task.update(n)

    def on_source_error(e: RasterError, _k: int) -> None:
        report_raster_error(reporter, failed)(e)

    for chip, _ in iter_chips(planner, None, 0, None, on_skip, on_source_error,
                              workers=default_workers() if workers is None else workers):
        per_source[chip.source_index] += 1
        done += 1
        task.update(1)
        yield chip
