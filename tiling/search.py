"""FAISS indexes over L2-normalised descriptors: inner product = cosine similarity.

Kinds (``--index-type``):

* ``flat``: exact ``IndexFlatIP``; 4 x D bytes per chip. Used by ``auto`` up to :data:`FLAT_MAX` chips
  (at 200,000 x 384-d: 307 MB, exact search in a few tens of ms on 2 cores).
* ``pcasq``: ``PCAR{R},IVF{nlist},SQ8``: a PCA rotation to R = min(96, D) dimensions, an inverted file
  with ``nlist`` about 4 sqrt(count) (a power of two) probed in 6 sqrt(nlist) of its lists, and 8-bit
  scalar codes: R + 8 (the id an IVF list stores) bytes per chip, 104 at 384-d and 3072-d. ``auto``
  above FLAT_MAX. It relies on descriptors having most of their variance in R dimensions, as trained
  embeddings do; re-ranking (below) removes the ceiling the PCA puts on its recall.
* ``ivfpq``: ``IVF{nlist},PQ{M}`` (8-bit codes, M the largest divisor of D not above min(120, D/2)):
  the same budget, lower recall in ``benchmarks/search.py``; kept selectable.

Every kind answers :func:`search` (optionally restricted to a subset of ids) and :func:`scores_for`
(similarity of a query to chosen chips) so heatmaps and candidate lists agree.

**Re-ranking.** A compressed index keeps the exact descriptors beside it (:class:`VectorStore`,
``vectors.f16``: float16 in faiss-id order, read from disk by ``pread``, never loaded whole): the index
proposes :data:`RERANK` candidates, their exact similarities decide the top k, and every score
reported (candidates and heatmaps) is that exact cosine (to float16 precision).

**On-disk inverted lists.** Past :data:`ONDISK_MIN` chips (or when asked), a compressed index is built
the out-of-RAM way FAISS recommends: trained once on a sample spread over all chips, filled shard by
shard, then merged into ``index.ivfdata`` (``OnDiskInvertedLists``, memory-mapped at search time), so a
query touches only the lists it probes and the process holds only the coarse quantizer and the PCA.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

FLAT_MAX = 200_000
ONDISK_MIN = 2_000_000  # ``auto`` storage: inverted lists on disk from this many chips
RERANK = 64  # candidates the compressed index proposes for exact re-ranking (at least k)
SHARD_ROWS = 1 << 20  # vectors per shard index when building on-disk lists
VECTORS_FILE, IVFDATA_FILE = "vectors.f16", "index.ivfdata"
NPROBE_PER_SQRT_NLIST = 6  # probe 6 sqrt(nlist) lists (1M chips: 384 of 4,096; 10M: 768 of 16,384); a fixed
# fraction probes too few lists of a small index and too many of a big one (1M at nlist / 8: 10-recall@10 0.98)
KINDS = ("flat", "pcasq", "ivfpq")
INDEX_KINDS = ("auto", *KINDS)  # what ``--index-type`` accepts
PCA_DIM = 96
HNSW_QUANTIZER_MIN = 8192  # from this many lists the coarse quantizer is an HNSW graph over the centroids, so
# assigning a vector to its list costs ~log(nlist) instead of nlist dot products (10M chips: 16,384 lists)
KMEANS_NITER = 10  # k-means iterations of the coarse quantizer (FAISS: 25): its cost grows as N x nlist


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
    nlist = int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(max(count, 1)))))))
    ivf = f"IVF{nlist}" + ("_HNSW32" if nlist >= HNSW_QUANTIZER_MIN else "")
    if kind == "pcasq":
        return f"PCA{min(PCA_DIM, dim)}(uncentred),{ivf},SQ8"
    m = max(d for d in range(1, min(120, max(1, dim // 2)) + 1) if dim % d == 0)
    return f"{ivf},PQ{m}"


def nlist_of(factory: str) -> int:
    """The number of inverted lists in a factory string (0 for Flat)."""
    found = re.search(r"IVF(\d+)", factory)
    return int(found.group(1)) if found else 0


def make_index(kind: str, dim: int, count: int, sample: np.ndarray | None = None):
    """An empty (untrained) index of ``kind``; ``pcasq`` needs a training ``sample`` for its rotation."""
    import faiss

    factory = factory_string(kind, dim, count)
    if kind == "pcasq":
        if sample is None:
            raise ValueError("a pcasq index needs a training sample")
        reduced = min(PCA_DIM, dim)
        inner = faiss.index_factory(reduced, factory.split(",", 1)[1], faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(inner).cp.niter = KMEANS_NITER
        return faiss.IndexPreTransform(uncentred_pca(sample, reduced), inner)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = KMEANS_NITER
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
    nlist = nlist_of(factory_string(kind, dim, count))
    return max(40 * nlist, 20_000)


def training_sample(kind: str, dim: int, count: int, chunks: Callable[[], Iterable[np.ndarray]]) -> np.ndarray | None:
    """The training vectors of a kind (None for flat): every ``count // want``-th vector, so the sample
    spreads over the whole area instead of its first rows (one pass over ``chunks()``)."""
    want = train_size(kind, dim, count)
    if not want:
        return None
    step = max(1, count // want)
    parts, have, seen = [], 0, 0
    for block in chunks():
        first = (-seen) % step  # the first row of this block on the sampling lattice
        parts.append(np.asarray(block[first::step][: want - have], dtype=np.float32))
        have += len(parts[-1])
        seen += len(block)
        if have >= want:
            break
    return np.ascontiguousarray(np.concatenate(parts))


def build(kind: str, dim: int, count: int, chunks: Callable[[], Iterable[np.ndarray]]):
    """An index of ``kind`` held in memory, filled from ``chunks()`` (called twice for compressed kinds:
    training sample, then add)."""
    sample = training_sample(kind, dim, count, chunks)
    index = make_index(kind, dim, count, sample)
    if sample is not None:
        index.train(sample)
    for block in chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    set_search_defaults(index)
    return index


def choose_storage(storage: str, kind: str, count: int) -> str:
    """``memory`` or ``disk`` for ``--storage`` (``auto``: disk for compressed kinds from ONDISK_MIN chips)."""
    if storage == "auto":
        return "disk" if kind != "flat" and count >= ONDISK_MIN else "memory"
    if storage not in ("memory", "disk"):
        raise ValueError(f"unknown storage {storage!r}; choose auto, memory or disk")
    if storage == "disk" and kind == "flat":
        raise ValueError("a flat index has no inverted lists to keep on disk; use a compressed --index-type")
    return storage


def write_index_files(folder: str | os.PathLike, kind: str, dim: int, count: int,
                      chunks: Callable[[], Iterable[np.ndarray]], storage: str = "memory",
                      index_file: str = "index.faiss", timings: dict | None = None) -> dict:
    """Build an index of ``kind`` into ``folder`` and return what its metadata records.

    Writes ``index_file`` (each file under a temporary name, then renamed), plus, for compressed kinds,
    ``vectors.f16`` (the exact descriptors for re-ranking) and with ``storage="disk"`` ``index.ivfdata``
    (the inverted lists, built shard by shard and merged on disk). ``timings`` receives the seconds of
    each step (for benchmarks).
    """
    import faiss

    folder = Path(folder)
    files = [index_file]
    timings = {} if timings is None else timings
    if storage == "disk":  # the vectors are written in the same pass as the shards are filled
        index = _build_on_disk(folder, kind, dim, count, chunks, timings)
        files += [VECTORS_FILE, IVFDATA_FILE]
    else:
        t = time.perf_counter()
        if kind != "flat":
            VectorStore.write(folder / VECTORS_FILE, count, dim, chunks)
            files.append(VECTORS_FILE)
        timings["vectors_s"] = time.perf_counter() - t
        t = time.perf_counter()
        index = build(kind, dim, count, chunks)
        timings["build_s"] = time.perf_counter() - t
    tmp = folder / f".{index_file}.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, folder / index_file)
    return {"kind": kind, "factory": factory_string(kind, dim, count), "metric": "inner_product",
            "nprobe": default_nprobe(index), "storage": storage, "rerank": RERANK if kind != "flat" else 0,
            "vectors": {"file": VECTORS_FILE, "dtype": "float16", "shape": [count, dim]} if kind != "flat" else None,
            "files": files}


def _build_on_disk(folder: Path, kind: str, dim: int, count: int, chunks: Callable[[], Iterable[np.ndarray]],
                   timings: dict):
    """Train once, fill shard indexes of SHARD_ROWS vectors each, merge them into ``index.ivfdata``."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    t = time.perf_counter()
    sample = training_sample(kind, dim, count, chunks)
    timings["sample_s"] = time.perf_counter() - t
    trained = make_index(kind, dim, count, sample)
    trained.train(sample)
    timings["train_s"] = time.perf_counter() - t - timings["sample_s"]
    t = time.perf_counter()
    shard_dir = folder / ".ivf-shards"
    shutil.rmtree(shard_dir, ignore_errors=True)
    shard_dir.mkdir(parents=True)
    try:
        names = []

        def add_shards(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            """Fill and write one shard index per SHARD_ROWS vectors, passing the vectors on."""
            for k, (first, block) in enumerate(_regroup(blocks, SHARD_ROWS)):
                shard = faiss.clone_index(trained)
                shard.add_with_ids(block, np.arange(first, first + len(block), dtype=np.int64))
                names.append(str(shard_dir / f"shard-{k:05d}.faiss"))
                faiss.write_index(shard, names[-1])
                del shard
                yield block

        VectorStore.write(folder / VECTORS_FILE, count, dim, lambda: add_shards(chunks()))
        timings["add_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ivfdata = folder / IVFDATA_FILE
        ivfdata.unlink(missing_ok=True)
        with _c_stdout_to_stderr():
            merge_ondisk(trained, names, str(ivfdata))
        timings["merge_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)
    set_search_defaults(trained)
    return trained


def _regroup(blocks: Iterable[np.ndarray], rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first id, float32 block of ``rows`` vectors, the last shorter) from blocks of any size."""
    pending: list[np.ndarray] = []
    have = first = 0
    for block in blocks:
        pending.append(np.asarray(block, dtype=np.float32))
        have += len(block)
        while have >= rows:
            joined = np.concatenate(pending)
            yield first, np.ascontiguousarray(joined[:rows])
            first += rows
            pending, have = [joined[rows:]], have - rows
    if have:
        yield first, np.ascontiguousarray(np.concatenate(pending))


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """FAISS's C++ code prints notes (``resizing ...``, ``IO_FLAG_ONDISK_SAME_DIR: ...``) on file descriptor 1,
    where the CLI writes JSON lines: send them to stderr while it runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def read_index(path: str | os.PathLike):
    """A FAISS index file; on-disk inverted lists are memory-mapped from ``index.ivfdata`` beside it
    (wherever the folder has been moved), never read into memory."""
    import faiss

    with _c_stdout_to_stderr():
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    set_search_defaults(index)
    return index


def default_nprobe(index) -> int | None:
    """Lists probed per query: :data:`NPROBE_PER_SQRT_NLIST` sqrt(nlist), all of them for under 36 lists
    (re-ranked 10-recall@10 0.96 at 1M x 384 in benchmarks/search.py; 10M in search_scale.py)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else _ivf_nprobe(index, ivf)


def _ivf_nprobe(index, ivf) -> int:
    """:func:`default_nprobe` of an index whose inverted file is ``ivf``."""
    return max(1, min(ivf.nlist, math.ceil(NPROBE_PER_SQRT_NLIST * math.sqrt(ivf.nlist))))


def set_search_defaults(index, nprobe: int | None = None) -> None:
    """Search-time knobs of compressed kinds: ``nprobe`` (default :func:`default_nprobe`) and, for an HNSW
    coarse quantizer, its ``efSearch`` raised to at least ``nprobe``: the quantizer's graph search returns no
    more lists than its ``efSearch`` (16 unless set), so without it a larger ``nprobe`` probes no more lists
    (measured: recall stuck at 0.66 from nprobe 512 to 4096 on 10M chips)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe or _ivf_nprobe(index, ivf), ivf.nlist)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = max(int(quantizer.hnsw.efSearch), int(ivf.nprobe))


class VectorStore:
    """Exact descriptors for re-ranking: float16 rows in faiss-id order in one raw file.

    Rows are read with ``os.pread`` (contiguous ids in one call), not memory-mapped, so the process holds
    only the rows a query asks for and the file stays in the page cache the kernel manages.
    """

    DTYPE = np.dtype("<f2")

    def __init__(self, path: str | os.PathLike, count: int, dim: int) -> None:
        self.path, self.count, self.dim = Path(path), int(count), int(dim)
        self.row_bytes = self.dim * self.DTYPE.itemsize
        size = self.path.stat().st_size
        if size != self.count * self.row_bytes:
            raise ValueError(f"{self.path}: {size} bytes, expected {self.count} x {self.dim} float16 "
                             f"({self.count * self.row_bytes} bytes): truncated or from another index")
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)  # closed when collected, if not before

    def close(self) -> None:
        """Close the file."""
        self._closer()
        self._fd = None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, ids: np.ndarray, gap: int = 4) -> np.ndarray:
        """float32 rows of ``ids`` (any order, repeats allowed); runs of ids at most ``gap`` apart are one read."""
        if self._fd is None:
            raise ValueError(f"{self.path}: the vector store is closed")
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((ids.size, self.dim), np.float32)
        if ids.size == 0:
            return out
        if ids.min() < 0 or ids.max() >= self.count:
            raise IndexError(f"{self.path}: id out of range 0..{self.count - 1}")
        uniq, inverse = np.unique(ids, return_inverse=True)
        starts = np.flatnonzero(np.diff(uniq, prepend=-gap - 1) > gap).tolist()
        ends = [*starts[1:], uniq.size]
        rows = np.empty((uniq.size, self.dim), np.float32)
        for a, b in zip(starts, ends, strict=True):
            first, last = int(uniq[a]), int(uniq[b - 1])
            raw = os.pread(self._fd, (last - first + 1) * self.row_bytes, first * self.row_bytes)
            block = np.frombuffer(raw, self.DTYPE).reshape(-1, self.dim)
            rows[a:b] = block if b - a == last - first + 1 else block[uniq[a:b] - first]
        out[:] = rows[inverse.ravel()]
        return out

    @classmethod
    def write(cls, path: str | os.PathLike, count: int, dim: int, chunks: Callable[[], Iterable[np.ndarray]]) -> Path:
        """Write every vector of ``chunks()`` as float16 rows (temporary name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        written = 0
        try:
            with open(tmp, "wb") as f:
                for block in chunks():
                    block = np.asarray(block)
                    if block.ndim != 2 or block.shape[1] != dim:
                        raise ValueError(f"{path}: a block of shape {block.shape}, expected (n, {dim})")
                    f.write(np.ascontiguousarray(block, dtype=cls.DTYPE).tobytes())
                    written += len(block)
                f.flush()
                os.fsync(f.fileno())
            if written != count:
                raise ValueError(f"{path}: {written} vectors written, expected {count}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def search(index, queries: np.ndarray, k: int, subset: np.ndarray | None = None,
           store: VectorStore | None = None, rerank: int = RERANK) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query, best first.

    ``subset`` restricts the search to those ids (exactly, over their stored vectors). With a ``store``
    the index proposes ``max(k, rerank)`` candidates and their exact similarities rank them.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if subset is not None:
        subset = np.asarray(subset, dtype=np.int64)
        k = min(k, subset.size)
        if k == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        scores = scores_for(index, q, subset, store=store)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), subset[order]
    k = min(k, index.ntotal)
    if store is None:
        return index.search(q, k)
    _, cand = index.search(q, min(max(k, rerank), index.ntotal))
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for n, row in enumerate(cand):
        ids = row[row >= 0]
        exact = store.read(ids) @ q[n]
        order = np.lexsort((ids, -exact))[:k]  # best first; ties by id, as the exact search
        out_s[n, : order.size], out_i[n, : order.size] = exact[order], ids[order]
    return out_s, out_i


def scores_for(index, queries: np.ndarray, ids: np.ndarray | None = None, chunk: int = 65536,
               store: VectorStore | None = None) -> np.ndarray:
    """Similarity of each query to each chip in ``ids`` (default all): exact from ``store`` when given,
    else from the index's stored vectors/codes; chunked to bound memory."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.arange(index.ntotal, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    out = np.empty((len(q), ids.size), np.float32)
    for i0 in range(0, ids.size, chunk):
        part = ids[i0:i0 + chunk]
        vecs = store.read(part) if store is not None else reconstruct(index, part)
        out[:, i0:i0 + chunk] = q @ vecs.T
    return out


def reconstruct(index, ids: np.ndarray) -> np.ndarray:
    """Stored vectors (decoded codes for compressed kinds, so scores match the search's)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == ivf.direct_map.NoMap:  # (the stubs lack faiss.DirectMap)
        ivf.make_direct_map()
    return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
