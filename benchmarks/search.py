"""Reference-index search speed and accuracy in memory (1M x 384): writes benchmarks/results/search.json.

For each (count, dim) it compares, in the same run and on the same 200 queries: the numpy brute force
(``data @ q.T`` and, for the record, the slower ``q @ data.T``), exact FAISS (``IndexFlatIP``) and the
compressed kinds ``saig index build`` makes, ``pcasq`` (the ``auto`` choice past 200,000 chips) and
``ivfpq``, at several ``nprobe`` values, with and without exact re-ranking of their best 64
candidates (float16 vectors read by row from a file, as ``saig locate`` does). Compressed indexes
search on ONE thread (what ``saig locate`` uses); the brute-force baselines use every core.

Reported per index: p50/p90 latency of one top-20 query, 10-recall@10 against exact search (the
strict overlap of the two top-10 lists), 1-recall@10 (the exact nearest neighbour within the top
10), bytes per chip held in memory (serialized index / count) and on disk (plus the vectors file).

Data: ``normalize(z @ A + 0.25 * e)``, z ~ N(0, I_32) in a 32-d latent space, A a fixed random (32, D)
map, e isotropic noise; queries are fresh draws. Such vectors favour a PCA index by construction:
``benchmarks/descriptors.py`` measures the same kinds on descriptors of real models.

    python benchmarks/search.py              # 1M x 384 and 100k x 3072 (~15-30 min on 2 cores)
    python benchmarks/search.py --quick      # 200k x 384 and 20k x 3072
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import record
from tiling import search

LATENT = 32
NOISE = 0.25
K = 20
QUERIES = 200


def draw(n: int, dim: int, basis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` structured unit vectors (see the module docstring)."""
    x = rng.standard_normal((n, LATENT), dtype=np.float32) @ basis
    x += NOISE * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def basis_for(dim: int, seed: int) -> np.ndarray:
    """The fixed latent-to-descriptor map of a data set."""
    return np.random.default_rng(seed).normal(size=(LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)


def make_data(count: int, dim: int, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(data, queries), generated chunk by chunk (the same chunks whatever the count)."""
    basis = basis_for(dim, seed)
    data = np.empty((count, dim), np.float32)
    for i0 in range(0, count, chunk):
        rng = np.random.default_rng(seed * 1000 + i0 // chunk + 1)
        data[i0:i0 + chunk] = draw(min(chunk, count - i0), dim, basis, rng)
    return data, draw(QUERIES, dim, basis, np.random.default_rng(seed + 99))


def latencies(fn, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p90 in ms of ``fn`` on one query at a time (after one warm-up call)."""
    fn(queries[:1])
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 90) * 1e3)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    """10-recall@10: the share of the exact top 10 found in the index's top 10 (the strict figure)."""
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def nn_recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    """1-recall@10 (FAISS's usual R@10): the share of queries whose exact nearest neighbour is in the top 10."""
    return float(np.mean([t[0] in f[:10] for f, t in zip(found, truth, strict=True)]))


def index_bytes(index) -> int:
    """Serialized size of an in-memory index: what it holds in RAM."""
    import faiss

    return int(faiss.serialize_index(index).size)


def brute_force(data: np.ndarray, queries: np.ndarray, transposed_product: bool = False) -> np.ndarray:
    """Exact top-K ids by a numpy matrix product (``data @ q.T``, or ``q @ data.T``)."""
    s = (queries @ data.T) if transposed_product else (data @ queries.T).T
    top = np.argpartition(-s, K, axis=1)[:, :K]
    rows = np.arange(len(queries))[:, None]
    return top[rows, np.argsort(-s[rows, top], axis=1)]


def measure_kind(kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, store, out: list) -> None:
    """Build one compressed kind and measure it at several nprobe, with and without re-ranking."""
    import faiss

    count, dim = data.shape
    t = time.perf_counter()
    index = search.build(kind, dim, count, lambda: (data[i:i + 100_000] for i in range(0, count, 100_000)))
    build_s = time.perf_counter() - t
    ivf = faiss.extract_index_ivf(index)
    default = search.default_nprobe(index)
    ram = index_bytes(index) / count
    for nprobe in sorted({max(1, ivf.nlist // 32), max(1, ivf.nlist // 16), default, max(1, ivf.nlist // 8),
                          min(ivf.nlist, 2 * default)}):
        search.set_search_defaults(index, nprobe)
        for rerank in (False, True):
            st = store if rerank else None
            _, found = search.search(index, queries, K, store=st)
            p50, p90 = latencies(lambda q, st=st, ix=index: search.search(ix, q, K, store=st), queries)
            out.append({"index": search.factory_string(kind, dim, count), "kind": kind, "nprobe": nprobe,
                        "default": nprobe == default, "rerank": search.RERANK if rerank else 0,
                        "p50_ms": round(p50, 3), "p90_ms": round(p90, 3),
                        "recall_10_at_10": round(recall_at_10(found, truth), 4),
                        "recall_1_at_10": round(nn_recall_at_10(found, truth), 4),
                        "ram_bytes_per_chip": round(ram, 1),
                        "disk_bytes_per_chip": round(ram + (2 * dim if rerank else 0), 1),
                        "build_s": round(build_s, 1)})
            print(out[-1], file=sys.stderr, flush=True)
    del index


def run_case(count: int, dim: int, kinds: tuple[str, ...]) -> dict:
    """Every index of one (count, dim) case."""
    import faiss

    t0 = time.perf_counter()
    data, queries = make_data(count, dim, seed=dim)
    case: dict = {"count": count, "dim": dim, "generate_s": round(time.perf_counter() - t0, 1)}
    rows: list[dict] = []
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    for name, transposed in (("numpy data @ q.T (all cores)", False), ("numpy q @ data.T (all cores)", True)):
        p50, p90 = latencies(lambda q, tr=transposed: brute_force(data, q, tr), queries[:5])
        rows.append({"index": name, "p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "recall_10_at_10": 1.0,
                     "ram_bytes_per_chip": 4 * dim})
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    _, truth = flat.search(queries, K)
    faiss.omp_set_num_threads(1)
    p50, p90 = latencies(lambda q, ix=flat: ix.search(q, K), queries[:20])
    rows.append({"index": "Flat (exact, one thread)", "p50_ms": round(p50, 2), "p90_ms": round(p90, 2),
                 "recall_10_at_10": 1.0, "ram_bytes_per_chip": 4 * dim})
    del flat
    with tempfile.TemporaryDirectory(prefix="saig-bench-search-") as tmp:
        path = search.VectorStore.write(Path(tmp) / "vectors.f16", count, dim,
                                        lambda: (data[i:i + 100_000] for i in range(0, count, 100_000)))
        with search.VectorStore(path, count, dim) as store:
            for kind in kinds:
                measure_kind(kind, data, queries, truth, store, rows)
    case["indexes"] = rows
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k x 384 and 20k x 3072")
    ap.add_argument("--count", type=int, default=None, help="chips at 384-d (default 1M; quick 200k)")
    ap.add_argument("--big-count", type=int, default=None, help="chips at 3072-d (default 100k; quick 20k; 0 skips)")
    record.add_results_arg(ap)
    args = ap.parse_args()
    count = args.count or (200_000 if args.quick else 1_000_000)
    big = args.big_count if args.big_count is not None else (20_000 if args.quick else 100_000)
    run = record.Run("search", "Search in memory", "python benchmarks/search.py" + (" --quick" if args.quick else ""),
                     "quick" if args.quick else "full")
    cases = [run_case(count, 384, ("pcasq", "ivfpq"))]
    if big:
        cases.append(run_case(big, 3072, ("pcasq",)))
    best = next(r for r in cases[0]["indexes"] if r.get("kind") == "pcasq" and r["default"] and r["rerank"])
    scale = f"{count // 1000}k x 384" if count < 1_000_000 else f"{count / 1e6:g}M x 384"
    run.goal(f"pcasq p50, one thread, {scale}", best["p50_ms"], "<=", 5.0, "ms")
    run.goal(f"pcasq 10-recall@10 (re-ranked), {scale}", best["recall_10_at_10"], ">=", 0.95)
    run.goal(f"pcasq bytes per chip in RAM, {scale}", best["ram_bytes_per_chip"], "<=", 128.0, "B")
    brute, slow = cases[0]["indexes"][0]["p50_ms"], cases[0]["indexes"][1]["p50_ms"]
    run.note(f"numpy brute force: data @ q.T is {slow / brute:.1f}x faster than q @ data.T on this machine.")
    run.note("Vectors are synthetic with a 32-d latent structure (module docstring of benchmarks/search.py); "
             "benchmarks/descriptors.py measures real models' descriptors.")
    run.write({f"{c['count']:,} x {c['dim']}": c["indexes"] for c in cases}, args.results_dir)


if __name__ == "__main__":
    main()
