"""Chip-cutting speed and memory on a large generated COG, printed as ONE JSON object on stdout.

Generates (once, in a temp dir, streamed block by block) a 20,000 x 20,000 RGB uint8 cloud-optimised
GeoTIFF (512 px tiles, JPEG/YCbCr, overviews) at 0.5 m/px in UTM 33N, then runs, each in its own
child process so every peak RSS is that process's own (``os.wait4``):

* ``raw``: the raw windowed-read rate of the same file: ``src.read(window=...)`` of exactly the
  source windows of the chips (no resampling, no masks), in the same order;
* ``chips``: the tiling pipeline (:func:`tiling.chips.iter_chips`: window read resampled to the
  model input, validity mask, collar rule, RGB conversion);
* ``cli``: ``saig tile`` end to end (planning, chips, GeoPackage manifest) with its peak RSS.

Goal: chips/s >= 0.8 x raw windowed reads/s; peak RSS < 1.5 GB.

    python benchmarks/tiling.py                 # 20k x 20k, 128 m chips (256 px) every 128 m
    python benchmarks/tiling.py --size 8000     # quicker
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

RES = 0.5
ORIGIN = (400_000.0, 5_100_000.0)


def generate(path: Path, size: int) -> None:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1]), tiled=True, blockxsize=512,
                   blockysize=512, compress="JPEG", photometric="YCBCR", jpeg_quality=85, BIGTIFF="IF_SAFER")
    rng = np.random.default_rng(0)
    base = rng.integers(30, 230, size=(3, 64, 64)).astype(np.uint8)
    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            yy = (np.arange(r0, r0 + h) // 8) % 64
            xx = (np.arange(size) // 8) % 64
            block = base[:, yy][:, :, xx]
            noise = rng.integers(0, 24, size=(1, h, size), dtype=np.uint8)
            dst.write(block + noise, window=((r0, r0 + h), (0, size)))
        dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)


def child(mode: str, path: str, chip_m: float, stride_m: float, px: int) -> None:
    """One measurement in this (child) process; prints a JSON line."""
    import rasterio

    from tiling.chips import GDAL_CACHE_MB, ChipParams, ChipPlanner, ChipReader, iter_chips, open_sources

    sources = open_sources([path])
    planner = ChipPlanner(sources, ChipParams(chip_m, stride_m, out_size=(px, px)))
    t = time.perf_counter()
    n = 0
    if mode == "raw":
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path) as src:
            for chip in planner.candidates():
                col, row, w, h = chip.window.flatten()
                col, row = max(0, round(col)), max(0, round(row))
                w, h = min(round(w), src.width - col), min(round(h), src.height - row)
                if w <= 0 or h <= 0:
                    continue
                src.read(window=((row, row + h), (col, col + w)))
                n += 1
    else:
        with ChipReader(planner) as reader:
            for _ in iter_chips(planner, reader):
                n += 1
    print(json.dumps({"mode": mode, "chips": n, "seconds": time.perf_counter() - t}))


def measure(cmd: list[str]) -> tuple[dict | None, float, float]:
    """(last JSON line of stdout, wall seconds, peak RSS MB) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return (lines[-1] if lines else None), wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=20_000, help="raster width = height in pixels")
    ap.add_argument("--chip-size-m", type=float, default=128.0)
    ap.add_argument("--stride-m", type=float, default=128.0)
    ap.add_argument("--pixels", type=int, default=256, help="chip size in pixels (model input)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.chip_size_m, args.stride_m, args.pixels)
        return
    with tempfile.TemporaryDirectory(prefix="saig-bench-tiling-") as tmp:
        path = Path(tmp) / "big_cog.tif"
        t = time.perf_counter()
        generate(path, args.size)
        gen_s = time.perf_counter() - t
        common = ["--size", str(args.size), "--chip-size-m", str(args.chip_size_m), "--stride-m", str(args.stride_m),
                  "--pixels", str(args.pixels)]
        me = [sys.executable, str(Path(__file__).resolve()), *common, "--child"]
        results = {}
        for mode in ("raw", "chips", "raw", "chips"):  # alternate, keep each one's best
            line, wall, rss = measure([*me, mode, str(path)])
            rate = line["chips"] / line["seconds"]
            best = results.get(mode)
            if best is None or rate > best["chips_per_s"]:
                results[mode] = {"chips": line["chips"], "seconds": round(line["seconds"], 2),
                                 "chips_per_s": round(rate, 1), "peak_rss_mb": round(rss, 1)}
        saig = Path(sys.executable).with_name("saig")
        out = Path(tmp) / "chips.gpkg"
        line, wall, rss = measure([str(saig), "--progress", "none", "tile", str(path), "--chip-size-m",
                                   str(args.chip_size_m), "--stride-m", str(args.stride_m), "--aerial-size",
                                   f"{args.pixels}x{args.pixels}", "--out", str(out), "--json"])
        results["cli"] = {"chips": line["count"] if line else None, "seconds": round(wall, 2),
                          "peak_rss_mb": round(rss, 1)}
        print(json.dumps({
            "benchmark": "tiling", "raster": f"{args.size}x{args.size} RGB uint8 COG (JPEG, 512 px tiles)",
            "file_mb": round(path.stat().st_size / 2 ** 20, 1), "generate_s": round(gen_s, 1),
            "chip": {"size_m": args.chip_size_m, "stride_m": args.stride_m, "pixels": args.pixels, "m_per_px": RES},
            **results,
            "ratio_chips_vs_raw": round(results["chips"]["chips_per_s"] / results["raw"]["chips_per_s"], 3),
            "goal_ratio": 0.8, "goal_peak_rss_mb": 1536, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        }))


if __name__ == "__main__":
    main()
