"""Country-scale search: 10M x 384 on disk, writes benchmarks/results/search_scale.json.

Builds, in a folder on disk, an index as ``saig index build --storage disk`` does (``pcasq``: trained on
a sample spread over all vectors, filled shard by shard, merged into on-disk inverted lists; float16
vectors for re-ranking; a GeoParquet manifest of a square block of grid cells), from vectors generated
chunk by chunk (never all in memory: 10M x 384 float32 would be 15 GB), timing every step. Then a
fresh child process opens it as ``saig locate`` does (``tiling.reference.open_index``) and measures,
on 200 fresh queries and one thread: the search with re-ranking at several ``nprobe`` (p50/p90,
10-recall@10 against the exact top 10 over the stored float16 vectors, streamed), the whole per-photo
query with a heatmap window (manifest rows by id and by place), a prior-radius query, and the process's
memory (peak resident set VmHWM; anonymous memory apart from file pages mapped from the index).

Vectors: the synthetic descriptors of benchmarks/search.py (32-d latent structure). Needs free disk
of about 3.2 x count x dim bytes (checked first) and removes everything at the end.

    python benchmarks/search_scale.py                     # 10M x 384 (about an hour on 2 busy cores)
    python benchmarks/search_scale.py --count 1000000     # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import record
from benchmarks.search import QUERIES, basis_for, draw, nn_recall_at_10, recall_at_10
from tiling import reference, search

DIM, K, CHUNK = 384, 20, 100_000
CRS, STRIDE, CHIP = "EPSG:32633", 16.0, 64.0


def chunks_of(count: int, seed: int = DIM):
    """A callable giving the vectors chunk by chunk, the same on every call (regenerated, not stored)."""
    basis = basis_for(DIM, seed)

    def chunks():
        for i0 in range(0, count, CHUNK):
            yield draw(min(CHUNK, count - i0), DIM, basis, np.random.default_rng(seed * 1000 + i0 // CHUNK + 1))
    return chunks


def exact_top(chunks, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k ids of each query over the stored vectors, streamed (a running top-k per chunk)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    first = 0
    for block in chunks():
        s = queries @ block.T
        ids = np.broadcast_to(np.arange(first, first + len(block)), s.shape)
        all_s, all_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1)
        top = np.argpartition(-all_s, k, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        first += len(block)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def manifest_records(count: int):
    """Manifest rows of a square block of grid cells in UTM 33N (row-major: a chip plan's order)."""
    from pyproj import Transformer

    side = int(np.ceil(np.sqrt(count)))
    to_wgs = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    for i0 in range(0, count, CHUNK):
        n = np.arange(i0, min(count, i0 + CHUNK))
        r, c = n // side, n % side
        x, y = 400_000.0 + c * STRIDE + CHIP / 2, 5_400_000.0 - r * STRIDE - CHIP / 2
        lon, lat = to_wgs.transform(x, y)
        for k in range(n.size):
            xk, yk = float(x[k]), float(y[k])
            yield {"chip_id": f"r{r[k]}c{c[k]}", "source": "ortho.tif", "row": int(r[k]), "col": int(c[k]),
                   "win_col_off": 0.0, "win_row_off": 0.0, "win_width": 256.0, "win_height": 256.0, "x": xk, "y": yk,
                   "lon": float(lon[k]), "lat": float(lat[k]), "gsd_m": 0.25, "valid_fraction": 1.0,
                   "minx": xk - CHIP / 2, "miny": yk - CHIP / 2, "maxx": xk + CHIP / 2, "maxy": yk + CHIP / 2}


def build(folder: Path, count: int) -> dict:
    """The index folder, timed step by step."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    chunks = chunks_of(count)
    timings: dict = {}
    meta = search.write_index_files(folder, "pcasq", DIM, count, chunks, "disk", timings=timings)
    t = time.perf_counter()
    files = meta.pop("files") + reference.write_manifest(manifest_records(count), CRS, folder, "parquet")
    timings["manifest_s"] = time.perf_counter() - t
    side = int(np.ceil(np.sqrt(count)))
    (folder / "metadata.json").write_text(json.dumps({
        "format": "saig-index", "count": count, "crs": CRS, "faiss": meta, "files": {},
        "grid": {"kind": "projected", "crs": CRS, "chip_size": CHIP, "stride": STRIDE, "origin": [0.0, 0.0],
                 "zoom": None}}))
    sizes = {name: (folder / name).stat().st_size for name in files}
    queries = draw(QUERIES, DIM, basis_for(DIM, DIM), np.random.default_rng(DIM + 99))
    t = time.perf_counter()
    with search.VectorStore(folder / search.VECTORS_FILE, count, DIM) as store:  # the exact (float16) vectors
        truth = exact_top(lambda: (store.read(np.arange(i, min(count, i + CHUNK))) for i in range(0, count, CHUNK)),
                          queries)
    timings["exact_top10_s"] = time.perf_counter() - t
    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", truth)
    return {"timings_s": {k: round(v, 1) for k, v in timings.items()}, "file_bytes": sizes, "side": side,
            "factory": meta["factory"], "nprobe_default": meta["nprobe"]}


def memory_now() -> dict:
    """This process's resident memory now (MB): anonymous, file-backed (mapped index pages), peak."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def query_child(folder: Path) -> dict:
    """Run in a fresh process: open the index as `saig locate` does and time the queries."""
    import faiss

    faiss.omp_set_num_threads(1)
    queries, truth = np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
    t = time.perf_counter()
    ref = reference.open_index(folder)
    out: dict = {"open_s": round(time.perf_counter() - t, 2), "memory_after_open_mb": memory_now(), "search": []}
    ivf = faiss.extract_index_ivf(ref.faiss)
    default = ivf.nprobe
    for nprobe in sorted({max(1, ivf.nlist // 32), default, max(1, ivf.nlist // 16), min(ivf.nlist, default * 2)}):
        search.set_search_defaults(ref.faiss, nprobe)  # (also the HNSW quantizer's efSearch)
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            _, ids = ref.search(q[None], K)
            times.append(time.perf_counter() - t)
            found.append(ids[0])
        out["search"].append({"nprobe": nprobe, "default": nprobe == default, "rerank": search.RERANK,
                              "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
                              "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 2),
                              "recall_10_at_10": round(recall_at_10(np.array(found), truth), 4),
                              "recall_1_at_10": round(nn_recall_at_10(np.array(found), truth), 4)})
        print(out["search"][-1], file=sys.stderr, flush=True)
    search.set_search_defaults(ref.faiss, default)
    out["query"] = time_queries(ref, queries)
    out["memory_end_mb"] = memory_now()
    return out


def time_queries(ref: reference.Reference, queries: np.ndarray) -> dict:
    """What `saig locate` does per photo: with a heatmap window (no prior), and with a 500 m prior."""
    rng = np.random.default_rng(0)
    rows = {}
    for name, prior in (("no prior, heatmap on the candidates' neighbourhoods", None), ("500 m prior, heatmap", 500.0)):
        times, heat = [], []
        for q in queries[:50]:
            chip = ref.chips_by_id(rng.integers(ref.count, size=1))
            position = (float(chip.lon[0]), float(chip.lat[0]))
            t = time.perf_counter()
            res = reference.query(ref, q[None], K, position, prior, heatmap=True)
            times.append(time.perf_counter() - t)
            heat.append(0 if res.heat_chips is None else len(res.heat_chips))
        rows[name] = {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
                      "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 2),
                      "heatmap_chips_median": int(np.median(heat))}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None, help="where the index is built (default: a temporary folder)")
    ap.add_argument("--query-child", default=None, help=argparse.SUPPRESS)
    record.add_results_arg(ap)
    args = ap.parse_args()
    if args.query_child:
        print(json.dumps(query_child(Path(args.query_child))))
        return
    full = args.count >= 10_000_000
    run = record.Run("search_scale", "Search at country scale (on disk)",
                     "python benchmarks/search_scale.py" + ("" if full else f" --count {args.count}"),
                     "full" if full else "quick")
    parent = Path(args.workdir or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    need = int(3.2 * args.count * DIM)
    free = shutil.disk_usage(parent).free
    if free < need:
        sys.exit(f"error: {parent}: {free / 1e9:.1f} GB free, the benchmark needs about {need / 1e9:.1f} GB")
    folder = Path(tempfile.mkdtemp(prefix="saig-bench-scale-", dir=parent))
    try:
        built = build(folder, args.count)
        child = subprocess.run([sys.executable, __file__, "--query-child", str(folder)], stdout=subprocess.PIPE,
                               text=True, check=True)  # (its stderr shows, so a failure says why)
        queried = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    default = next(r for r in queried["search"] if r["default"])
    n = f"{args.count / 1e6:g}M x {DIM}"
    anon = max(queried["memory_after_open_mb"]["RssAnon"], queried["memory_end_mb"]["RssAnon"])
    run.goal(f"search p50, one thread, {n}", default["p50_ms"], "<=", 10.0, "ms")
    run.goal(f"10-recall@10 (re-ranked), {n}", default["recall_10_at_10"], ">=", 0.95)
    run.goal(f"anonymous resident memory of the query process, {n}", anon, "<=", 1024.0, "MB")
    sizes = built["file_bytes"]
    run.note("Memory: the inverted lists are memory-mapped from index.ivfdata; the pages a query touches count "
             "in the process's resident set as file pages (RssFile), which the kernel drops under memory pressure. "
             "The goal is checked on the anonymous memory the process holds (RssAnon); the peak resident set, file "
             "pages included, is reported too.")
    run.note("Vectors are synthetic (benchmarks/search.py); the manifest is a square block of grid cells.")
    run.write({"count": args.count, "dim": DIM, "factory": built["factory"], "nprobe_default": built["nprobe_default"],
               "bytes_per_chip_on_disk": {k.split("/")[0]: round(v / args.count, 1) for k, v in
                                          _group_sizes(sizes).items()},
               "build_timings_s": built["timings_s"], "search_one_thread": queried["search"],
               "locate_query": queried["query"], "open_s": queried["open_s"],
               "memory_after_open_mb": queried["memory_after_open_mb"], "memory_end_mb": queried["memory_end_mb"]},
              args.results_dir)


def _group_sizes(sizes: dict) -> dict:
    """File sizes with the manifest's parts added up."""
    out: dict = {}
    for name, size in sizes.items():
        key = name.split("/")[0]
        out[key] = out.get(key, 0) + size
    return out


if __name__ == "__main__":
    main()
