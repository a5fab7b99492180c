"""FAISS indexes over L2-normalised descriptors: inner product = cosine similarity.

Kinds (``--index-type``):

* ``flat``: exact ``IndexFlatIP``; 4 x D bytes per chip. Used by ``auto`` up to :data:`FLAT_MAX` chips
  (at 200,000 x 384-d: 307 MB, exact search in a few tens of ms on 2 cores).
* ``ivfpq``: ``IVF{nlist},PQ{M}`` (inner product, residual encoding, 8-bit codes), with ``M`` the
  largest divisor of D not above min(120, D/2): with the 8-byte id an IVF list stores per chip, at
  most 128 bytes per chip (96 + 8 at 384-d and 3072-d), ``nlist`` about
  sqrt(count) (a power of two), ``nprobe`` :data:`NPROBE`. ``auto`` above FLAT_MAX. Measured in
  ``benchmarks/search.py`` (latency, recall@10 against exact search, bytes per chip).

Every kind answers :func:`search` (optionally restricted to a subset of ids) and :func:`scores_for`
(similarity of a query to every chip, from the stored codes, chunked to bound memory) so heatmaps
and candidate lists agree.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

FLAT_MAX = 200_000
NPROBE = 32
KINDS = ("flat", "ivfpq")


def choose_kind(kind: str, count: int) -> str:
    if kind == "auto":
        return "flat" if count <= FLAT_MAX else "ivfpq"
    if kind not in KINDS:
        raise ValueError(f"unknown index type {kind!r}; choose auto, {', '.join(KINDS)}")
    return kind


def factory_string(kind: str, dim: int, count: int) -> str:
    """The FAISS factory string of an index kind for ``count`` vectors of ``dim``."""
    if kind == "flat":
        return "Flat"
    nlist = int(min(65536, max(16, 2 ** round(math.log2(math.sqrt(max(count, 1)))))))
    m = max(d for d in range(1, min(120, max(1, dim // 2)) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def make_index(kind: str, dim: int, count: int):
    import faiss

    index = faiss.index_factory(dim, factory_string(kind, dim, count), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if ivf is not None and hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # minutes of training for a Hamming filter search never uses
        ivf.pq.cp.max_points_per_centroid = 64  # 16k points per sub-quantizer: enough, and 4x faster
        ivf.pq.cp.niter = 15
    return index


def train_size(index) -> int:
    """How many training vectors a kind wants (0 for flat)."""
    import faiss

    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 256
    return max(50 * nlist, 20_000)


def build(kind: str, dim: int, count: int, chunks: Callable[[], Iterable[np.ndarray]]):
    """An index of ``kind`` filled from ``chunks()`` (called once or twice: training sample, then add)."""
    index = make_index(kind, dim, count)
    want = train_size(index)
    if want:
        sample, have = [], 0
        for block in chunks():
            sample.append(block[: want - have])
            have += len(sample[-1])
            if have >= want:
                break
        index.train(np.ascontiguousarray(np.concatenate(sample), dtype=np.float32))
    for block in chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    set_search_defaults(index)
    return index


def set_search_defaults(index, nprobe: int | None = None) -> None:
    """Search-time knobs of compressed kinds (the default measured in benchmarks/search.py)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe or NPROBE, ivf.nlist)


def search(index, queries: np.ndarray, k: int, subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query; ``subset`` restricts the search to those ids (exactly)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if subset is not None:
        subset = np.asarray(subset, dtype=np.int64)
        k = min(k, subset.size)
        if k == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        scores = scores_for(index, q, subset)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), subset[order]
    k = min(k, index.ntotal)
    scores, ids = index.search(q, k)
    return scores, ids


def scores_for(index, queries: np.ndarray, ids: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    """Similarity of each query to each chip in ``ids`` (default all), from the index's stored vectors/codes."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.arange(index.ntotal, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    out = np.empty((len(q), ids.size), np.float32)
    for i0 in range(0, ids.size, chunk):
        vecs = reconstruct(index, ids[i0:i0 + chunk])
        out[:, i0:i0 + chunk] = q @ vecs.T
    return out


def reconstruct(index, ids: np.ndarray) -> np.ndarray:
    """Stored vectors (decoded codes for compressed kinds, so scores match the search's)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
