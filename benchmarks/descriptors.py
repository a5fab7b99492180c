"""Descriptors of real models: their spectra, and every index kind on them; writes results/descriptors.json.

A generated world (``saig synth``, seed 2026, 2 km, 100 panoramas: the demo's held-out world) is indexed
by ``saig index build`` (64 m chips every 16 m) with two models: the demo model (``models/demo.pt``,
trained) and SAIG-S with random weights (its spectrum says what the architecture produces before
training; its retrieval figures say nothing about accuracy), on a crop of the world for SAIG-S (it
encodes about 100x slower). Queries are the world's panoramas through each model's ground branch, as
``saig locate`` encodes them.

Reported per model: descriptor dimension, the spectrum of the chips' descriptors (share of the
uncentred second moment in the top 8 ... 128 principal directions, participation ratio
(sum l)^2 / sum l^2, mean cosine of random chip pairs), then for each index kind (``pcasq``,
``ivfpq``; exact ``flat`` as the reference) built on the chips with ``tiling.search``: 10-recall@10
and 1-recall@10 of the queries against exact search, with and without re-ranking, and p50 latency
(one thread). The synthetic vectors of benchmarks/search.py have a 32-d latent structure, which
favours a PCA index by construction; these do not.

    python benchmarks/descriptors.py                  # ~10-20 min on 2 cores
    python benchmarks/descriptors.py --quick          # 1 km world, fewer SAIG-S chips
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import record  # noqa: E402 - after the path set-up
from benchmarks.search import nn_recall_at_10, recall_at_10  # noqa: E402
from tiling import search  # noqa: E402

SAIG = Path(sys.executable).with_name("saig")
K = 20


def spectrum(x: np.ndarray) -> dict:
    """How the descriptors' energy spreads over directions (uncentred, as inner-product search sees it)."""
    lam = np.clip(np.linalg.eigvalsh(x.T.astype(np.float64) @ x / len(x))[::-1], 0, None)
    share = np.cumsum(lam) / lam.sum()
    rng = np.random.default_rng(0)
    a, b = rng.integers(len(x), size=(2, 5000))
    out = {f"energy_top_{k}": round(float(share[min(k, len(lam)) - 1]), 4) for k in (8, 16, 32, 64, 96, 128)
           if k <= len(lam)}
    out["participation_ratio"] = round(float(lam.sum() ** 2 / (lam ** 2).sum()), 1)
    out["mean_cosine_random_pairs"] = round(float(np.mean(np.sum(x[a] * x[b], axis=1))), 4)
    return out


def build_index(rasters: list[Path], checkpoint: Path, out: Path) -> tuple[np.ndarray, float]:
    """Chip descriptors of the rasters through `saig index build` (exact flat index), and its seconds."""
    import faiss

    t = time.perf_counter()
    subprocess.run([str(SAIG), "index", "build", *map(str, rasters), "--checkpoint", str(checkpoint),
                    "--chip-size-m", "64", "--stride-m", "16", "--index-type", "flat", "--device", "cpu",
                    "--out", str(out)], check=True, capture_output=True, text=True)
    index = faiss.read_index(str(out / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal), time.perf_counter() - t


def ground_queries(index_dir: Path, photos: list[Path]) -> np.ndarray:
    """The photos' descriptors as `saig locate` encodes them."""
    from tiling.locate import load_model_for_index
    from tiling.photos import read_photo
    from tiling.reference import open_index

    with open_index(index_dir) as ref:
        encoder, ground = load_model_for_index(ref, None, "cpu")
    return np.concatenate([encoder.encode("ground", ground.tensor(read_photo(p))[None]).numpy() for p in photos])


def kinds(x: np.ndarray, q: np.ndarray, tmp: Path) -> list[dict]:
    """Every compressed kind on these descriptors, with and without re-ranking, against exact search."""
    import faiss

    faiss.omp_set_num_threads(1)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :K]
    rows = []
    path = search.VectorStore.write(tmp / "vectors.f16", len(x), x.shape[1], lambda: [x])
    with search.VectorStore(path, len(x), x.shape[1]) as store:
        for kind in ("pcasq", "ivfpq"):
            index = search.build(kind, x.shape[1], len(x), lambda: [x])
            for rerank in (False, True):
                st = store if rerank else None
                _, found = search.search(index, q, K, store=st)
                times = []
                for one in q:
                    t = time.perf_counter()
                    search.search(index, one[None], K, store=st)
                    times.append(time.perf_counter() - t)
                rows.append({"index": search.factory_string(kind, x.shape[1], len(x)),
                             "nprobe": search.default_nprobe(index),
                             "rerank": search.RERANK if rerank else 0,
                             "recall_10_at_10": round(recall_at_10(found, truth), 4),
                             "recall_1_at_10": round(nn_recall_at_10(found, truth), 4),
                             "p50_ms": round(float(np.median(times)) * 1e3, 3)})
    return rows


def crop(src: Path, dst: Path, metres: float) -> Path:
    """The top-left ``metres`` x ``metres`` of an orthophoto (a smaller area for the slow model)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        px = int(metres / ds.res[0])
        win = Window(0, 0, min(px, ds.width), min(px, ds.height))
        profile = {**ds.profile, "width": win.width, "height": win.height,
                   "transform": ds.window_transform(win)}
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=win))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 1 km world and a 400 m crop for SAIG-S")
    record.add_results_arg(ap)
    args = ap.parse_args()
    size, crop_m = (1000, 400) if args.quick else (2000, 640)
    run = record.Run("descriptors", "Descriptors of real models: spectra and index kinds",
                     "python benchmarks/descriptors.py" + (" --quick" if args.quick else ""),
                     "quick" if args.quick else "full")
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="saig-bench-desc-") as tmp:
        tmp = Path(tmp)
        subprocess.run([str(SAIG), "synth", "--seed", "2026", "--size-m", str(size), "--photos", "100",
                        "--fov-photos", "0", "--out", str(tmp / "world")], check=True, capture_output=True)
        ortho = sorted((tmp / "world").glob("ortho*.tif"))
        photos = sorted(p for p in (tmp / "world").rglob("*.jpg"))[:100]
        from saig_core import build_model, save_checkpoint

        saig_s = save_checkpoint(build_model("saig_s"), tmp / "saig_s_random.pt")
        models = {"demo model (models/demo.pt, trained)": (REPO / "models" / "demo.pt", ortho),
                  "SAIG-S, random weights": (saig_s, [crop(ortho[0], tmp / "crop.tif", crop_m)])}
        for name, (ckpt, rasters) in models.items():
            x, seconds = build_index(rasters, ckpt, tmp / f"idx-{len(figures)}")
            q = ground_queries(tmp / f"idx-{len(figures)}", photos)
            figures[name] = {"chips": len(x), "dim": int(x.shape[1]), "index_build_s": round(seconds, 1),
                             "queries": len(q), "spectrum": spectrum(x), "index_kinds": kinds(x, q, tmp)}
            print(name, figures[name], file=sys.stderr, flush=True)
    demo = figures["demo model (models/demo.pt, trained)"]["index_kinds"]
    best = next(r for r in demo if r["index"].startswith("PCA") and r["rerank"])
    run.goal("pcasq 10-recall@10 on the demo model's descriptors (re-ranked)", best["recall_10_at_10"], ">=", 0.95)
    run.note("SAIG-S has random weights here: its spectrum shows what the architecture gives before training; "
             "its recall figures compare index kinds, not models.")
    run.note("Queries are the world's 360-degree panoramas through each model's ground branch.")
    rnd = figures["SAIG-S, random weights"]["spectrum"]
    if rnd["mean_cosine_random_pairs"] > 0.99:
        run.note(f"SAIG-S with random weights maps every chip to nearly the same descriptor (mean cosine of random "
                 f"pairs {rnd['mean_cosine_random_pairs']}, participation ratio {rnd['participation_ratio']}): its "
                 "neighbours differ by less than float16 resolution, so its recall figures are ties, not quality.")
    run.write(figures, args.results_dir)


if __name__ == "__main__":
    main()
