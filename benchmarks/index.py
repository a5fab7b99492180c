"""Index-build throughput against the encoder alone, printed as ONE JSON object on stdout.

In one run, on the same machine state: (1) encoder-only images/s: the aerial branch on as many already-
prepared chip-sized tensors as the build has chips, through the same
:class:`saig_core.runtime.encode.Encoder` the builder uses; (2) end-to-end ``build_index`` chips/s on a
generated orthophoto with the same number of chips: planning, windowed reads and resampling (in the
prefetch thread), encoding, shard commits, FAISS index, manifest and metadata (the fixed part of that, a
4-chip build, is reported too). The two are timed in alternation (best of ``--repeats``) so other
processes sharing the cores slow both alike. Goal: end-to-end >= 0.9 x encoder-only.

    python benchmarks/index.py                              # saig_tiny, 128x128 chips, ~4,000 chips
    python benchmarks/index.py --preset saig_s --aerial 256 --chips 256
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="saig_tiny")
    ap.add_argument("--aerial", type=int, default=128, help="aerial input size (pixels)")
    ap.add_argument("--chips", type=int, default=4096, help="about this many chips")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import rasterio
    import torch
    from rasterio.transform import from_origin

    from saig_core import build_model, save_checkpoint
    from saig_core.runtime.encode import Encoder
    from saig_core.runtime.progress import Reporter
    from tiling.index import BuildOptions, build_index

    chip_m, res = 64.0, 0.5
    side = int(math.ceil(math.sqrt(args.chips))) * int(chip_m / res)
    with tempfile.TemporaryDirectory(prefix="saig-bench-index-") as tmp:
        tmp = Path(tmp)
        model = build_model(args.preset, ground_size=(args.aerial // 2, args.aerial * 2),
                            aerial_size=(args.aerial, args.aerial))
        ckpt = save_checkpoint(model, tmp / "model.pt")
        rng = np.random.default_rng(0)
        base = rng.integers(30, 230, size=(3, 64, 64)).astype(np.uint8)
        tif = tmp / "ortho.tif"
        with rasterio.open(tif, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(500_032.0, 5_000_000.0, res, res), tiled=True,
                           blockxsize=512, blockysize=512, compress="JPEG", photometric="YCBCR") as dst:
            for r0 in range(0, side, 512):
                h = min(512, side - r0)
                block = base[:, (np.arange(r0, r0 + h) // 8) % 64][:, :, (np.arange(side) // 8) % 64]
                dst.write(block + rng.integers(0, 24, size=(1, h, side), dtype=np.uint8),
                          window=((r0, r0 + h), (0, side)))

        encoder = Encoder(model, device="cpu")
        batch = torch.randn(args.batch_size, 3, args.aerial, args.aerial)
        encoder.encode("aerial", batch)  # warm-up

        def encoder_only(n: int) -> float:
            t = time.perf_counter()
            done = 0
            while done < n:
                b = min(args.batch_size, n - done)
                encoder.encode("aerial", batch[:b])
                done += b
            return n / (time.perf_counter() - t)

        def end_to_end(k: int) -> tuple[float, int]:
            opts = BuildOptions(checkpoint=str(ckpt), device="cpu", batch_size=args.batch_size, index_type="flat")
            t = time.perf_counter()
            result = build_index([str(tif)], chip_m, chip_m, tmp / f"idx{k}", opts, Reporter("none"))
            return result.count / (time.perf_counter() - t), result.count

        small = tmp / "small.tif"  # fixed costs: a 4-chip build (load, fingerprint, FAISS, manifest, checksums)
        with rasterio.open(tif) as src, rasterio.open(small, "w", **{**src.profile, "width": 256, "height": 256,
                                                                  "blockxsize": 256, "blockysize": 256}) as dst:
            dst.write(src.read(window=((0, 256), (0, 256))))
        t = time.perf_counter()
        build_index([str(small)], chip_m, chip_m, tmp / "small_idx", BuildOptions(checkpoint=str(ckpt), device="cpu"),
                    Reporter("none"))
        fixed_s = time.perf_counter() - t
        enc, e2e, count = 0.0, 0.0, 0
        for k in range(args.repeats):
            rate, count = end_to_end(k)
            e2e = max(e2e, rate)
            enc = max(enc, encoder_only(count))
        print(json.dumps({
            "benchmark": "index", "preset": args.preset, "aerial_size": args.aerial, "batch_size": args.batch_size,
            "chips": count, "raster": f"{side}x{side} RGB uint8, {res} m/px, {chip_m:g} m chips",
            "encoder_only_images_per_s": round(enc, 1), "end_to_end_chips_per_s": round(e2e, 1),
            "ratio": round(e2e / enc, 3), "goal_ratio": 0.9, "fixed_cost_s_4_chip_build": round(fixed_s, 2),
            "ratio_without_fixed_cost": round(count / (count / e2e - fixed_s) / enc, 3),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        }))


if __name__ == "__main__":
    main()
