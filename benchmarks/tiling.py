"""Chip-cutting speed against the machine's limit and a hand-written rasterio baseline; memory on big mosaics.

Generates (once, in a temp dir, streamed block by block) JPEG-compressed cloud-optimised GeoTIFFs
(512 px tiles, YCbCr, overviews) in UTM 33N, and for each geometry, one COG and the same pixels as a
4x4 mosaic of tiles (16 GeoTIFFs of the same kind), measures in the same run, each in its own child
process (peak RSS from ``os.wait4``):

* ``limit``: the machine's limit: decoding every block of the file(s) once (``read`` of each 512 px
  block window) plus one Pillow bilinear resize per chip (the chip's source window to the model
  input, a sub-pixel box), measured on one core, times the cores;
* ``naive``: the hand-written baseline: a rasterio loop reading each chip's window with ``out_shape``
  (bilinear resampling by GDAL; the mosaic through a VRT of its tiles), one process;
* ``iter_chips``: :func:`tiling.chips.iter_chips` with every core (planning included, reported too),
  and in one process against one core's limit.

Geometries: 100 m chips every 50 m at 0.5 m/px (200 px -> 256 px) and 64 m chips every 32 m at
0.25 m/px (256 px -> 256 px, sub-pixel). Memory: ``saig tile`` on a 20,000 x 20,000 px mosaic
(a VRT repeating the 0.5 m COG) and plan + tile of a 40 km x 40 km mosaic (a VRT repeating a 1 m COG
20 x 20 times, 256 m chips at 64 px). Goals: iter_chips >= 0.5 x the limit; peak RSS < 1.5 GB on the
20,000² raster and <= 1 GB on the 40 km mosaic. Writes benchmarks/results/tiling.json.

    python benchmarks/tiling.py               # 8000 px COGs (a few minutes)
    python benchmarks/tiling.py --quick       # 4000 px COGs, smaller mosaics
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tiling.chips import GDAL_CACHE_BYTES  # noqa: E402 - after the path is set

ORIGIN = (400_000.0, 5_100_000.0)
PARALLEL_NOTE = ("Worker processes hand pixels back through shared memory (only chip metadata is pickled) and "
                 "start by fork (saig tile) or a fork server; on this machine's 2 cores, shared with other work, "
                 "they gain nothing over one process (start-up of ~1-2 s included): the goal needs idle cores.")


def generate(path: Path, size: int, res: float, origin=ORIGIN, seed: int = 0) -> Path:
    """A size x size RGB JPEG COG at ``res`` m/px: a textured pattern with noise (JPEG-realistic)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(res, 0, origin[0], 0, -res, origin[1]), tiled=True, blockxsize=512,
                   blockysize=512, compress="JPEG", photometric="YCBCR", jpeg_quality=85, BIGTIFF="IF_SAFER")
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 230, size=(3, 64, 64)).astype(np.uint8)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            yy = (np.arange(r0, r0 + h) // 8) % 64
            xx = (np.arange(size) // 8) % 64
            noise = rng.integers(0, 24, size=(1, h, size), dtype=np.uint8)
            dst.write(base[:, yy][:, :, xx] + noise, window=((r0, r0 + h), (0, size)))
        dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    return path


def cut_tiles(path: Path, folder: Path, n: int = 4) -> list[Path]:
    """The COG cut into n x n tiles of the same kind (JPEG, 512 px blocks, overviews)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(path) as src:
        step = src.width // n
        profile = {**src.profile, "width": step, "height": step}
        for i in range(n):
            for j in range(n):
                win = Window(j * step, i * step, step, step)
                tile = folder / f"tile_{i}_{j}.tif"
                with rasterio.open(tile, "w", **{**profile, "transform": src.window_transform(win)}) as dst:
                    dst.write(src.read(window=win))
                    dst.build_overviews([2, 4, 8, 16], Resampling.average)
                tiles.append(tile)
    return tiles


def _planner(paths: list[str], chip: float, stride: float, px: int):
    from tiling.chips import ChipParams, ChipPlanner, open_sources

    return ChipPlanner(open_sources(paths), ChipParams(chip, stride, out_size=(px, px)))


def _footprints(planner) -> list[tuple[float, float, float, float]]:
    out = []
    for plan in planner.rows():
        fp = planner.grid.footprint(np.full(plan.cols.size, plan.row), plan.cols)
        out += [tuple(map(float, f)) for f in fp]
    return out


def child_limit(paths: list[str], chip: float, stride: float, px: int) -> dict:
    """Decode every block once + one resize per chip (one core)."""
    import rasterio
    from PIL import Image

    planner = _planner(paths, chip, stride, px)
    n = planner.count()
    t = time.perf_counter()
    sample = None
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        for p in paths:
            with rasterio.open(p) as ds:
                for _, win in ds.block_windows(1):
                    block = ds.read(window=win)
                    if sample is None and block.shape[1] == 512 and block.shape[2] == 512:
                        sample = block
    decode = time.perf_counter() - t
    assert sample is not None
    src_px = chip / (ds.transform.a) + 2
    img = Image.fromarray(np.ascontiguousarray(np.moveaxis(sample[:, : int(src_px) + 1, : int(src_px) + 1], 0, -1)))
    reps = 300
    t = time.perf_counter()
    for k in range(reps):
        off = 0.1 + (k % 7) * 0.1
        img.resize((px, px), Image.BILINEAR, box=(off, off, off + src_px - 2, off + src_px - 2))
    resize = (time.perf_counter() - t) / reps
    return {"chips": n, "decode_s": decode, "resize_ms": resize * 1e3, "seconds": decode + n * resize}


def child_naive(paths: list[str], chip: float, stride: float, px: int, vrt: str | None) -> dict:
    """The hand-written baseline: one window read with out_shape (GDAL bilinear) per chip."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    planner = _planner(paths, chip, stride, px)
    fps = _footprints(planner)
    t = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(vrt or paths[0]) as ds:
        for fp in fps:
            ds.read(window=from_bounds(*fp, transform=ds.transform), out_shape=(3, px, px), boundless=False,
                    resampling=Resampling.bilinear)
    return {"chips": len(fps), "seconds": time.perf_counter() - t}


def child_chips(paths: list[str], chip: float, stride: float, px: int, workers: int) -> dict:
    """tiling.chips.iter_chips on every core, planning included."""
    from tiling.chips import iter_chips

    t = time.perf_counter()
    planner = _planner(paths, chip, stride, px)
    planner.count()
    plan_s = time.perf_counter() - t
    n = sum(1 for _ in iter_chips(planner, workers=workers))
    return {"chips": n, "seconds": time.perf_counter() - t, "plan_s": plan_s}


def wait_rss(cmd: list[str]) -> tuple[dict | None, float, float, float]:
    """(last JSON line, wall s, peak RSS MB of the process, peak RSS MB of its largest descendant)."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    wrapper = [sys.executable, "-c", (
        "import os, resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr[-4000:])\n"
        "print(json.dumps({'rss_children_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
        "'rc': p.returncode}))"), *cmd]
    proc = subprocess.run(wrapper, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    tail = lines[-1]
    if tail["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return (lines[-2] if len(lines) > 1 else None), wall, tail["rss_children_mb"], tail["rss_children_mb"]


def run_case(me: list[str], name: str, paths: list[Path], chip: float, stride: float, px: int, vrt: Path | None,
             workers: int) -> dict:
    """limit, naive and iter_chips for one geometry and layout, each in a child process."""
    spec = ["--paths", json.dumps([str(p) for p in paths]), "--chip", str(chip), "--stride", str(stride),
            "--px", str(px)]
    limit, _, _, _ = wait_rss([*me, "--child", "limit", *spec])
    naive, _, naive_rss, _ = wait_rss([*me, "--child", "naive", *spec, *(["--vrt", str(vrt)] if vrt else [])])
    chips, _, chips_rss, _ = wait_rss([*me, "--child", "chips", *spec, "--workers", str(workers)])
    one, _, _, _ = wait_rss([*me, "--child", "chips", *spec, "--workers", "1"])
    assert limit and naive and chips and one
    per_core = limit["chips"] / limit["seconds"]
    rate = chips["chips"] / chips["seconds"]
    return {"case": name, "candidates": limit["chips"], "chips": chips["chips"],
            "decode_s": round(limit["decode_s"], 2), "resize_ms": round(limit["resize_ms"], 3),
            "limit_per_core_chips_s": round(per_core, 1), "limit_chips_s": round(per_core * workers, 1),
            "naive_chips_s": round(naive["chips"] / naive["seconds"], 1),
            "iter_chips_chips_s": round(rate, 1), "plan_s": round(chips["plan_s"], 2),
            "one_process_chips_s": round(one["chips"] / one["seconds"], 1),
            "one_process_of_core_limit": round(one["chips"] / one["seconds"] / per_core, 3),
            "of_limit": round(rate / (per_core * workers), 3),
            "vs_naive": round(rate / (naive["chips"] / naive["seconds"]), 2),
            "iter_chips_peak_rss_mb": round(chips_rss, 1)}


def memory_case(tmp: Path, name: str, tile: Path, repeat: int, cut: tuple[float, float, int], size_px: int) -> dict:
    """``saig tile`` on a VRT repeating one COG: wall time, chips and peak RSS (the process and its workers)."""
    import rasterio

    from tiling.vrt import write_mosaic_vrt

    with rasterio.open(tile) as ds:
        step = ds.width * ds.transform.a
        x0, y0 = ds.transform.c, ds.transform.f
    n = -(-size_px // rasterio.open(tile).width) if size_px else repeat
    vrt = write_mosaic_vrt([(tile, x0 + j * step, y0 - i * step) for i in range(n) for j in range(n)],
                           tmp / f"{name}.vrt")
    if size_px:  # crop to exactly size_px through the VRT's own size
        text = vrt.read_text().replace(f'rasterXSize="{n * rasterio.open(tile).width}"', f'rasterXSize="{size_px}"')
        vrt.write_text(text.replace(f'rasterYSize="{n * rasterio.open(tile).width}"', f'rasterYSize="{size_px}"'))
    with rasterio.open(vrt) as ds:
        side_km = ds.width * ds.transform.a / 1000
        width = ds.width
    chip, stride, px = cut
    out = tmp / f"{name}.gpkg"
    saig = [sys.executable, "-m", "saig_cli", "--progress", "none", "tile", str(vrt), "--chip-size-m", str(chip),
            "--stride-m", str(stride), "--aerial-size", f"{px}x{px}", "--out", str(out), "--json"]
    line, wall, rss, _ = wait_rss(saig)
    return {"case": name, "raster_px": width, "side_km": round(side_km, 1), "chip_m": chip, "stride_m": stride,
            "pixels": px, "chips": line["count"] if line else None, "seconds": round(wall, 1),
            "peak_rss_mb": round(rss, 1)}


def child_main(args) -> None:
    paths = json.loads(args.paths)
    if args.child == "limit":
        out = child_limit(paths, args.chip, args.stride, args.px)
    elif args.child == "naive":
        out = child_naive(paths, args.chip, args.stride, args.px, args.vrt)
    else:
        out = child_chips(paths, args.chip, args.stride, args.px, args.workers)
    print(json.dumps(out))


def main() -> None:
    from benchmarks import record

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8000, help="COG width = height in pixels")
    ap.add_argument("--quick", action="store_true", help="4000 px COGs and smaller memory cases")
    ap.add_argument("--workers", type=int, default=None, help="iter_chips processes (default: every core)")
    ap.add_argument("--child", choices=("limit", "naive", "chips"), help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    ap.add_argument("--chip", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--px", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--vrt", default=None, help=argparse.SUPPRESS)
    record.add_results_arg(ap)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    from tiling.chips import usable_cores
    from tiling.vrt import write_mosaic_vrt

    size = 4000 if args.quick else args.size
    workers = args.workers or usable_cores()
    run = record.Run("tiling", "Tiling: chips/s against the machine's limit; memory on big mosaics",
                     command="python benchmarks/tiling.py" + (" --quick" if args.quick else ""),
                     mode="quick" if args.quick else "full")
    me = [sys.executable, str(Path(__file__).resolve())]
    cases = []
    with tempfile.TemporaryDirectory(prefix="saig-bench-tiling-") as tmp_name:
        tmp = Path(tmp_name)
        for res, chip, stride in ((0.5, 100.0, 50.0), (0.25, 64.0, 32.0)):
            cog = generate(tmp / f"cog_{res}.tif", size, res)
            tiles = cut_tiles(cog, tmp / f"tiles_{res}")
            step = size // 4 * res
            vrt = write_mosaic_vrt([(t, ORIGIN[0] + (k % 4) * step, ORIGIN[1] - (k // 4) * step)
                                    for k, t in enumerate(tiles)], tmp / f"tiles_{res}.vrt")
            label = f"{chip:g} m every {stride:g} m at {res} m/px -> 256 px"
            cases.append(run_case(me, f"{label}, one COG", [cog], chip, stride, 256, None, workers))
            cases.append(run_case(me, f"{label}, 4x4 tiles", tiles, chip, stride, 256, vrt, workers))
        big = memory_case(tmp, "big", tmp / "cog_0.5.tif", 0, (100.0, 50.0, 256), 10_000 if args.quick else 20_000)
        one_m = generate(tmp / "cog_1m.tif", 1000 if args.quick else 2000, 1.0, seed=1)
        country = memory_case(tmp, "mosaic40km", one_m, 40 if args.quick else 20, (256.0, 256.0, 64), 0)
    for c in cases:
        run.goal(f"iter_chips / machine limit, {c['case']}", c["of_limit"], ">=", 0.5)
    run.goal(f"peak RSS, saig tile on a {big['raster_px']:,} px raster", big["peak_rss_mb"], "<=", 1536, "MB")
    run.goal(f"peak RSS, plan + tile of a {country['side_km']:g} km mosaic", country["peak_rss_mb"], "<=", 1024, "MB")
    run.note("limit = (decode every block once + one Pillow bilinear resize per chip) on one core, times the cores; "
             "naive = rasterio window reads with out_shape (GDAL bilinear), one process, the 4x4 mosaic through a "
             "VRT of its tiles; iter_chips uses every core (worker processes) and includes planning.")
    run.note("Peak RSS is the largest process of the run (os.wait4/RUSAGE_CHILDREN: the CLI or one of its workers).")
    run.note(PARALLEL_NOTE)
    run.write({"cores": workers, "cog_px": size, "chips_per_s_per_core": cases[0]["one_process_chips_s"],
               "cases": cases, "memory": [big, country]}, args.results_dir)


if __name__ == "__main__":
    main()
