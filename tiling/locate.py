"""``saig locate``: ground photos to ranked candidate locations, a GeoPackage and heatmaps.

Each photo goes through named steps -- read, encode, search, heatmap, record -- and its results
are committed before the next photo starts (:mod:`tiling.results`): a killed run loses nothing,
and ``--resume`` finishes it without locating a photo twice.

Output GeoPackage (published atomically when the run ends, only when at least one photo was
located):

* ``candidates``: points in **EPSG:4326** (chip centres), columns ``photo``, ``rank`` (1 = best),
  ``score`` (cosine similarity), ``chip_id``, ``faiss_id``, ``lon``, ``lat`` (EPSG:4326), ``x``,
  ``y`` (the index's grid CRS, named in ``grid_crs``), ``distance_m`` (geodesic, WGS 84, to the
  photo's EXIF position; null when it has none);
* ``photos``: one point per photo at its EXIF position (EPSG:4326; no geometry when it has none),
  with its headings, how it was read (:data:`tiling.schema.PHOTO_COLUMNS`), the top-1 candidate and
  its distance, and the heatmap path.

``--prior-radius-m R`` restricts the search (and the heatmap) to chips whose centre is within R
metres (geodesic) of the EXIF position; a photo without a usable position is searched everywhere,
with a warning. The model must be the one the index was built with (same fingerprint).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from tiling.assess import POSTERIOR_K, Assessment, Assessor, query_kind
from tiling.heatmap import GROUP_BAND, HeatmapFolder, group_heatmap_name, heatmap_names, write_heatmap
from tiling.orientation import OrientedQuery, is_oriented, rotation_query, single_query
from tiling.photos import GroundInput, Photo, PhotoError, collect_photos, read_photo
from tiling.reference import Chips, QueryResult, Reference, open_index, query
from tiling.results import ResultJournal, check_output, photo_list_digest
from tiling.schema import CANDIDATE_COLUMNS, CANDIDATE_RESULT_FIELDS


class FingerprintMismatch(SaigError, ValueError):
    """A checkpoint that is not the model an index was built with."""


@dataclass
class LocateOptions:
    """What ``saig locate`` does besides the photos and the output: the index and model, candidates per
    photo, the EXIF prior radius, the FoV override, panorama/photo override, heatmaps, device, whether to
    replace or resume an output, and whether to print JSON lines."""

    index: str
    checkpoint: str | None = None
    k: int = 20
    prior_radius_m: float | None = None
    fov_deg: float | None = None
    heatmap_dir: str | None = None
    device: str = "auto"
    overwrite: bool = False
    json_lines: bool = False
    mode: str = "auto"  # "auto", "panorama" (--panorama) or "photo" (--photo)
    resume: bool = False
    ignore_heading: bool = False  # --no-heading: treat every photo's heading as unknown
    group: str | None = None  # --group folder|time:SECONDS|radius:METRES (tiling.groups)
    refine: int = 3  # --refine N: distinct places refined on a fine grid (0: none; tiling.refine)
    refine_step_m: float | None = None  # --refine-step-m (default: the index's stride / 4)


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


def find_photos(inputs: list[str], reporter: Reporter) -> list[Path]:
    """The run's photos (folders searched recursively); every file skipped is named with its reason."""
    skipped: list[tuple[Path, str]] = []
    photos = collect_photos(inputs, skipped)
    for path, reason in skipped:
        reporter.log(f"{path}: skipped: {reason}", "warning")
    if not photos:
        raise SaigError(f"no photo found in {', '.join(map(str, inputs))}")
    return photos


def _run_record(index: LoadedIndex, photos: list[Path], opts: LocateOptions, heat_dir: Path | None) -> dict:
    """What a resumed run must share with the run it finishes."""
    return {"index": os.path.realpath(index.dir), "index_count": index.count,
            "model_fingerprint": index.meta["model"]["fingerprint"], "k": opts.k,
            "prior_radius_m": opts.prior_radius_m, "fov_deg": opts.fov_deg, "mode": opts.mode,
            "ignore_heading": opts.ignore_heading, "group": opts.group, "refine": opts.refine,
            "refine_step_m": opts.refine_step_m,
            "heatmap_dir": os.path.realpath(heat_dir) if heat_dir else None, "photos": len(photos),
            "photos_sha256": photo_list_digest(photos)}


def locate_photos(inputs: list[str], out: str | os.PathLike, opts: LocateOptions, reporter: Reporter) -> int:
    """Locate every photo; returns the number that failed (each reported as it happens)."""
    from saig_core.runtime.device import describe_device, resolve_device

    out = Path(out)
    check_output(out, resume=opts.resume, overwrite=opts.overwrite)  # before any work
    photos = find_photos(inputs, reporter)
    device = resolve_device(opts.device)
    import faiss

    # one query at a time: OpenMP threads only add overhead (benchmarks/search.py: 2.9 vs 8 ms at 1M)
    faiss.omp_set_num_threads(1)
    with open_index(opts.index) as index, ExitStack() as stack:
        encoder, ground = load_model_for_index(index, opts.checkpoint, device)
        reporter.log(f"{len(photos)} photo(s) against {index.dir} ({index.count} chips), "
                     f"encoding on {describe_device(device)}")
        assessor = Assessor.open(index, encoder, opts, reporter)
        if assessor.views is not None:
            stack.callback(assessor.views.close)
        failed, written = _run(photos, out, _Steps(index, encoder, ground, assessor, opts, reporter))
    if written:
        reporter.log(f"located {written} photo(s), {failed} failed; wrote {out}")
    else:
        reporter.log("no photo could be located; nothing written", "warning")
    return failed


def assess_photos(paths: list[Path], opts: LocateOptions, reporter: Reporter) -> Iterator[tuple[Path, str, Assessment]]:
    """Each photo's query kind and assessment (posterior, refined places), in this process and writing
    nothing: what ``saig locate`` computes before it records, for calibration (``synthetic_world.calibrate``).
    A photo that cannot be read raises."""
    import faiss

    from saig_core.runtime.device import resolve_device

    faiss.omp_set_num_threads(1)
    with open_index(opts.index) as index, ExitStack() as stack:
        encoder, ground = load_model_for_index(index, opts.checkpoint, resolve_device(opts.device))
        assessor = Assessor.open(index, encoder, opts, reporter)
        if assessor.views is not None:
            stack.callback(assessor.views.close)
        steps = _Steps(index, encoder, ground, assessor, opts, reporter)
        for path in paths:
            photo = steps.read(path)
            oq = steps.encode(photo)
            kind = query_kind(photo, oq)
            yield path, kind, assessor.assess(oq, scaled(steps.search(photo, oq.q), oq.scale), kind)


def _run(photos: list[Path], out: Path, step: _Steps) -> tuple[int, int]:
    """Every photo not yet committed through the steps, then the GeoPackage: (failed, photos written)."""
    opts, reporter = step.opts, step.reporter
    heat = HeatmapFolder(Path(opts.heatmap_dir), heatmap_names(photos)) if opts.heatmap_dir else None
    step.heat = heat
    journal = ResultJournal(out, _run_record(step.index, photos, opts, heat.dir if heat else None),
                            resume=opts.resume, overwrite=opts.overwrite)
    if journal.resumed:
        reporter.log(f"resuming: {len(journal.done)} photo(s) already located in an earlier run")
        if opts.json_lines:
            journal.replay(reporter)  # their result lines, so a reader of this run sees every photo
    failed = 0
    try:
        with reporter.task("locate", len(photos)) as task:
            for path in photos:
                if photo_key(path) not in journal.done:
                    failed += not step.locate(path, journal)
                task.update(1)
    except BaseException:
        if not journal.done:
            journal.discard()
        elif journal.dir.exists():
            reporter.log(f"{len(journal.done)} photo(s) are committed in {journal.dir}; rerun the same command "
                         "with --resume to finish", "warning")
        if heat:
            heat.remove_if_empty()
        raise
    if opts.group:
        step.record_groups(journal, photos)
    written = journal.publish()
    if heat:
        heat.remove_if_empty()
    return failed, written


def photo_key(path: Path) -> str:
    """A photo's identity in a run (its resolved path): what the journal records it under."""
    return os.path.realpath(path)


class _Steps:
    """The per-photo pipeline, one method per step: read -> encode -> search -> heatmap -> record."""

    def __init__(self, index: LoadedIndex, encoder, ground: GroundInput, assessor: Assessor,
                 opts: LocateOptions, reporter: Reporter) -> None:
        self.index, self.encoder, self.ground, self.assessor = index, encoder, ground, assessor
        self.heat: HeatmapFolder | None = None
        self.opts, self.reporter = opts, reporter
        self.members: list = []  # tiling.groups.Member of each located photo when grouping

    def locate(self, path: Path, journal: ResultJournal) -> bool:
        """Locate one photo and commit it; False (reported) when it failed."""
        try:
            photo = self.read(path)
            oq = self.encode(photo)
            hits = scaled(self.search(photo, oq.q), oq.scale)
            assessed = self.assessor.assess(oq, hits, query_kind(photo, oq))
            hits = top(hits, self.opts.k)
            heat_path = self.heatmap(photo, hits)
            self.record(photo, hits, heat_path, journal, oq, assessed.fields[:self.opts.k])
            if self.opts.group:
                from tiling.groups import make_member

                self.members.append(make_member(photo.path, photo.exif, hits, float(self.index.meta["grid"]["stride"])))
        except (PhotoError, SaigError) as e:
            _fail(self.reporter, self.opts, path, str(e))
            return False
        return True

    def read(self, path: Path) -> Photo:
        """Read and classify the photo; its warnings are reported."""
        photo = read_photo(path, self.ground, self.opts.mode, self.opts.fov_deg)
        if not photo.view.heading_known:
            photo.exif.warnings.append(f"{path}: panorama without a heading (no GPano PoseHeadingDegrees or EXIF "
                                       "GPSImgDirection): assumed north-aligned")
        for w in (*photo.notes, *photo.exif.warnings):
            self.reporter.log(w, "warning")
        return photo

    def encode(self, photo: Photo) -> OrientedQuery:
        """The query: one descriptor at the photo's heading, or -- a sector model and no heading -- the best of
        a rotation search (``tiling.orientation``), which is also the heading estimate."""
        heading = self._heading(photo)
        canvas = self._canvas(photo, heading is None)
        if heading is not None or not is_oriented(self.encoder):
            return single_query(self.encoder, canvas, heading)
        return rotation_query(self.encoder, canvas, 180.0, lambda qs: self._search_many(photo, qs))

    def _heading(self, photo: Photo) -> float | None:
        """The compass heading of the photo's centre column, when known and not ignored (``--no-heading``)."""
        if self.opts.ignore_heading:
            return None
        pano = photo.view.panorama
        if pano is not None:
            return None if pano.azimuth0_deg is None else (pano.azimuth0_deg + 180.0) % 360.0
        return photo.exif.heading

    def _canvas(self, photo: Photo, unknown: bool):
        """The ground input; with an unknown heading a photo is centred (heading 180) and a panorama taken
        as north-aligned (its centre column at 180)."""
        from dataclasses import replace

        from saig_core.data.transforms import limited_fov_to_input
        from tiling.ground_input import panorama_to_input

        g, view = self.ground, photo.view
        if not (unknown and self.opts.ignore_heading):
            return g.tensor(photo)
        if view.panorama is not None:
            return panorama_to_input(photo.image, replace(view.panorama, azimuth0_deg=None), g.band, g.size)
        return limited_fov_to_input(photo.image, g.size, view.fov_deg, g.placement, None)

    def _search_many(self, photo: Photo, qs: np.ndarray) -> np.ndarray:
        """Best scores (R, 1) of several queries in one FAISS call (within the EXIF prior when asked)."""
        exif, opts = photo.exif, self.opts
        subset = None
        if opts.prior_radius_m is not None and exif.lon is not None and exif.lat is not None:
            subset = self.index.chips_within(exif.lon, exif.lat, opts.prior_radius_m)[0].faiss_id
            if len(subset) == 0:
                subset = None
        scores, _ = self.index.search(qs, 1, subset)
        return scores

    def search(self, photo: Photo, q: np.ndarray) -> QueryResult:
        """Top-k chips (and the heatmap's chips and scores when asked), within the prior radius of the EXIF
        position when asked; the index is read through :func:`tiling.reference.query` only."""
        exif, opts = photo.exif, self.opts
        position = (exif.lon, exif.lat) if exif.lon is not None and exif.lat is not None else None
        if opts.prior_radius_m is not None and position is None:
            self.reporter.log(f"{photo.path}: no usable EXIF GPS position; searching all chips (no prior)", "warning")
        try:
            return query(self.index, q, max(opts.k, POSTERIOR_K), position, opts.prior_radius_m,
                         heatmap=self.heat is not None or opts.group is not None)
        except SaigError as e:
            raise SaigError(f"{photo.path}: {e}") from None

    def record_groups(self, journal: ResultJournal, photos: list[Path]) -> None:
        """Each group of two or more located photos fused (``tiling.groups``) into one ranked list and, with
        --heatmap-dir, one heatmap of every fused cell, recorded as a 'photo' named ``group:...`` whose candidates
        are places for the group's mean position. A group an earlier run recorded (--resume) is kept as it is."""
        from tiling.groups import assign_groups, group_names, parse_group_rule

        rule = parse_group_rule(str(self.opts.group))
        groups = [g for g in assign_groups(self._group_members(photos, journal), rule) if len(g) > 1]
        taken = set(self.heat.names.values()) if self.heat else set()
        for group, name in zip(groups, group_names(groups), strict=True):
            heat_name = group_heatmap_name(group[0].path, taken) if self.heat else None
            if name in journal.done:
                continue
            try:
                self._record_group(journal, group, name, heat_name)
            except SaigError as e:
                _fail(self.reporter, self.opts, name, f"{name}: {e}")

    def _group_members(self, photos: list[Path], journal: ResultJournal) -> list:
        """The ``tiling.groups.Member`` of every located photo, in the run's order. The photos an earlier run
        committed (--resume) are located again for their scores (kept in memory only; nothing recorded twice)."""
        from tiling.groups import make_member

        have = {photo_key(m.path): m for m in self.members}
        again = [p for p in photos if photo_key(p) not in have and photo_key(p) in journal.done]
        if again:
            self.reporter.log(f"locating {len(again)} photo(s) of the earlier run again for their groups")
        for path in again:
            try:
                photo = self.read(path)
                oq = self.encode(photo)
                hits = scaled(self.search(photo, oq.q), oq.scale)
            except (PhotoError, SaigError) as e:
                self.reporter.log(f"{e} (left out of its group)", "warning")
                continue
            have[photo_key(path)] = make_member(photo.path, photo.exif, hits, float(self.index.meta["grid"]["stride"]))
        return [have[photo_key(p)] for p in photos if photo_key(p) in have]

    def _group_chips(self, group: list) -> tuple[Chips, np.ndarray]:
        """The index's chips of the group's fused cells (grid row/col from the manifest) and their fused scores."""
        from tiling.groups import cell_windows, fused_cells

        stride = float(self.index.meta["grid"]["stride"])
        cells, fused = fused_cells(group, stride)
        chips = Chips.concat([self.index.chips_in_window(w) for w in cell_windows(cells, stride)])
        by_key = {(round(float(x) / stride), round(float(y) / stride)): n
                  for n, (x, y) in enumerate(zip(chips.x, chips.y, strict=True))}
        pairs = np.asarray([(n, by_key[cx, cy]) for n, (cx, cy) in enumerate(cells.tolist()) if (cx, cy) in by_key],
                           dtype=np.int64).reshape(-1, 2)  # (fused cell, its chip)
        return chips.take(pairs[:, 1]), fused[pairs[:, 0]]

    def _record_group(self, journal: ResultJournal, group: list, name: str, heat_name: str | None) -> None:
        """One group's heatmap (when asked: its maximum is the top-1 candidate), rows and result line."""
        chips, scores = self._group_chips(group)
        heat_path = None
        if self.heat is not None and heat_name is not None and len(chips):
            heat_path = write_heatmap(self.heat.path_named(heat_name), chips.row, chips.col, scores,
                                      self.index.meta["grid"], self.index.crs, GROUP_BAND)
        best = np.argsort(-scores, kind="stable")[:self.opts.k]
        found, top = chips.take(best), scores[best]
        cands = [{**dict.fromkeys(CANDIDATE_COLUMNS), "photo": name, "rank": r + 1, "score": float(top[r]),
                  "chip_id": str(found.chip_id[r]), "faiss_id": int(found.faiss_id[r]), "lon": float(found.lon[r]),
                  "lat": float(found.lat[r]), "x": float(found.x[r]), "y": float(found.y[r]),
                  "grid_crs": self.index.crs, "heading_estimated": 0} for r in range(len(found))]
        lons = [m.lon for m in group if m.lon is not None]
        lats = [m.lat for m in group if m.lat is not None]
        first = cands[0] if cands else {}
        row = {"photo_key": name, "photo": name, "lon": float(np.mean(lons)) if lons else None,
               "lat": float(np.mean(lats)) if lats else None, "input": "group",
               "input_reason": f"--group {self.opts.group}: " + ", ".join(str(m.path) for m in group),
               "top1_chip_id": first.get("chip_id"), "top1_lon": first.get("lon"), "top1_lat": first.get("lat"),
               "top1_score": first.get("score"), "heatmap": str(heat_path) if heat_path else None}
        result = {"photo": name, "group": [str(m.path) for m in group],
                  "candidates": [{k: c[k] for k in CANDIDATE_RESULT_FIELDS} for c in cands], "heatmap": row["heatmap"]}
        journal.record(row, cands, result)
        if self.opts.json_lines:
            self.reporter.emit("result", **result)
        else:
            self.reporter.log(f"{name}: {len(group)} photos fused; top-1 {first.get('chip_id', '-')}")

    def heatmap(self, photo: Photo, hits: QueryResult) -> Path | None:
        """The photo's heatmap GeoTIFF over the scored chips (when asked), under its unique name."""
        if self.heat is None or hits.heat_chips is None or hits.heat_scores is None:
            return None
        return write_heatmap(self.heat.path_for(photo.path), hits.heat_chips.row, hits.heat_chips.col,
                             hits.heat_scores, self.index.meta["grid"], self.index.crs)

    def record(self, photo: Photo, hits: QueryResult, heat_path: Path | None, journal: ResultJournal,
               oq: OrientedQuery, assessed: list[dict]) -> None:
        """The photo's rows and result line, committed to the journal, then reported."""
        crs, path, c = self.index.crs, photo.path, hits.chips
        heading = None if oq.heading_deg is None else round(oq.heading_deg, 2)
        cands = [{
            "photo": str(path), "rank": n + 1, "score": float(s), "chip_id": str(c.chip_id[n]), "faiss_id": int(i),
            "lon": float(c.lon[n]), "lat": float(c.lat[n]), "x": float(c.x[n]), "y": float(c.y[n]),
            "distance_m": float(hits.distance_m[n]) if hits.distance_m is not None else None, "grid_crs": crs,
            "heading_deg": heading, "heading_estimated": int(oq.estimated), **assessed[n],
        } for n, (s, i) in enumerate(zip(hits.scores, hits.ids, strict=True))]
        row = _photo_row(photo, cands, heat_path)
        result = {"photo": str(path), "exif": photo.exif.as_json(),
                  "candidates": [{k: cand[k] for k in CANDIDATE_RESULT_FIELDS} for cand in cands],
                  "heatmap": str(heat_path) if heat_path else None,
                  **{k: row[k] for k in ("input", "input_reason", "fov_deg", "fov_source", "heading_source")}}
        journal.record(row, cands, result)
        if self.opts.json_lines:
            self.reporter.emit("result", **result)
        elif cands:
            top = cands[0]
            dist = f", {top['distance_m']:.0f} m from EXIF" if top["distance_m"] is not None else ""
            self.reporter.log(f"{path}: top-1 {top['chip_id']} at {top['lat']:.6f}, {top['lon']:.6f} "
                              f"(score {top['score']:.3f}{dist})")


def top(hits: QueryResult, k: int) -> QueryResult:
    """The first ``k`` candidates of an answer (its heatmap unchanged)."""
    from dataclasses import replace

    if len(hits.ids) <= k:
        return hits
    distance = hits.distance_m[:k] if hits.distance_m is not None else None
    return replace(hits, scores=hits.scores[:k], ids=hits.ids[:k], chips=hits.chips.take(np.arange(k)),
                   distance_m=distance)


def scaled(hits: QueryResult, scale: float) -> QueryResult:
    """The answer with its scores (and heatmap scores) multiplied by ``scale`` (a sector model's factor that
    makes them mean sector similarities, comparable between photos of different fields of view)."""
    from dataclasses import replace

    if scale == 1.0:
        return hits
    heat = hits.heat_scores * scale if hits.heat_scores is not None else None
    return replace(hits, scores=hits.scores * scale, heat_scores=heat)


def _photo_row(photo: Photo, cands: list[dict], heat_path: Path | None) -> dict:
    """The ``photos`` layer row of a located photo (plus its journal key)."""
    exif, view = photo.exif, photo.view
    top = cands[0] if cands else {}
    prefix = f"{photo.path}: "
    notes = [w[len(prefix):] if w.startswith(prefix) else w for w in (*photo.notes, *exif.warnings)]
    return {"photo_key": photo_key(photo.path), "photo": str(photo.path), "lon": exif.lon, "lat": exif.lat,
            "heading": exif.heading, "heading_ref": exif.heading_ref, "heading_magnetic": exif.heading_magnetic,
            "declination_deg": exif.declination_deg, "date": exif.date, "date_source": exif.date_source,
            "heading_source": view.panorama.heading_source if view.panorama else None,
            "input": view.kind, "input_reason": view.reason, "fov_deg": view.fov_deg, "fov_source": view.fov_source,
            "top1_chip_id": top.get("chip_id"), "top1_lon": top.get("lon"), "top1_lat": top.get("lat"),
            "top1_score": top.get("score"), "top1_distance_m": top.get("distance_m"),
            "top1_confidence": top.get("confidence"),
            "heatmap": str(heat_path) if heat_path else None, "warnings": "; ".join(notes) or None}
