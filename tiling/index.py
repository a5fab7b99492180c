"""``saig index build`` / ``saig index info``: the self-describing, atomic, resumable reference index.

An index is a folder::

    INDEX_DIR/index.faiss     FAISS index over L2-normalised aerial descriptors (inner product)
    INDEX_DIR/chips.gpkg      the chip manifest (layer "chips"; faiss_id = row in the index); big
                              indexes (on-disk storage) hold it as GeoParquet parts, chips.parquet/
    INDEX_DIR/vectors.f16     compressed kinds: the exact descriptors (float16, faiss-id order) for re-ranking
    INDEX_DIR/index.ivfdata   on-disk storage: the inverted lists, memory-mapped when searching
    INDEX_DIR/metadata.json   model fingerprint/config/checkpoint, chip parameters, grid CRS, counts,
                              software version, sources, and the sha256 of every other file

Atomic: everything is built in a hidden sibling ``.INDEX_DIR.partial`` and renamed into place with
``os.replace`` only when complete. Resumable: encoded chips are committed in shards
(``shards/shard-NNNNN.npz``, each written to a temporary name and renamed), each recording the
position in the run's deterministic candidate order up to which it is complete; a restarted build
with the same inputs, parameters and model continues after the last committed shard, so no chip is
lost or duplicated whatever the moment it was killed (kill -9 included). A partial build made with
other inputs or parameters is discarded (and said so).

The chip size defaults to the checkpoint's recorded aerial footprint (warned when a given one is
more than 25 % off it); the encoder's device kind and precision are recorded in ``build.json`` and
``metadata.json`` and a resume that would mix them is refused; the output is locked for the run
(:mod:`tiling.lock`).

A checkpoint whose metadata says it was trained on polar-transformed aerials
(``ground_input.polar_aerial``) gets chips cut at twice its aerial input size, then
polar-transformed to it, as in training.

Reading/resampling runs in a background thread that prepares whole batches while the encoder
works on the previous one (a bounded queue of :data:`PREFETCH` batches).
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from saig_core.version import __version__
from tiling import reference, search
from tiling.chips import ChipParams, ChipPlanner, NoChipError, RasterError, iter_chips
from tiling.cluster import RAY_DIR
from tiling.manifest import chip_records
from tiling.plan import planned_run, report_raster_error

FORMAT = "saig-index"
FORMAT_VERSION = 1
PREFETCH = 3
INDEX_FILE, MANIFEST_FILE, METADATA_FILE = "index.faiss", "chips.gpkg", "metadata.json"


class IndexFolderError(SaigError, ValueError):
    """An index folder that is missing, incomplete, corrupt or inconsistent (message names the file)."""

    def __init__(self, message: str, filename: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.filename = str(filename) if filename is not None else None


@dataclass
class BuildOptions:
    """How ``saig index build`` encodes: the checkpoint, device, batch size, FAISS index type, whether to
    replace an existing output, and the shard size (how much work a killed build can lose)."""

    checkpoint: str
    device: str = "auto"
    precision: str = "auto"  # the encoder's arithmetic (saig_core.runtime.device.resolve_precision)
    batch_size: int = 32
    index_type: str = "auto"
    storage: str = "auto"  # auto | memory | disk: where the inverted lists live (search.choose_storage)
    ray: str | None = None  # encode on a Ray cluster: its address, or "local" (tiling.cluster)
    overwrite: bool = False
    shard_chips: int = 1024  # chips per committed shard: the granularity of resume
    read_workers: int = 1  # processes reading chips while this one encodes (tiling.chips.iter_chips)


@dataclass
class BuildResult:
    """What ``saig index build`` produced: the index folder, its chip count, grid CRS and model
    fingerprint, and the rasters that failed."""

    index: Path
    count: int
    crs: str
    fingerprint: str
    failed: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (the checksums recorded in an index's metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _partial_key(work: Path) -> str | None:
    """The run key of a partial build folder (from its journal, or its metadata once complete)."""
    for name in ("build.json", METADATA_FILE):
        try:
            return json.loads((work / name).read_text())["build_key" if name == METADATA_FILE else "key"]
        except (OSError, ValueError, KeyError):
            continue
    return None


def _run_key(planner: ChipPlanner, params: ChipParams, fingerprint: str) -> str:
    """Identity of a build: the same key means a partial build can be resumed."""
    sources = []
    for s in planner.sources:
        st = s.path.stat()
        sources.append([str(s.path.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"sources": sources, "params": params.to_dict(), "fingerprint": fingerprint,
                       "grid": planner.grid.crs_string}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Progress:
    """What committed shards hold: the resume state."""

    shards: list[Path] = field(default_factory=list)
    next_seq: int = 0
    count: int = 0
    skipped: int = 0
    failed_sources: set = field(default_factory=set)


def _load_progress(shard_dir: Path) -> _Progress:
    prog = _Progress()
    for path in sorted(shard_dir.glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            records = json.loads(str(z["records"]))
            prog.next_seq = int(z["next_seq"])
            prog.skipped += int(z["skipped"])
            prog.failed_sources |= set(int(v) for v in z["failed_sources"])
        prog.count += len(records)
        prog.shards.append(path)
    return prog


def _write_shard(shard_dir: Path, number: int, desc: np.ndarray, records: list[dict], next_seq: int,
                 skipped: int, failed_sources: set[int]) -> Path:
    path = shard_dir / f"shard-{number:05d}.npz"
    tmp = shard_dir / f".shard-{number:05d}.tmp-{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, descriptors=desc.astype(np.float32), records=np.array(json.dumps(records)),
                 next_seq=np.array(next_seq), skipped=np.array(skipped),
                 failed_sources=np.array(sorted(failed_sources), dtype=np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _reader_thread(planner: ChipPlanner, start_seq: int, batch_size: int, workers: int,
                   out: queue.Queue, stop: threading.Event) -> None:
    """Produce ("batch", chips, uint8 (B,H,W,3), next_seq, skipped), ("source_error", e, k), ("end", skipped)."""
    skipped = 0

    def on_skip(n: int) -> None:
        nonlocal skipped
        skipped += n

    def on_source_error(e: RasterError, k: int) -> None:
        out.put(("source_error", e, k))

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        chips, arrays = [], []
        for chip, rgb in iter_chips(planner, None, start_seq, None, on_skip, on_source_error, workers=workers):
            chips.append(chip)
            arrays.append(rgb)
            if len(chips) == batch_size:
                if not put(("batch", chips, np.stack(arrays), chips[-1].seq + 1, skipped)):
                    return
                chips, arrays, skipped = [], [], 0
        if chips:
            put(("batch", chips, np.stack(arrays), chips[-1].seq + 1, skipped))
            skipped = 0
        put(("end", skipped))
    except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises
        put(("exception", e))


FOOTPRINT_TOLERANCE = 0.25  # a chip size this far from the model's recorded aerial footprint is warned about
DEFAULT_STRIDE_FRACTION = 0.25  # stride = a quarter of the chip size when not given (as the demo: 64 m / 16 m)


def chip_geometry(chip_size_m: float | None, stride_m: float | None, footprint_m: float | None,
                  checkpoint: str, reporter: Reporter) -> tuple[float, float]:
    """The chip size and stride of a build: the given ones, else the checkpoint's recorded aerial footprint
    and a quarter of the chip size; a chip size more than 25 % off the footprint is warned about."""
    if chip_size_m is None:
        if footprint_m is None:
            raise SaigError(f"{checkpoint} does not record the aerial footprint it was trained on; "
                            "pass --chip-size-m (the ground metres one aerial training image spanned)")
        chip_size_m = footprint_m
        reporter.log(f"chip size {chip_size_m:g} m: the aerial footprint recorded in {checkpoint}")
    elif footprint_m is not None and abs(chip_size_m - footprint_m) > FOOTPRINT_TOLERANCE * footprint_m:
        reporter.log(f"--chip-size-m {chip_size_m:g} differs by {abs(chip_size_m / footprint_m - 1):.0%} from the "
                     f"{footprint_m:g} m aerial footprint {checkpoint} was trained on: chips will look "
                     "zoomed in or out to the model and retrieval suffers", "warning")
    if stride_m is None:
        stride_m = chip_size_m * DEFAULT_STRIDE_FRACTION
    return chip_size_m, stride_m


def _encoder_record(encoder) -> dict:
    """What a build's descriptors depend on besides the model: the device kind and the precision."""
    from saig_core.runtime.device import describe_device

    return {"device": encoder.device.type, "device_name": describe_device(encoder.device),
            "precision": encoder.precision}


def _check_resume_encoder(work: Path, state_file: Path, record: dict) -> None:
    """Refuse to resume a partial build encoded on another device kind or at another precision."""
    try:
        before = json.loads(state_file.read_text()).get("encoder")
    except (OSError, ValueError):
        return
    if not before or not any(work.joinpath("shards").glob("shard-*.npz")):
        return
    if (before["device"], before["precision"]) != (record["device"], record["precision"]):
        raise SaigError(
            f"{work}: this partial build was encoded on {before['device']} at {before['precision']}; this run "
            f"would encode on {record['device']} at {record['precision']} and mix descriptors of both in one "
            f"index. Resume with --device {before['device']} --precision {before['precision']}, or delete {work} "
            "to start again")


def build_index(paths: list[str], chip_size_m: float | None, stride_m: float | None, out: str | os.PathLike,
                opts: BuildOptions, reporter: Reporter, chip_kwargs: dict | None = None) -> BuildResult:
    """Build (or resume building) an index folder; see the module docstring.

    ``chip_size_m`` None: the checkpoint's recorded aerial footprint; ``stride_m`` None: a quarter of the
    chip size. The output is locked for the run (:mod:`tiling.lock`).
    """
    from tiling.lock import output_lock

    out = Path(out)
    empty_dir = out.is_dir() and not any(out.iterdir())  # e.g. made by a file dialog: fine to fill
    if out.exists() and not empty_dir and not opts.overwrite:
        raise SaigError(f"{out} already exists; pass --overwrite to replace it")
    if opts.batch_size < 1 or opts.shard_chips < 1:
        raise SaigError("--batch-size and the shard size must be at least 1")
    with output_lock(out, "saig index build"):
        return _build_locked(paths, chip_size_m, stride_m, out, opts, reporter, chip_kwargs)


def _build_locked(paths: list[str], chip_size_m: float | None, stride_m: float | None, out: Path,
                  opts: BuildOptions, reporter: Reporter, chip_kwargs: dict | None) -> BuildResult:
    from saig_core.runtime.device import describe_device, resolve_device
    from saig_core.runtime.encode import Encoder
    from saig_core.weights.checkpoint import aerial_footprint_m, load_checkpoint, model_fingerprint, read_checkpoint

    device = resolve_device(opts.device)
    model = load_checkpoint(opts.checkpoint)
    fingerprint = model_fingerprint(model)
    encoder = Encoder(model, device=device, precision=opts.precision)
    encoder_record = _encoder_record(encoder)
    reporter.log(f"model {model.cfg.preset} ({model.descriptor_dim}-d), fingerprint {fingerprint[:16]}, "
                 f"encoding on {describe_device(device)} at {encoder.precision}")
    ckpt_meta = read_checkpoint(opts.checkpoint).get("metadata", {}) or {}
    chip_size_m, stride_m = chip_geometry(chip_size_m, stride_m, aerial_footprint_m(ckpt_meta), opts.checkpoint,
                                          reporter)
    # a model trained on polar-transformed aerials gets chips cut at twice its input, then polar-transformed
    polar = bool((ckpt_meta.get("ground_input") or {}).get("polar_aerial"))
    aerial_h, aerial_w = model.cfg.aerial_size
    aerial = (aerial_h, aerial_w)
    chip_px = (2 * aerial[0], 2 * aerial[0]) if polar else aerial
    params = ChipParams(chip_size_m, stride_m, out_size=chip_px, **(chip_kwargs or {}))
    failed: list[str] = []
    with planned_run(paths, params, reporter, failed) as planner:
        key = _run_key(planner, params, fingerprint)
        work = out.with_name(f".{out.name}.partial")
        shard_dir = work / "shards"
        state_file = work / "build.json"
        if work.exists() and _partial_key(work) != key:
            reporter.log(f"discarding {work}: a partial build with other inputs or parameters", "warning")
            shutil.rmtree(work)
        if not (work / METADATA_FILE).exists():
            shard_dir.mkdir(parents=True, exist_ok=True)
            _check_resume_encoder(work, state_file, encoder_record)
            _atomic_write_bytes(state_file, json.dumps({"key": key, "encoder": encoder_record}).encode())
            prog = _load_progress(shard_dir)
            if prog.shards:
                reporter.log(f"resuming {work}: {prog.count} chips already encoded in {len(prog.shards)} shard(s)")
            encode = _encode
            if opts.ray is not None:
                from tiling.cluster import encode_on_ray

                encode = encode_on_ray
            encode(planner, encoder, prog, shard_dir, opts, reporter, failed, aerial if polar else None)
            _finalise(work, planner, params, model, fingerprint, opts, reporter, polar, key, encoder_record)
        for journal in (shard_dir, work / RAY_DIR):  # complete (now or by a killed run): drop the journals
            shutil.rmtree(journal, ignore_errors=True)
        state_file.unlink(missing_ok=True)
        meta = json.loads((work / METADATA_FILE).read_text())
        for f in meta["failed_sources"]:
            if f not in failed:
                failed.append(f)
        _publish(work, out)
        return BuildResult(out, meta["count"], meta["crs"], fingerprint, failed)


def encode_chips(encoder, batch: np.ndarray, polar_size: tuple[int, int] | None) -> np.ndarray:
    """Descriptors of a batch of chips (B, H, W, 3) uint8: normalised as in training, polar-transformed to
    ``polar_size`` when the model was trained on polar aerials."""
    import torch

    from saig_core.data.preprocess import MEAN, STD
    from saig_core.data.transforms import polar_transform

    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).sub_(MEAN).div_(STD)
    if polar_size is not None:
        x = polar_transform(x, polar_size)
    return encoder.encode("aerial", x).numpy()


def _encode(planner, encoder, prog: _Progress, shard_dir: Path, opts: BuildOptions, reporter: Reporter,
            failed: list[str], polar_size: tuple[int, int] | None) -> None:
    """Encode every remaining chip, committing a shard every ``opts.shard_chips`` chips and at the end."""
    total = planner.count()
    q: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()
    thread = threading.Thread(target=_reader_thread, daemon=True,
                              args=(planner, prog.next_seq, opts.batch_size, opts.read_workers, q, stop))
    pending_desc: list[np.ndarray] = []
    pending_rec: list[dict] = []
    pending_skipped = 0
    number = len(prog.shards)
    seq = prog.next_seq
    on_error = report_raster_error(reporter, failed)

    def commit() -> None:
        nonlocal pending_desc, pending_rec, pending_skipped, number
        desc = np.concatenate(pending_desc) if pending_desc else np.zeros((0, encoder.descriptor_dim), np.float32)
        _write_shard(shard_dir, number, desc, pending_rec, seq, pending_skipped, prog.failed_sources)
        number += 1
        pending_desc, pending_rec, pending_skipped = [], [], 0

    thread.start()
    try:
        with reporter.task("index", total) as task:
            task.update(seq)
            while True:
                item = q.get()
                kind = item[0]
                if kind == "exception":
                    raise item[1]
                if kind == "source_error":
                    on_error(item[1])
                    prog.failed_sources.add(item[2])
                    continue
                if kind == "end":
                    pending_skipped += item[1]
                    task.update(total - seq)
                    seq = total
                    commit()
                    break
                _, chips, batch, next_seq, skipped = item
                d = encode_chips(encoder, batch, polar_size)
                pending_desc.append(d)
                pending_rec.extend(chip_records(chips))
                pending_skipped += skipped
                task.update(next_seq - seq)
                seq = next_seq
                if len(pending_rec) >= opts.shard_chips:
                    commit()
    finally:
        stop.set()
        thread.join(timeout=10)


def _iter_shards(shard_dir: Path):
    """(descriptors, records) per shard, in run order (one shard in memory at a time)."""
    for path in sorted(shard_dir.glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            desc = z["descriptors"]
            records = json.loads(str(z["records"]))
        yield desc, records


def _shard_summary(shard_dir: Path, sources: list[str]) -> tuple[int, dict[str, int]]:
    """Chip count and chips per source of the shards, checking that cells come once each in run order."""
    count, per_source, last = 0, dict.fromkeys(sources, 0), (-(2 ** 62), -(2 ** 62))
    for _, records in _iter_shards(shard_dir):
        for r in records:
            cell = (r["row"], r["col"])
            if cell <= last:
                raise IndexFolderError(f"{shard_dir}: chip {r['chip_id']} out of run order in the shards (a bug; "
                                       f"delete {shard_dir.parent} and rebuild)", shard_dir)
            last = cell
            per_source[r["source"]] = per_source.get(r["source"], 0) + 1
        count += len(records)
    return count, per_source


def _finalise(work: Path, planner: ChipPlanner, params: ChipParams, model, fingerprint: str,
              opts: BuildOptions, reporter: Reporter, polar: bool, key: str, encoder_record: dict) -> None:
    """FAISS index, manifest and metadata from the committed shards, streamed shard by shard."""
    shard_dir = work / "shards"
    prog = _load_progress(shard_dir)
    failed_sources = sorted(str(planner.sources[k].path) for k in prog.failed_sources)
    count, per_source = _shard_summary(shard_dir, [str(s.path) for s in planner.sources])
    if not count:
        shutil.rmtree(work)
        raise NoChipError(f"no valid chip in {', '.join(str(s.path) for s in planner.sources)}: every candidate "
                          f"chip has less than {params.min_valid:.0%} valid pixels (or the reads failed)")
    kind = search.choose_kind(opts.index_type, count)
    storage = search.choose_storage(opts.storage, kind, count)
    reporter.log(f"building a {kind} FAISS index of {count} chips ({storage} storage)")
    faiss_meta = search.write_index_files(work, kind, model.descriptor_dim, count,
                                          lambda: (d for d, _ in _iter_shards(shard_dir)), storage, INDEX_FILE)
    records = (r for _, recs in _iter_shards(shard_dir) for r in recs)
    files = faiss_meta.pop("files") + reference.write_manifest(records, planner.grid.crs_string, work,
                                                               "parquet" if storage == "disk" else "gpkg")
    grid = planner.grid
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "software_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "count": count, "skipped_chips": prog.skipped, "descriptor_dim": model.descriptor_dim,
        "crs": grid.crs_string,
        "grid": {"kind": grid.kind, "crs": grid.crs_string, "chip_size": grid.chip_size, "stride": grid.stride,
                 "origin": list(grid.origin), "zoom": grid.zoom},
        "chips": {**params.to_dict(), "polar_aerial": polar},
        "model": {"fingerprint": fingerprint, "config": model.cfg.to_dict(),
                  "checkpoint": str(Path(opts.checkpoint).resolve())},
        "encoder": encoder_record,
        "faiss": faiss_meta,
        "sources": [{"path": p, "abs_path": os.path.realpath(p), "chips": n} for p, n in per_source.items()],
        "stretch": [list(band) for band in planner.stretch] if planner.stretch else None,
        "failed_sources": failed_sources,
        "files": {name: sha256_file(work / name) for name in files},
        "file_sizes": {name: (work / name).stat().st_size for name in files},
        "build_key": key,
    }
    _atomic_write_bytes(work / METADATA_FILE, json.dumps(meta, indent=2).encode())  # the build is complete


def _publish(work: Path, out: Path) -> None:
    """Move the finished folder into place; an existing one (``--overwrite``) is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        os.replace(out, old)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def index_info(index_dir: str | os.PathLike, verify: bool = True) -> dict:
    """The index's metadata; with ``verify`` every recorded checksum is checked (error names the file)."""
    index_dir = Path(index_dir)
    meta_path = index_dir / METADATA_FILE
    if not index_dir.is_dir():
        raise IndexFolderError(f"{index_dir}: not an index folder (no such directory)", index_dir)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise IndexFolderError(f"{meta_path}: missing; {index_dir} is not a complete index", meta_path) from None
    except ValueError as e:
        raise IndexFolderError(f"{meta_path}: not valid JSON ({e})", meta_path) from None
    if meta.get("format") != FORMAT:
        raise IndexFolderError(f"{meta_path}: not a SAIG index metadata file", meta_path)
    if verify:
        for name, expected in meta.get("files", {}).items():
            path = index_dir / name
            if not path.is_file():
                raise IndexFolderError(f"{path}: missing (listed in {METADATA_FILE})", path)
            got = sha256_file(path)
            if got != expected:
                raise IndexFolderError(f"{path}: checksum mismatch (expected sha256 {expected[:16]}..., "
                                  f"got {got[:16]}...): the file was modified or is corrupt", path)
        meta["verified"] = True
    meta["path"] = str(index_dir)
    return meta
