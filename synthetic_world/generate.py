"""Producing data sets from synthetic worlds: a world with geotagged photos, or training pairs.

``synthesize_world`` writes what an analyst would have: ``orthophoto.tif``, ``dsm.tif``,
``photos/*.jpg`` with EXIF GPS and heading, ``truth.csv`` and ``world.json``.
``synthesize_pairs`` writes what ``saig train`` reads: ground views and north-up aerial chips centred
(within a jitter) on the camera, listed in ``pairs.csv`` -- from worlds whose seeds the caller keeps
apart from evaluation worlds.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError
from synthetic_world import io, ownership
from synthetic_world.render import PanoramaSpec, PhotoSpec, Renderer
from synthetic_world.world import FIELD, GROUND, ROAD, WorldConfig, street_positions

PAIRS_FIELDS = ("ground_path", "aerial_path", "lat", "lon", "seed")
#: Photo groups (``PhotoPlan.groups``): spots per group, and their distance from the group's first spot (metres).
GROUP_SIZE = 4
GROUP_SPREAD_M = (5.0, 20.0)
#: The files of a world besides its photos (recorded with them in ``.saig-synth.json``).
WORLD_FILES = ("orthophoto.tif", "dsm.tif", "truth.csv", "world.json")


@dataclass(frozen=True)
class PhotoPlan:
    """How many views of a world to shoot, and how."""

    panoramas: int = 200
    fov_photos: int = 0
    pano: PanoramaSpec = field(default_factory=PanoramaSpec)
    photo: PhotoSpec = field(default_factory=PhotoSpec)
    margin_m: float = 80.0
    groups: int = 0  # groups of GROUP_SIZE nearby spots, each shot as a panorama and as a 90-degree photo


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def synthesize_world(config: WorldConfig, out: str | Path, plan: PhotoPlan = PhotoPlan(), reporter=None,
                     overwrite: bool = False) -> dict:
    """Write one world and its photos to ``out``; returns the summary also saved as world.json.

    Panoramas are north-aligned (column 0 = north); 90° photos look at a uniformly random heading.
    All positions lie on roads, at least ``plan.margin_m`` inside the world's edge. A folder that
    already holds a world is refused unless ``overwrite``, which first removes that world (the files
    its ``.saig-synth.json`` marker lists, inside ``out`` only), so none of an earlier, larger run is
    left next to the new truth.csv and nothing else is touched.
    """
    out = Path(out)
    if (out / "world.json").exists() or (out / "truth.csv").exists():
        if not overwrite:
            raise SaigError(f"{out} already holds a synthetic world; choose another folder or pass --overwrite")
        _remove_old_world(out)
    total = plan.panoramas + plan.fov_photos
    names = [f"pano_{i:04d}.jpg" for i in range(plan.panoramas)] + [f"photo_{j:04d}.jpg"
                                                                      for j in range(plan.fov_photos)]
    with _task(reporter, "world", 1) as t:
        world = io.make_world(config)
        renderer = Renderer(world)
        t.update(1)
    group_files = [f"groups/{kind}_g{g:03d}/{i}.jpg" for g in range(plan.groups) for kind in ("pano", "photo")
                   for i in range(GROUP_SIZE)]
    ownership.write_marker(out, "saig synth", [*WORLD_FILES, *(f"photos/{n}" for n in names), *group_files,
                                               *(["groups/truth.csv"] if plan.groups else [])])
    (out / "photos").mkdir(parents=True, exist_ok=True)
    with _task(reporter, "rasters", 2) as t:
        io.write_orthophoto(out / "orthophoto.tif", world, renderer.ortho)
        t.update(1)
        io.write_dsm(out / "dsm.tif", world)
        t.update(1)

    positions = (street_positions(world, total, _rng(config.seed, 1), margin_m=plan.margin_m) if total
                 else np.zeros((0, 2)))
    lon, lat = io.to_lonlat(world, positions[:, 0], positions[:, 1])
    headings = _rng(config.seed, 2).uniform(0, 360, plan.fov_photos)
    rows: list[io.TruthRow] = []
    with _task(reporter, "photos", total) as t:
        for i, (x, y) in enumerate(positions):
            rng = _rng(config.seed, 3, i)
            name = names[i]
            if i < plan.panoramas:
                kind, heading = "panorama", 180.0
                rgb = renderer.panorama(x, y, 0.0, plan.pano, rng)
            else:
                j = i - plan.panoramas
                kind, heading = "photo", float(headings[j])
                rgb = renderer.photo(x, y, heading, plan.photo, rng)
            altitude = world.ground_elevation(x, y) + plan.pano.eye_height_m
            focal = None if kind == "panorama" else plan.photo.focal_35mm
            exif = io.gps_exif(float(lon[i]), float(lat[i]), heading, altitude_m=altitude, focal_35mm=focal)
            io.write_jpeg(out / "photos" / name, rgb, exif)
            rows.append(io.TruthRow(file=f"photos/{name}", lon=float(lon[i]), lat=float(lat[i]), x=float(x),
                                    y=float(y), heading=round(heading, 2), kind=kind))
            t.update(1)
    io.write_truth(out / "truth.csv", rows)
    if plan.groups:
        _shoot_groups(world, renderer, config.seed, plan, out / "groups", reporter)
    summary = _world_summary(config, world, plan)
    tmp = out / ".world.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "world.json")
    return summary


def _world_summary(config: WorldConfig, world, plan: PhotoPlan) -> dict:
    """What world.json records: the config, CRS, bounds, style, what was shot and the conventions."""
    return {
        "seed": config.seed,
        "config": asdict(config),
        "crs": world.crs,
        "bounds": list(world.bounds),
        "resolution_m": world.res,
        "size_px": list(world.shape),
        "buildings": len(world.buildings),
        "panoramas": plan.panoramas,
        "fov_photos": plan.fov_photos,
        "panorama": asdict(plan.pano),
        "photo": asdict(plan.photo),
        "style": asdict(world.style),
        "conventions": {
            "azimuth": "degrees clockwise from grid north",
            "panorama_columns": "column 0 looks north (left edge), azimuth grows to the right; "
                                "heading = azimuth of the centre column = 180",
            "photo_heading": "azimuth of the optical axis (GPSImgDirection, ref T)",
            "truth_xy": f"{world.crs} metres; lon/lat EPSG:4326",
        },
        "files": {"orthophoto": "orthophoto.tif", "dsm": "dsm.tif", "truth": "truth.csv", "photos": "photos/"},
    }


def group_spots(world, groups: int, rng: np.random.Generator) -> np.ndarray:
    """(groups, GROUP_SIZE, 2) street spots: a centre and spots 5-20 m from it (so all within 40 m of each other)."""
    lo, hi = GROUP_SPREAD_M
    cand = street_positions(world, 40_000, rng, margin_m=80.0)
    out = []
    for c in cand:
        d = np.hypot(*(cand - c).T)
        near = cand[(d >= lo) & (d <= hi)]
        if len(near) >= GROUP_SIZE - 1 and all(np.hypot(*(c - g[0])) > 100 for g in out):
            out.append(np.vstack([c, near[rng.choice(len(near), GROUP_SIZE - 1, replace=False)]]))
        if len(out) == groups:
            break
    return np.asarray(out).reshape(-1, GROUP_SIZE, 2)


def _shoot_groups(world, renderer: Renderer, seed: int, plan: PhotoPlan, out: Path, reporter) -> None:
    """Each group's spots as panoramas (``pano_gNNN/``) and 90-degree photos (``photo_gNNN/``), truth.csv."""
    spots = group_spots(world, plan.groups, _rng(seed, 4))
    rows: list[io.TruthRow] = []
    with _task(reporter, "groups", spots.shape[0]) as t:
        for g, group in enumerate(spots):
            headings = _rng(seed, 5, g).uniform(0, 360, len(group))
            lon, lat = io.to_lonlat(world, group[:, 0], group[:, 1])
            for i, (x, y) in enumerate(group):
                altitude = world.ground_elevation(x, y) + plan.pano.eye_height_m
                for kind, heading in (("pano", 180.0), ("photo", float(headings[i]))):
                    rng = _rng(seed, 6, g, i, kind == "photo")
                    rgb = (renderer.panorama(x, y, 0.0, plan.pano, rng) if kind == "pano"
                           else renderer.photo(x, y, heading, plan.photo, rng))
                    exif = io.gps_exif(float(lon[i]), float(lat[i]), heading, altitude_m=altitude,
                                       focal_35mm=None if kind == "pano" else plan.photo.focal_35mm)
                    name = f"{kind}_g{g:03d}/{i}.jpg"
                    (out / name).parent.mkdir(parents=True, exist_ok=True)
                    io.write_jpeg(out / name, rgb, exif)
                    rows.append(io.TruthRow(file=name, lon=float(lon[i]), lat=float(lat[i]), x=float(x), y=float(y),
                                            heading=round(heading, 2),
                                            kind="panorama" if kind == "pano" else "photo"))
            t.update(1)
    io.write_truth(out / "truth.csv", rows)


def _remove_old_world(out: Path) -> None:
    """Delete the world an earlier ``saig synth`` wrote into ``out``: the files its marker lists, or (a world
    written before markers existed) the photos its truth.csv lists -- in both cases only inside ``out``."""
    if ownership.read_marker(out, "saig synth") is not None:
        ownership.remove_written(out, "saig synth")
        return
    if not (out / "truth.csv").exists():
        return
    for old in io.read_truth(out / "truth.csv"):
        path = ownership.inside(out, old.file)
        if path is not None and path.is_file() and not path.is_symlink():
            path.unlink()


def synthesize_pairs(seeds: Sequence[int], out: str | Path, pairs_per_world: int, size_m: float = 2000.0,
                     chip_size_m: float = 64.0, jitter_m: float = 6.0, plan: PhotoPlan = PhotoPlan(),
                     reporter=None) -> Path:
    """Training pairs from the worlds of ``seeds``: ``pairs.csv`` (paths relative to it).

    Ground views are north-aligned panoramas (the trainer cuts limited-FoV views from them, see
    ``saig_core.data.transforms``). Aerial views are north-up orthophoto chips of ``chip_size_m`` at the
    world's resolution, centred within +-``jitter_m`` of the camera (an index grid never puts a chip
    exactly on it). Cameras stand on roads (85 %) or open ground.
    """
    out = Path(out)
    rows: list[dict] = []
    for seed in seeds:
        wdir = out / f"world_{seed}"
        (wdir / "ground").mkdir(parents=True, exist_ok=True)
        (wdir / "aerial").mkdir(parents=True, exist_ok=True)
        # A stopped run resumes: pairs already written with the same parameters are kept
        # (every file is written under a temporary name first, so an existing one is complete).
        params = {"seed": seed, "size_m": size_m, "chip_size_m": chip_size_m, "jitter_m": jitter_m,
                  "pano": asdict(plan.pano), "pairs": pairs_per_world}
        params_file = wdir / "params.json"
        reuse = params_file.is_file() and json.loads(params_file.read_text()) == params
        params_file.write_text(json.dumps(params))
        with _task(reporter, f"world {seed}", 1) as t:
            world = io.make_world(WorldConfig(seed=seed, size_m=size_m))
            renderer = Renderer(world)
            t.update(1)
        rng = _rng(seed, 10)
        margin = chip_size_m / 2 + jitter_m + 2
        on_road = int(round(pairs_per_world * 0.85))
        pos = np.concatenate([street_positions(world, on_road, rng, margin),
                              street_positions(world, pairs_per_world - on_road, rng, margin, (GROUND, FIELD, ROAD))])
        lon, lat = io.to_lonlat(world, pos[:, 0], pos[:, 1])
        first = len(rows)
        with _task(reporter, f"pairs {seed}", len(pos)) as t:
            for i, (x, y) in enumerate(pos):
                g, a = wdir / "ground" / f"{i:05d}.jpg", wdir / "aerial" / f"{i:05d}.png"
                if not (reuse and g.is_file() and a.is_file()):
                    prng = _rng(seed, 11, i)
                    io.write_jpeg(g, renderer.panorama(x, y, 0.0, plan.pano, prng))
                    jx, jy = prng.uniform(-jitter_m, jitter_m, 2)
                    io.write_png(a, renderer.aerial_chip(x + jx, y + jy, chip_size_m))
                rows.append({"ground_path": str(g.relative_to(out)), "aerial_path": str(a.relative_to(out)),
                             "lat": f"{lat[i]:.8f}", "lon": f"{lon[i]:.8f}", "seed": seed})
                t.update(1)
        # each world's own list (paths relative to its folder) lets a long run be used world by world
        io.write_csv(wdir / "pairs.csv", PAIRS_FIELDS, [
            {**r, "ground_path": str(Path(r["ground_path"]).relative_to(wdir.name)),
             "aerial_path": str(Path(r["aerial_path"]).relative_to(wdir.name))} for r in rows[first:]])
        del world, renderer
    return io.write_csv(out / "pairs.csv", PAIRS_FIELDS, rows)


class _NullTask:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _task(reporter, stage: str, total: int):
    return reporter.task(stage, total) if reporter is not None else _NullTask()

