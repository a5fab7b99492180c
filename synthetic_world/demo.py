"""``saig demo``: the whole product on a held-out synthetic world, measured against its ground truth.

Runs the user's commands as a user would (subprocesses of the ``saig`` CLI): ``saig synth`` makes a
world whose seed no training world used, ``saig index build`` indexes its orthophoto, ``saig locate``
geolocates its photos; then this module scores the candidates against ``truth.csv`` and draws
overviews. A photo counts as a hit at rank k when one of its top-k candidate chip centres lies
within ``hit_radius_m`` of the true position (neighbouring chips overlap, so chip identity is not a
meaningful criterion); ``R@1%`` uses k = floor(0.01 * chips) + 1 as in the cross-view literature.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError
from synthetic_world import io, ownership

#: What ``saig demo`` writes into its folder (recorded in ``.saig-demo.json``; see :mod:`synthetic_world.ownership`).
DEMO_ENTRIES = ("world", "index", ".index.partial", "candidates.gpkg", ".candidates.gpkg.partial", "heatmaps",
                "overviews", "per_photo.json", "report.json", "candidates_no_heading.gpkg",
                ".candidates_no_heading.gpkg.partial", "groups_pano.gpkg", ".groups_pano.gpkg.partial",
                "groups_photo.gpkg", ".groups_photo.gpkg.partial")


@dataclass(frozen=True)
class DemoConfig:
    """What one ``saig demo`` run does: the world to generate, the model and index settings, how a hit is scored
    and how many overview images to draw."""

    out: Path = Path("demo_out")
    checkpoint: Path = Path("models/demo.pt")
    seed: int = 2026                 # unseen in training: train 101-108 and 110-113, validation 109
    size_m: float = 2000.0
    panoramas: int = 200
    fov_photos: int = 50
    groups: int = 4                  # groups of 4 spots within 40 m, shot as panoramas and as 90-degree photos
    chip_size_m: float = 64.0
    stride_m: float = 16.0
    hit_radius_m: float = 25.0
    overviews: int = 6


def run_saig(args: list[str], log) -> list[dict]:
    """Run ``saig --progress json ARGS``; return its JSON events, or raise with its error.

    Progress events are echoed as a one-line counter when stderr is a terminal.
    """
    import tempfile

    cmd = [sys.executable, "-m", "saig_core", "--progress", "json", *args]
    log("$ saig " + " ".join(args))
    live = sys.stderr.isatty()
    events = []
    with tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                events.append(event)
                if live and event.get("event") == "progress":
                    total = event.get("total") or "?"
                    print(f"\r  {event.get('stage')}: {event.get('done')}/{total}   ", end="", file=sys.stderr,
                          flush=True)
        if live:
            print(file=sys.stderr)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        errors = [e.get("message", "") for e in events if e.get("event") == "error"]
        detail = "; ".join(errors) or stderr.strip()[-2000:]
        raise SaigError(f"`saig {args[0]}` failed (exit {proc.returncode}): {detail}")
    return [e for e in events if e.get("event") != "progress"]


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Generate, index, locate and score; write ``cfg.out``/report.json and overviews; return the report."""
    if not cfg.checkpoint.is_file():
        raise SaigError(f"{cfg.checkpoint}: demo checkpoint not found (run `make demo-model` to train it)")
    out = cfg.out
    # every figure comes from this run: what an earlier demo wrote here goes, and nothing else
    ownership.claim(out, "saig demo", list(DEMO_ENTRIES), "what an earlier saig demo wrote there")
    world_dir, index_dir = out / "world", out / "index"
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    run_saig(["synth", "--seed", str(cfg.seed), "--size-m", str(cfg.size_m), "--photos", str(cfg.panoramas),
           "--fov-photos", str(cfg.fov_photos), "--group-photos", str(cfg.groups), "--out", str(world_dir)], log)
    timings["synth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    built = run_saig(["index", "build", str(world_dir / "orthophoto.tif"), "--checkpoint", str(cfg.checkpoint),
                   "--chip-size-m", str(cfg.chip_size_m), "--stride-m", str(cfg.stride_m), "--out", str(index_dir),
                   "--json"], log)
    timings["index_build_s"] = time.perf_counter() - t0
    result = [e for e in built if e.get("event") == "result"][-1]
    chips = int(result["count"])
    k_percent = chips // 100 + 1

    t0 = time.perf_counter()
    located = run_saig(["locate", str(world_dir / "photos"), "--index", str(index_dir), "-k", str(max(k_percent, 5)),
                     "--out", str(out / "candidates.gpkg"), "--heatmap-dir", str(out / "heatmaps"), "--json"], log)
    timings["locate_s"] = time.perf_counter() - t0

    truth = {Path(r.file).name: r for r in io.read_truth(world_dir / "truth.csv")}
    results = {Path(e["photo"]).name: e for e in located if e.get("event") == "result" and "photo" in e}
    meta = json.loads((world_dir / "world.json").read_text())
    scored = score_photos(truth, results, meta["crs"], cfg.hit_radius_m, k_percent)
    t0 = time.perf_counter()
    extra = _extra_cases(cfg, world_dir, index_dir, truth, meta["crs"], k_percent, log)
    timings["locate_no_heading_and_groups_s"] = time.perf_counter() - t0
    chance = math.pi * cfg.hit_radius_m ** 2 / cfg.stride_m ** 2 / chips

    t0 = time.perf_counter()
    overview_files = _draw_overviews(cfg, world_dir, out, truth, results, scored)
    timings["overviews_s"] = time.perf_counter() - t0
    timings["total_s"] = sum(timings.values())

    report = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "world": {"seed": cfg.seed, "crs": meta["crs"], "size_m": cfg.size_m, "buildings": meta["buildings"]},
        "chips": chips,
        "k_for_r1_percent": k_percent,
        "hit_definition": f"a top-k candidate chip centre within {cfg.hit_radius_m:g} m of the true position",
        "chance_r1": chance,
        "chance_r1_percent": min(1.0, chance * k_percent),
        "metrics": {kind: summarize(rows, chance) for kind, rows in {**_by_kind(scored), **extra}.items() if rows},
        "photos_failed": sorted(set(truth) - set(results)),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "outputs": {"candidates": "candidates.gpkg", "heatmaps": "heatmaps/", "overviews": overview_files,
                    "per_photo": "per_photo.json"},
    }
    (out / "per_photo.json").write_text(json.dumps(scored, indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def locate_results(args: list[str], index: Path, k: int, out: Path, log) -> dict:
    """``saig locate ARGS --json`` against ``index``: its result events by photo (groups as ``group:...``)."""
    events = run_saig(["locate", *args, "--index", str(index), "-k", str(k), "--out", str(out), "--json"], log)
    return {e["photo"]: e for e in events if e.get("event") == "result" and "photo" in e}


def score_groups(world_dir: Path, results: dict, folders: list[Path], crs: str, radius: float,
                 k_percent: int) -> list[dict]:
    """Scored fused results of photo groups (``groups/<kind>_gNNN``): a hit is within ``radius`` of the group's
    mean true position."""
    gtruth = io.read_truth(world_dir / "groups" / "truth.csv")
    truth, found = {}, {}
    for f in folders:
        members = [t for t in gtruth if t.file.startswith(f.name + "/")]
        key = next((p for p in results if p.startswith(f"group:{f.name}/")), None)
        if key is None or not members:
            continue
        mean = {a: float(np.mean([getattr(t, a) for t in members])) for a in ("lon", "lat", "x", "y")}
        truth[f.name] = io.TruthRow(file=f.name, heading=0.0, kind=members[0].kind, **mean)
        found[f.name] = results[key]
    return score_photos(truth, found, crs, radius, k_percent)


def _extra_cases(cfg: DemoConfig, world_dir: Path, index: Path, truth: dict, crs: str, k_percent: int,
                 log) -> dict[str, list[dict]]:
    """The photos again without their headings, and the photo groups fused (``--group folder``)."""
    k = max(k_percent, 5)
    out: dict[str, list[dict]] = {}
    photos = [str(world_dir / "photos" / n) for n, t in truth.items() if t.kind == "photo"]
    if photos:
        res = locate_results([*photos, "--no-heading"], index, k, cfg.out / "candidates_no_heading.gpkg", log)
        out["photo_90deg_no_heading"] = score_photos(truth, {Path(p).name: e for p, e in res.items()}, crs,
                                                     cfg.hit_radius_m, k_percent)
    for kind, case in (("pano", "group_panorama"), ("photo", "group_photo")):
        folders = sorted((world_dir / "groups").glob(f"{kind}_g*"))
        if folders:
            res = locate_results([*map(str, folders), "--group", "folder"], index, k,
                                 cfg.out / f"groups_{kind}.gpkg", log)
            out[case] = score_groups(world_dir, res, folders, crs, cfg.hit_radius_m, k_percent)
    return out


def score_photos(truth: dict, results: dict, crs: str, radius: float, k_percent: int) -> list[dict]:
    """Per photo: top-1 error (m), the rank of the first candidate within ``radius`` (None if none) and, when the
    top-1 carries a heading, its error against the true heading (degrees)."""
    from pyproj import Transformer

    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    rows = []
    for name, t in sorted(truth.items()):
        if name not in results:
            continue
        cands = sorted(results[name]["candidates"], key=lambda c: c["rank"])
        xs, ys = to_grid.transform([c["lon"] for c in cands], [c["lat"] for c in cands])
        dist = np.hypot(np.asarray(xs) - t.x, np.asarray(ys) - t.y)
        within = np.nonzero(dist <= radius)[0]
        top = cands[0]
        rx, ry = (to_grid.transform(top["refined_lon"], top["refined_lat"]) if top.get("refined_lon") is not None
                  else (xs[0], ys[0]))
        rows.append({"photo": name, "kind": t.kind, "top1_error_m": round(float(dist[0]), 2),
                     "top1_refined_error_m": round(float(np.hypot(rx - t.x, ry - t.y)), 2),
                     "top1_confidence": top.get("confidence"),
                     "first_hit_rank": int(within[0]) + 1 if len(within) else None,
                     "top5": [[round(float(x), 2), round(float(y), 2)] for x, y in zip(xs[:5], ys[:5], strict=True)],
                     "heading_error_deg": _heading_error(cands[0].get("heading_deg"), t.heading),
                     "heading_estimated": bool(cands[0].get("heading_estimated"))})
    for r in rows:
        r["hit@1"] = r["first_hit_rank"] == 1
        r["hit@5"] = r["first_hit_rank"] is not None and r["first_hit_rank"] <= 5
        r["hit@1%"] = r["first_hit_rank"] is not None and r["first_hit_rank"] <= k_percent
    return rows


def _heading_error(estimate, truth: float) -> float | None:
    """Smallest angle (degrees) between an estimated and the true heading; None without an estimate."""
    if estimate is None:
        return None
    return round(abs((float(estimate) - truth + 180.0) % 360.0 - 180.0), 2)


def _by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    groups = {"panorama": [r for r in rows if r["kind"] == "panorama"],
              "photo_90deg": [r for r in rows if r["kind"] == "photo"], "all": rows}
    return {k: v for k, v in groups.items() if v}


def summarize(rows: list[dict], chance: float) -> dict:
    """R@1, R@5, R@1 %, R@1 over chance, median and 90th-percentile top-1 error of scored photos; with
    estimated headings, the share of top-1 hits whose heading is within 20 degrees."""
    err = np.asarray([r["top1_error_m"] for r in rows])
    r1 = float(np.mean([r["hit@1"] for r in rows]))
    hits = [r for r in rows if r["hit@1"] and r.get("heading_estimated") and r.get("heading_error_deg") is not None]
    extra: dict = {}
    if hits:
        within = float(np.mean([r["heading_error_deg"] <= 20 for r in hits]))
        extra = {"heading_within_20deg_of_top1_hits": round(within, 4), "top1_hits_with_heading": len(hits)}
    refined = [r for r in rows if r.get("top1_refined_error_m") is not None]
    if refined:
        extra.update(_refined_figures(refined))
    return {**extra, "count": len(rows), "R@1": round(r1, 4),
            "R@5": round(float(np.mean([r["hit@5"] for r in rows])), 4),
            "R@1%": round(float(np.mean([r["hit@1%"] for r in rows])), 4),
            "R@1_over_chance": round(r1 / chance, 1),
            "median_error_m": round(float(np.median(err)), 1), "p90_error_m": round(float(np.percentile(err, 90)), 1)}


def _refined_figures(rows: list[dict]) -> dict:
    """Refinement and confidence of scored photos: the top-1 error at its reported (refined) position, on top-1
    hits before and after refinement, and the calibration of the top-1 confidence (25 m around that position)."""
    from tiling.confidence import HIT_M, reliability

    hits = [r for r in rows if r["hit@1"]]
    out: dict = {"median_refined_error_m": round(float(np.median([r["top1_refined_error_m"] for r in rows])), 1)}
    if hits:
        out["median_error_of_top1_hits_m"] = round(float(np.median([r["top1_error_m"] for r in hits])), 2)
        out["median_refined_error_of_top1_hits_m"] = round(float(np.median([r["top1_refined_error_m"]
                                                                             for r in hits])), 2)
    scored = [r for r in rows if r.get("top1_confidence") is not None]
    if scored:
        curve = reliability(np.asarray([r["top1_confidence"] for r in scored]),
                            np.asarray([r["top1_refined_error_m"] <= HIT_M for r in scored]))
        out.update(confidence_ece=curve["ece"], confidence_brier=curve["brier"])
    return out


def _cell(value, width: int, digits: int) -> str:
    """A right-aligned table cell: the number, or '-' when there is none."""
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def format_table(report: dict) -> str:
    """The demo report as a fixed-width text table: metrics per photo kind, then chips, hit rule and timings."""
    lines = [f"{'photos':<24}{'n':>5}{'R@1':>8}{'R@5':>8}{'R@1%':>8}{'x chance':>10}{'median m':>10}{'p90 m':>9}"
             f"{'hits m':>8}{'refined':>9}{'conf ECE':>10}"]
    for kind, m in report["metrics"].items():
        hits, refined = m.get("median_error_of_top1_hits_m"), m.get("median_refined_error_of_top1_hits_m")
        ece = m.get("confidence_ece")
        lines.append(f"{kind:<24}{m['count']:>5}{m['R@1']:>8.3f}{m['R@5']:>8.3f}{m['R@1%']:>8.3f}"
                     f"{m['R@1_over_chance']:>10.1f}{m['median_error_m']:>10.1f}{m['p90_error_m']:>9.1f}"
                     f"{_cell(hits, 8, 1)}{_cell(refined, 9, 1)}{_cell(ece, 10, 3)}")
    lines.append("hits m / refined: median error of the top-1 hits at the chip centre / at the refined position; "
                 "conf ECE: calibration error of the top-1 confidence")
    t = report["timings_s"]
    lines.append(f"{report['chips']} chips (R@1% = top {report['k_for_r1_percent']}), hit = "
                 f"{report['hit_definition']}; chance R@1 {report['chance_r1']:.5f}")
    lines.append("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in t.items()))
    return "\n".join(lines)


# -- overviews -------------------------------------------------------------------------------------

_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


def _colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (.., 3) uint8 on an inferno-like ramp."""
    pos = np.clip(v, 0, 1) * (len(_HEAT) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_HEAT) - 2)
    f = (pos - lo)[..., None]
    return (_HEAT[lo] * (1 - f) + _HEAT[lo + 1] * f).astype(np.uint8)


def _panel(ortho_path: Path, heat_path: Path | None, bounds, size: int, opacity: float):
    """Orthophoto of ``bounds`` (grid CRS) at ``size`` px with the heatmap blended on top (the top
    half of the scores, up to ``opacity``)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.warp import reproject
    from rasterio.windows import from_bounds as window_from_bounds

    w, s, e, n = bounds
    with rasterio.open(ortho_path) as src:
        win = window_from_bounds(w, s, e, n, src.transform)
        rgb = src.read(window=win, out_shape=(3, size, size), resampling=Resampling.average, boundless=True,
                       fill_value=0)
        crs = src.crs
    img = np.moveaxis(rgb, 0, 2).astype(np.float32)
    if heat_path is not None and heat_path.is_file():
        heat = np.full((size, size), np.nan, np.float32)
        with rasterio.open(heat_path) as h:
            reproject(rasterio.band(h, 1), heat, dst_transform=from_bounds(w, s, e, n, size, size), dst_crs=crs,
                      dst_nodata=np.nan, resampling=Resampling.nearest)
        valid = np.isfinite(heat)
        if valid.any():
            lo, hi = np.nanpercentile(heat, 50), np.nanmax(heat)
            v = np.where(valid, (heat - lo) / max(hi - lo, 1e-6), 0)
            alpha = (np.clip(v, 0, 1) * opacity)[..., None] * valid[..., None]
            img = img * (1 - alpha) + _colormap(v).astype(np.float32) * alpha
    return img.astype(np.uint8)


def _panel_xy(bounds, size: int, x: float, y: float) -> tuple[float, float]:
    """Grid-CRS (x, y) -> pixel (column, row) in a ``size`` px panel of ``bounds`` (west, south, east, north)."""
    bw, bs, be, bn = bounds
    return ((x - bw) / (be - bw) * size, (bn - y) / (bn - bs) * size)


def _draw_overviews(cfg: DemoConfig, world_dir: Path, out: Path, truth, results, scored) -> list[str]:
    """For a few panoramas and photos: the photo above the whole world and a 400 m zoom, with the
    heatmap, the true position (white cross) and the top-5 candidates (numbered circles)."""
    from PIL import Image, ImageDraw

    meta = json.loads((world_dir / "world.json").read_text())
    w, s, e, n = meta["bounds"]
    by_name = {r["photo"]: r for r in scored}
    panos = [r for r in scored if r["kind"] == "panorama"]
    photos = [r for r in scored if r["kind"] == "photo"]
    chosen = panos[: max(1, cfg.overviews * 2 // 3)] + photos[: max(0, cfg.overviews - cfg.overviews * 2 // 3)]
    folder = out / "overviews"
    folder.mkdir(exist_ok=True)
    written = []
    side = 560
    for row in chosen:
        name = row["photo"]
        t = truth[name]
        heat = results[name].get("heatmap")
        heat_path = Path(heat) if heat else None
        views = [((w, s, e, n), "whole world", 0.75),
                 ((t.x - 200, t.y - 200, t.x + 200, t.y + 200), "400 m around the true position", 0.45)]
        canvas_w = 2 * side + 30
        with Image.open(world_dir / t.file) as photo:
            ph = photo.convert("RGB")
        ph = ph.resize((canvas_w - 20, int(ph.height * (canvas_w - 20) / ph.width)))
        canvas = Image.new("RGB", (canvas_w, ph.height + side + 70), (255, 255, 255))
        canvas.paste(ph, (10, 30))
        draw = ImageDraw.Draw(canvas)
        rank = row["first_hit_rank"]
        rank_text = rank if rank else ">" + str(len(results[name]["candidates"]))
        draw.text((10, 8), f"{name} ({t.kind}): top-1 error {row['top1_error_m']:.0f} m, first candidate within "
                           f"{cfg.hit_radius_m:g} m at rank {rank_text}",
                  fill=(0, 0, 0))
        top = ph.height + 55
        for i, (bounds, label, opacity) in enumerate(views):
            img = Image.fromarray(_panel(world_dir / "orthophoto.tif", heat_path, bounds, side, opacity))
            d = ImageDraw.Draw(img)
            for j, (cx, cy) in reversed(list(enumerate(by_name[name]["top5"]))):
                u, v = _panel_xy(bounds, side, cx, cy)
                r = 9 if i else 6
                d.ellipse((u - r, v - r, u + r, v + r), outline=(0, 255, 255), width=2)
                d.text((u + r, v - r), str(j + 1), fill=(0, 255, 255))
            u, v = _panel_xy(bounds, side, t.x, t.y)
            for colour, width in (((0, 0, 0), 5), ((255, 255, 255), 2)):
                d.line((u - 10, v, u + 10, v), fill=colour, width=width)
                d.line((u, v - 10, u, v + 10), fill=colour, width=width)
            x0 = 10 + i * (side + 10)
            canvas.paste(img, (x0, top))
            draw.text((x0, top - 16), f"{label}: heatmap, true position (cross), top-5 (cyan)", fill=(0, 0, 0))
        path = folder / f"{Path(name).stem}.png"
        canvas.save(path)
        written.append(str(path.relative_to(out)))
    return written


def export_demo_model(src: str | Path, dst: str | Path, command: str = "make demo-model",
                      aerial_footprint_m: float = DemoConfig.chip_size_m) -> Path:
    """Copy a trained checkpoint (e.g. a run's ``best.pt``) to ``dst`` with float16 weights, keeping its
    metadata (``ground_input`` tells ``saig locate`` how photos become input), recording the aerial
    footprint its worlds' chips span (unless the trainer recorded one) and how it was made."""
    from saig_core.weights.checkpoint import checkpoint_info, load_checkpoint, save_checkpoint

    info = checkpoint_info(src)
    meta = {k: v for k, v in info["metadata"].items()
            if k not in ("weights_sha256", "weights_dtype", "created", "software_version", "torch_version",
                         "parameters")}
    if meta.get("aerial_footprint_m") is None:
        meta["aerial_footprint_m"] = float(aerial_footprint_m)
    meta["reproduce"] = command
    meta["exported_from"] = Path(src).name
    return save_checkpoint(load_checkpoint(src), dst, half=True, **meta)
