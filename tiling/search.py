"""FAISS indexes over L2-normalised descriptors: inner product = cosine similarity.

Kinds (``--index-type``):

* ``flat``: exact ``IndexFlatIP``; 4 x D bytes per chip. Used by ``auto`` up to :data:`FLAT_MAX` chips
  (at 200,000 x 384-d: 307 MB, exact search in a few tens of ms on 2 cores).
* ``pcasq``: ``PCAR{R},IVF{nlist},SQ8``: a PCA rotation to R = min(96, D) dimensions, an inverted file
  with ``nlist`` about sqrt(count) (a power of two) probed in a quarter of its lists, and 8-bit
  scalar codes: R + 8 (the id an IVF list stores) bytes per chip, 104 at 384-d and 3072-d. ``auto``
  above FLAT_MAX. It relies on descriptors having most of their variance in R dimensions, as trained
  embeddings do.
* ``ivfpq``: ``IVF{nlist},PQ{M}`` (8-bit codes, M the largest divisor of D not above min(120, D/2)):
  the same budget, lower recall in ``benchmarks/search.py``; kept selectable.

Every kind answers :func:`search` (optionally restricted to a subset of ids) and :func:`scores_for`
(similarity of a query to every chip, from the stored codes, chunked to bound memory) so heatmaps
and candidate lists agree.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

FLAT_MAX = 200_000
NPROBE = 64
KINDS = ("flat", "pcasq", "ivfpq")
INDEX_KINDS = ("auto", *KINDS)  # what ``--index-type`` accepts
PCA_DIM = 96


def describe_index_kinds() -> str:
    """One sentence on the index kinds, for help texts."""
    return (f"FAISS index: flat (exact) or compressed ({PCA_DIM + 8} bytes/chip); auto = flat up to "
            f"{FLAT_MAX:,} chips, else pcasq")


def choose_kind(kind: str, count: int) -> str:
    """The concrete index kind for ``--index-type`` (``auto``: flat up to FLAT_MAX chips, else pcasq)."""
    if kind == "auto":
        return "flat" if count <= FLAT_MAX else "pcasq"
    if kind not in KINDS:
        raise ValueError(f"unknown index type {kind!r}; choose {', '.join(INDEX_KINDS)}")
    return kind


def factory_string(kind: str, dim: int, count: int) -> str:
    """The FAISS factory string of an index kind for ``count`` vectors of ``dim``."""
    if kind == "flat":
        return "Flat"
    nlist = int(min(65536, max(16, 2 ** round(math.log2(math.sqrt(max(count, 1)))))))
    if kind == "pcasq":
        return f"PCA{min(PCA_DIM, dim)}(uncentred),IVF{nlist},SQ8"
    m = max(d for d in range(1, min(120, max(1, dim // 2)) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def make_index(kind: str, dim: int, count: int, sample: np.ndarray | None = None):
    """An empty (untrained) index of ``kind``; ``pcasq`` needs a training ``sample`` for its rotation."""
    import faiss

    factory = factory_string(kind, dim, count)
    if kind == "pcasq":
        if sample is None:
            raise ValueError("a pcasq index needs a training sample")
        reduced = min(PCA_DIM, dim)
        inner = faiss.index_factory(reduced, factory.split(",", 1)[1], faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexPreTransform(uncentred_pca(sample, reduced), inner)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf) if ivf is not None else None
    # (only an IndexIVFPQ has polysemous training among IVF indexes; the stubs do not declare the flag)
    if isinstance(ivfpq, faiss.IndexIVFPQ) and hasattr(ivfpq, "do_polysemous_training"):
        ivfpq.do_polysemous_training = False  # minutes of training for a Hamming filter search never uses
        ivfpq.pq.cp.max_points_per_centroid = 64  # 16k points per sub-quantizer: enough, and 4x faster
        ivfpq.pq.cp.niter = 15
    return index


def uncentred_pca(sample: np.ndarray, dims: int):
    """An orthonormal projection on the top ``dims`` eigenvectors of E[x x^T] (no mean removal).

    FAISS's PCAMatrix subtracts the mean, which changes inner products (q-m).(x-m) and so the
    ranking; without centring, scores stay (Pq).(Px), the cosine restricted to the kept subspace.
    """
    import faiss

    x = np.asarray(sample, dtype=np.float64)
    _, vecs = np.linalg.eigh(x.T @ x)
    basis = np.ascontiguousarray(vecs[:, ::-1][:, :dims].T, dtype=np.float32)  # (dims, D)
    lt = faiss.LinearTransform(x.shape[1], dims, False)
    faiss.copy_array_to_vector(basis.ravel(), lt.A)
    lt.is_trained = True
    lt.set_is_orthonormal()
    return lt


def train_size(kind: str, dim: int, count: int) -> int:
    """How many training vectors a kind wants (0 for flat)."""
    if kind == "flat":
        return 0
    nlist = int(factory_string(kind, dim, count).split("IVF")[1].split(",")[0])
    return max(50 * nlist, 20_000)


def build(kind: str, dim: int, count: int, chunks: Callable[[], Iterable[np.ndarray]]):
    """An index of ``kind`` filled from ``chunks()`` (called once or twice: training sample, then add)."""
    want = train_size(kind, dim, count)
    sample = None
    if want:
        parts, have = [], 0
        for block in chunks():
            parts.append(block[: want - have])
            have += len(parts[-1])
            if have >= want:
                break
        sample = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    index = make_index(kind, dim, count, sample)
    if sample is not None:
        index.train(sample)
    for block in chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    set_search_defaults(index)
    return index


def default_nprobe(index) -> int | None:
    """Lists probed per query (measured in benchmarks/search.py): a quarter for pcasq, 64 for ivfpq."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else _ivf_nprobe(index, ivf)


def _ivf_nprobe(index, ivf) -> int:
    """:func:`default_nprobe` of an index whose inverted file is ``ivf``."""
    import faiss

    pretransformed = isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)
    return max(1, ivf.nlist // 4) if pretransformed else min(ivf.nlist, NPROBE)


def set_search_defaults(index, nprobe: int | None = None) -> None:
    """Search-time knobs of compressed kinds (``nprobe``; default :func:`default_nprobe`)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe or _ivf_nprobe(index, ivf), ivf.nlist)


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
    if ivf is not None and ivf.direct_map.type == ivf.direct_map.NoMap:  # (the stubs lack faiss.DirectMap)
        ivf.make_direct_map()
    return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
