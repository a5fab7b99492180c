"""Reference-index search speed and accuracy, printed as ONE JSON object on stdout.

For each (count, dim) it compares, in the same run and on the same queries: numpy brute force,
exact FAISS (``IndexFlatIP``) and the compressed kind ``saig index build --index-type ivfpq``
builds: ``pcasq`` (the ``auto`` choice past 200,000 chips) and ``ivfpq``, at several ``nprobe``
values, plus a 4-bit fast-scan PQ for reference. Left out: OPQ (its training took 7 minutes at 200k
vectors on 2 cores for recall below pcasq's) and HNSW (its level-0 graph alone stores 2 x 32 links of
4 bytes, 256 bytes per chip, twice the budget). Reported per index: p50/p90 latency of one top-20 query (single query,
all threads), recall@10 against exact search (10-recall@10, the strict overlap of the two top-10
lists; 1-recall@10, the exact nearest neighbour within the top 10, is printed too), and bytes per chip
(serialized index size / count).

Data: real descriptors of a trained model are not available at 1M scale, so vectors are synthetic
but structured like descriptors: ``normalize(z @ A + 0.25 * e)``, z ~ N(0, I_32) in a 32-d latent
space, A a fixed random (32, D) map, e isotropic noise; queries are fresh draws from the same
distribution. (Isotropic random vectors, where all neighbours are nearly equidistant, would make
any compressed index look useless and no trained encoder produces them.) Vectors are generated and
added in chunks so memory stays at the index size plus one copy of the vectors.

    python benchmarks/search.py                      # 1M x 384 and 100k x 3072 (~10-20 min on 2 cores)
    python benchmarks/search.py --count 200000 --big-count 50000     # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiling import search

LATENT = 32
NOISE = 0.25
K = 20


def make_data(count: int, dim: int, seed: int, chunk: int = 100_000):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)

    def draw(n: int, r: np.random.Generator) -> np.ndarray:
        x = r.normal(size=(n, LATENT)).astype(np.float32) @ basis
        x += NOISE * r.normal(size=(n, dim)).astype(np.float32)  # per coordinate, as the latent part (std 1)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    data = np.empty((count, dim), np.float32)
    for i0 in range(0, count, chunk):
        data[i0:i0 + chunk] = draw(min(chunk, count - i0), np.random.default_rng(seed * 1000 + i0 // chunk + 1))
    queries = draw(200, np.random.default_rng(seed + 99))
    return data, queries


def latencies(fn, queries: np.ndarray) -> tuple[float, float]:
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
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def run_case(count: int, dim: int, variants: bool) -> dict:
    import faiss

    t0 = time.perf_counter()
    data, queries = make_data(count, dim, seed=dim)
    gen_s = time.perf_counter() - t0
    out: dict = {"count": count, "dim": dim, "generate_s": round(gen_s, 1), "indexes": []}

    def brute(q):
        s = q @ data.T
        top = np.argpartition(-s, K, axis=1)[:, :K]
        return top[np.arange(len(q))[:, None], np.argsort(-s[np.arange(len(q))[:, None], top], axis=1)]

    p50, p90 = latencies(brute, queries[:10])
    out["numpy_brute_force"] = {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "bytes_per_chip": 4 * dim}

    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    _, truth = flat.search(queries, K)
    p50, p90 = latencies(lambda q, index=flat: index.search(q, K), queries[:50])
    out["indexes"].append({"name": "Flat (exact)", "p50_ms": round(p50, 2), "p90_ms": round(p90, 2),
                           "recall@10": 1.0, "bytes_per_chip": round(index_bytes(flat) / count, 1)})
    del flat

    def chunks():
        return (data[i:i + 100_000] for i in range(0, count, 100_000))

    def measure(name: str, index, knob: str, values: list[int], build_s: float) -> None:
        size = index_bytes(index) / count
        for v in values:
            if knob == "nprobe":
                faiss.extract_index_ivf(index).nprobe = v
            elif knob == "efSearch":
                faiss.downcast_index(index).hnsw.efSearch = v
            _, found = index.search(queries, K)
            p50, p90 = latencies(lambda q: index.search(q, K), queries)
            out["indexes"].append({"name": name, knob: v, "p50_ms": round(p50, 3), "p90_ms": round(p90, 3),
                                   "recall@10": round(recall_at_10(found, truth), 4),
                                   "1-recall@10": round(nn_recall_at_10(found, truth), 4),
                                   "bytes_per_chip": round(size, 1), "build_s": round(build_s, 1)})
            print(json.dumps(out["indexes"][-1]), file=sys.stderr, flush=True)

    for kind in ("pcasq", "ivfpq"):
        t = time.perf_counter()
        index = search.build(kind, dim, count, chunks)
        nlist = faiss.extract_index_ivf(index).nlist
        default = search.default_nprobe(index)
        probes = sorted({max(1, nlist // 16), max(1, nlist // 8), default, min(nlist, 2 * default)})
        label = search.factory_string(kind, dim, count) + (" (saig auto)" if kind == search.choose_kind("auto", 10 ** 9)
                                                            else f" (--index-type {kind})")
        measure(label, index, "nprobe", probes, time.perf_counter() - t)
        del index
    if variants:
        nlist = int(search.factory_string("ivfpq", dim, count).split(",")[0][3:])
        m = int(search.factory_string("ivfpq", dim, count).split("PQ")[1])
        factory = f"IVF{nlist},PQ{2 * m}x4fs"
        t = time.perf_counter()
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(data[: search.train_size("ivfpq", dim, count)])
        for block in chunks():
            index.add(block)
        measure(factory, index, "nprobe", [64, 128, 256], time.perf_counter() - t)
        del index
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="chips at 384-d")
    ap.add_argument("--big-count", type=int, default=100_000,
                    help="chips at 3072-d (1M x 3072 float32 is 12 GB); 0 skips the case")
    ap.add_argument("--no-variants", action="store_true", help="only the kinds saig builds")
    ap.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    args = ap.parse_args()
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    cases = [run_case(args.count, 384, not args.no_variants)]
    if args.big_count:
        cases.append(run_case(args.big_count, 3072, False))
    print(json.dumps({"benchmark": "search", "k": K, "threads": faiss.omp_get_max_threads(),
                      "load_average": os.getloadavg(), "cases": cases}))


if __name__ == "__main__":
    main()
