"""``saig tile``: rasters to a chip manifest (GeoPackage), with per-raster error reporting.

A raster that cannot be used (not a raster, no CRS, rotated, truncated, chip smaller than a pixel)
is reported as an error naming it and the others are still chipped; the command then exits 1. No
output is written when no raster yields a valid chip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from tiling.chips import ChipParams, ChipReader, NoChipError, RasterError, iter_chips
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
                 overwrite: bool = False) -> TileResult:
    """Chip the rasters and write the manifest GeoPackage at ``out``; bad rasters are reported and skipped.

    Raises :class:`NoChipError` (writing nothing) when no raster yields a valid chip.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise SaigError(f"{out} already exists; pass --overwrite to replace it")
    failed: list[str] = []
    with planned_run(paths, params, reporter, failed) as planner:
        total = planner.count()
        reporter.log(f"grid {planner.grid.crs_string} ({planner.grid.kind}), {len(planner.sources)} raster(s), "
                     f"{total} candidate chips")
        chips = []
        bad_sources: set[int] = set()

        def on_source_error(e: RasterError, k: int) -> None:
            bad_sources.add(k)
            report_raster_error(reporter, failed)(e)

        with ChipReader(planner) as reader, reporter.task("tile", total) as task:
            last = -1
            for chip, _ in iter_chips(planner, reader, on_source_error=on_source_error):
                chips.append(chip)
                task.update(chip.seq - last)
                last = chip.seq
            task.update(total - 1 - last)
        chips = [c for c in chips if c.source_index not in bad_sources]
        if not chips:
            raise NoChipError(f"no valid chip in {', '.join(str(s.path) for s in planner.sources)}: every candidate "
                              f"chip has less than {params.min_valid:.0%} valid pixels (or the reads failed)")
        for s in planner.sources:
            if s.index not in bad_sources and not any(c.source_index == s.index for c in chips):
                reporter.log(f"{s.path}: no valid chip (all covered by earlier rasters or mostly nodata)", "warning")
        write_manifest(chip_records(chips), planner.grid.crs_string, out)
        return TileResult(out, len(chips), planner.grid.crs_string, failed)
