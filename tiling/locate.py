"""``saig locate``: ground photos to ranked candidate locations, a GeoPackage and heatmaps.

Output GeoPackage (written atomically, only when at least one photo was located):

* ``candidates``: points in **EPSG:4326** (chip centres), columns ``photo``, ``rank`` (1 = best),
  ``score`` (cosine similarity), ``chip_id``, ``faiss_id``, ``lon``, ``lat`` (EPSG:4326), ``x``,
  ``y`` (the index's grid CRS, named in ``grid_crs``), ``distance_m`` (geodesic, WGS 84, to the
  photo's EXIF position; null when it has none);
* ``photos``: one point per photo at its EXIF position (EPSG:4326; no geometry when it has none),
  with ``heading``, ``heading_ref``, ``input`` (panorama / fov), ``fov_deg``, the top-1 candidate
  and its distance, and the heatmap path.

``--prior-radius-m R`` restricts the search (and the heatmap) to chips whose centre is within R
metres (geodesic) of the EXIF position; a photo without a usable position is searched everywhere,
with a warning. The model must be the one the index was built with (same fingerprint).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from tiling.heatmap import write_heatmap
from tiling.manifest import GPKG_OPTIONS
from tiling.photos import GroundInput, PhotoError, collect_photos, read_photo
from tiling.reference import Reference, open_index, query
from tiling.schema import CANDIDATE_COLUMNS, CANDIDATE_RESULT_FIELDS, PHOTO_COLUMNS


class FingerprintMismatch(SaigError, ValueError):
    """A checkpoint that is not the model an index was built with."""


@dataclass
class LocateOptions:
    """What ``saig locate`` does besides the photos and the output: the index and model, candidates per
    photo, the EXIF prior radius, the FoV override, heatmaps, device, and whether to print JSON lines."""

    index: str
    checkpoint: str | None = None
    k: int = 20
    prior_radius_m: float | None = None
    fov_deg: float | None = None
    heatmap_dir: str | None = None
    device: str = "auto"
    overwrite: bool = False
    json_lines: bool = False


LoadedIndex = Reference  # an index folder opened for searching: tiling.reference.open_index


def load_model_for_index(index: LoadedIndex, checkpoint: str | None, device):
    """An encoder for the index's model (checkpoint given or recorded), refusing another fingerprint."""
    from saig_core.runtime.encode import Encoder
    from saig_core.weights.checkpoint import load_checkpoint, model_fingerprint, read_checkpoint

    recorded = index.meta["model"]
    path = checkpoint or recorded.get("checkpoint")
    if not path:
        raise SaigError(f"{index.dir}: records no checkpoint; pass --checkpoint")
    if not Path(path).is_file():
        raise SaigError(f"checkpoint {path} (recorded in {index.dir / 'metadata.json'}) is missing; pass --checkpoint")
    model = load_checkpoint(path)
    fp = model_fingerprint(model)
    if fp != recorded["fingerprint"]:
        raise FingerprintMismatch(
            f"{path}: model fingerprint {fp[:16]}... does not match the index {index.dir} (built with "
            f"{recorded['fingerprint'][:16]}... from {recorded.get('checkpoint')}); use that checkpoint or rebuild "
            "the index with this one")
    metadata = read_checkpoint(path).get("metadata", {}) or {}
    return Encoder(model, device=device), GroundInput.from_metadata(model.cfg.ground_size, metadata)


def _fail(reporter: Reporter, opts: LocateOptions, path, message: str) -> None:
    if opts.json_lines and not reporter.json:
        reporter.emit("error", file=str(path), message=message)
        print(f"error: {message}", file=reporter.err, flush=True)
    else:
        reporter.error(message, file=str(path))


def locate_photos(inputs: list[str], out: str | os.PathLike, opts: LocateOptions, reporter: Reporter) -> int:
    """Locate every photo; returns the number that failed (each reported as it happens)."""
    from saig_core.runtime.device import describe_device, resolve_device

    out = Path(out)
    if out.exists() and not opts.overwrite:
        raise SaigError(f"{out} already exists; pass --overwrite to replace it")
    if opts.k < 1:
        raise SaigError("-k must be at least 1")
    if opts.prior_radius_m is not None and not opts.prior_radius_m > 0:
        raise SaigError("--prior-radius-m must be positive")
    photos = collect_photos(inputs)
    if not photos:
        raise SaigError(f"no photo found in {', '.join(map(str, inputs))}")
    device = resolve_device(opts.device)
    import faiss

    # one query at a time: OpenMP threads only add overhead (benchmarks/search.py: 2.9 vs 8 ms at 1M)
    faiss.omp_set_num_threads(1)
    index = open_index(opts.index)
    encoder, ground = load_model_for_index(index, opts.checkpoint, device)
    reporter.log(f"{len(photos)} photo(s) against {index.dir} ({index.count} chips), "
                 f"encoding on {describe_device(device)}")
    heat_dir = Path(opts.heatmap_dir) if opts.heatmap_dir else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    cand_rows, photo_rows, failed = [], [], 0
    with reporter.task("locate", len(photos)) as task:
        for path in photos:
            try:
                row, cands = _locate_one(path, index, encoder, ground, heat_dir, opts, reporter)
            except (PhotoError, SaigError) as e:
                failed += 1
                _fail(reporter, opts, path, str(e))
            else:
                photo_rows.append(row)
                cand_rows.extend(cands)
            task.update(1)
    if photo_rows:
        _write_results(out, cand_rows, photo_rows, index.crs)
        reporter.log(f"located {len(photo_rows)} photo(s), {failed} failed; wrote {out}")
    else:
        reporter.log("no photo could be located; nothing written", "warning")
    return failed


def _locate_one(path: Path, index: Reference, encoder, ground: GroundInput, heat_dir: Path | None,
                opts: LocateOptions, reporter: Reporter) -> tuple[dict, list[dict]]:
    photo = read_photo(path)
    for w in photo.exif.warnings:
        reporter.log(w, "warning")
    kind, fov = ground.describe(photo, opts.fov_deg)
    q = encoder.encode("ground", ground.tensor(photo, opts.fov_deg)[None]).numpy()
    exif = photo.exif
    if opts.prior_radius_m is not None and not exif.has_position:
        reporter.log(f"{path}: no usable EXIF GPS position; searching all chips (no prior)", "warning")
    position = None  # (lon, lat), EPSG:4326
    if exif.has_position and exif.lon is not None and exif.lat is not None:
        position = (exif.lon, exif.lat)
    try:
        res = query(index, q, opts.k, position, opts.prior_radius_m, heatmap=heat_dir is not None)
    except SaigError as e:
        raise SaigError(f"{path}: {e}") from None
    heat_path = None
    if heat_dir is not None and res.heat_chips is not None and res.heat_scores is not None:
        heat_path = write_heatmap(heat_dir / f"{path.stem}_heatmap.tif", res.heat_chips.row, res.heat_chips.col,
                                  res.heat_scores, index.meta["grid"], index.crs)
    cands = []
    c = res.chips
    for n, (s, i) in enumerate(zip(res.scores, res.ids, strict=True)):
        cands.append({
            "photo": str(path), "rank": n + 1, "score": float(s), "chip_id": str(c.chip_id[n]), "faiss_id": int(i),
            "lon": float(c.lon[n]), "lat": float(c.lat[n]), "x": float(c.x[n]), "y": float(c.y[n]),
            "distance_m": float(res.distance_m[n]) if res.distance_m is not None else None, "grid_crs": index.crs,
        })
    exif_json = exif.as_json()
    if opts.json_lines:
        reporter.emit("result", photo=str(path), exif=exif_json,
                      candidates=[{k: c[k] for k in CANDIDATE_RESULT_FIELDS} for c in cands],
                      heatmap=str(heat_path) if heat_path else None)
    elif cands:
        top = cands[0]
        dist = f", {top['distance_m']:.0f} m from EXIF" if top["distance_m"] is not None else ""
        reporter.log(f"{path}: top-1 {top['chip_id']} at {top['lat']:.6f}, {top['lon']:.6f} "
                     f"(score {top['score']:.3f}{dist})")
    top = cands[0] if cands else {}
    row = {"photo": str(path), "lon": exif.lon, "lat": exif.lat, "heading": exif.heading,
           "heading_ref": exif.heading_ref, "input": kind, "fov_deg": fov, "top1_chip_id": top.get("chip_id"),
           "top1_lon": top.get("lon"), "top1_lat": top.get("lat"), "top1_score": top.get("score"),
           "top1_distance_m": top.get("distance_m"), "heatmap": str(heat_path) if heat_path else None}
    return row, cands


def _write_results(out: Path, cand_rows: list[dict], photo_rows: list[dict], grid_crs: str) -> None:
    import geopandas as gpd
    import pandas as pd  # no pandas-stubs in the environment
    import shapely

    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix or '.gpkg'}")
    try:
        cdf = pd.DataFrame(cand_rows, columns=list(CANDIDATE_COLUMNS))
        cands = gpd.GeoDataFrame(cdf, geometry=shapely.points(cdf["lon"].to_numpy(float), cdf["lat"].to_numpy(float)),
                                 crs="EPSG:4326")
        pdf = pd.DataFrame(photo_rows, columns=list(PHOTO_COLUMNS))
        has = pdf["lon"].notna() & pdf["lat"].notna()
        geom = [shapely.Point(lo, la) if h else None for lo, la, h in zip(pdf["lon"], pdf["lat"], has, strict=True)]
        photos = gpd.GeoDataFrame(pdf, geometry=geom, crs="EPSG:4326")
        cands.to_file(tmp, layer="candidates", driver="GPKG", engine="pyogrio", dataset_options=GPKG_OPTIONS)
        photos.to_file(tmp, layer="photos", driver="GPKG", engine="pyogrio", dataset_options=GPKG_OPTIONS)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
