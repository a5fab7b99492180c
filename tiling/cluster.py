"""``saig index build ... --ray [ADDRESS]``: the encoding step of an index build on a Ray cluster.

The rest of the build is :func:`tiling.index.build_index`'s (planning, the hidden ``.partial`` folder,
the FAISS index trained on a sample, the manifest, ``metadata.json`` with checksums, publishing), so the
folder is the same as a single-process build's. This module replaces only its encoding loop with a
Ray Data pipeline:

1. the driver splits the chip plan (candidate positions ``0 .. planner.count()``) into ranges of
   ``--shard-size`` candidates; a range whose shard is already committed is not redone (resume);
2. **read tasks** on CPU workers (``map_batches`` of a function, one range per call) re-plan the same
   rasters, cut the range's valid chips and yield them in batches; when a range is read, its task
   writes the range's summary (valid and skipped counts, failed rasters);
3. **encoding actors** (``map_batches`` with a callable class: the model is loaded once per actor; one
   GPU each when the cluster has GPUs, else one CPU each) write each batch's descriptors as a part file;
4. the driver commits each range as soon as its parts add up to its summary (one ``ray/range-*.npz``
   shard, written under a temporary name, then renamed), while the pipeline still runs, so a build
   that fails or is killed keeps every finished range; at the end it lays the ranges out, in plan
   order, as the build's usual shards (each grid cell is one candidate, composited from every raster
   covering it).

Parts and summaries are written in a folder of their own run (``ray/attempt-ID/``): a resumed build
drops every earlier run's uncommitted files and never reads them, so the workers of a killed build,
which Ray stops only some time after their driver died, cannot mix their parts into the new run's.

Every file is written in the index's ``.partial`` folder, which must be on storage all nodes see (a
shared file system), as must the rasters and the checkpoint. Ray itself is an optional extra:
``pip install 'saig-geolocate[ray]'``.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from tiling.chips import Chip, ChipParams, ChipPlanner, ChipReader, RasterError, iter_chips
from tiling.manifest import chip_records

RAY_DIR = "ray"


def _range_name(start: int) -> str:
    return f"range-{start:012d}"


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_range(batch: dict, paths: list[str], params: ChipParams, ray_dir: str, batch_size: int) -> Iterator[dict]:
    """Ray read task: the valid chips of one range of the plan, in batches; then the range's summary file."""
    from tiling.plan import planned_run

    start, stop = int(batch["start"][0]), int(batch["stop"][0])
    skipped, chips, errors = 0, 0, {}

    def on_skip(n: int) -> None:
        nonlocal skipped
        skipped += n

    def on_error(e: RasterError, k: int) -> None:
        errors[str(k)] = str(e)

    failed: list[str] = []
    with planned_run(paths, params, Reporter("none"), failed) as planner, ChipReader(planner) as reader:
        if len(planner.sources) != len(paths):
            raise SaigError(f"a worker could not open every raster ({', '.join(failed)}): the rasters must be on "
                            "storage every node sees")
        pending: list[tuple[Chip, np.ndarray]] = []
        for chip, rgb in iter_chips(planner, reader, start, stop, on_skip, on_error):
            pending.append((chip, rgb))
            if len(pending) == batch_size:
                chips += len(pending)
                yield _chip_batch(pending, start)
                pending = []
        if pending:
            chips += len(pending)
            yield _chip_batch(pending, start)
    summary = {"start": start, "stop": stop, "chips": chips, "skipped": skipped, "errors": errors}
    path = Path(ray_dir) / f"{_range_name(start)}.json"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, path)


def _chip_batch(pending: list[tuple[Chip, np.ndarray]], start: int) -> dict:
    chips = [c for c, _ in pending]
    return {"pixels": np.stack([p for _, p in pending]), "seq": np.array([c.seq for c in chips], np.int64),
            "record": np.array([json.dumps(r) for r in chip_records(chips)], dtype=object),
            "range": np.full(len(chips), start, np.int64)}


class ChipEncoder:
    """Ray actor: encodes chip batches with the checkpoint's aerial branch, writing one part file per range
    and batch (``ray/range-S/part-FIRSTSEQ.npz``); returns how many chips each part holds."""

    def __init__(self, checkpoint: str, device: str, polar_size: tuple[int, int] | None, ray_dir: str,
                 batch_size: int) -> None:
        from saig_core.runtime.device import resolve_device
        from saig_core.runtime.encode import Encoder
        from saig_core.weights.checkpoint import load_checkpoint

        self.encoder = Encoder(load_checkpoint(checkpoint), device=resolve_device(device))
        self.polar_size, self.ray_dir, self.batch_size = polar_size, Path(ray_dir), batch_size

    def __call__(self, batch: dict) -> dict:
        """Encode one batch of chips and write its parts."""
        from tiling.index import encode_chips

        pixels, seq, ranges = batch["pixels"], batch["seq"], batch["range"]
        desc = np.concatenate([encode_chips(self.encoder, np.ascontiguousarray(pixels[i:i + self.batch_size]),
                                            self.polar_size) for i in range(0, len(seq), self.batch_size)])
        out_ranges, counts = np.unique(ranges, return_counts=True)
        for r in out_ranges:
            at = np.flatnonzero(ranges == r)
            folder = self.ray_dir / _range_name(int(r))
            folder.mkdir(exist_ok=True)
            _atomic_savez(folder / f"part-{int(seq[at[0]]):012d}.npz", descriptors=desc[at].astype(np.float32),
                          seq=seq[at], records=np.array(json.dumps([json.loads(s) for s in batch["record"][at]])))
        return {"range": out_ranges, "chips": counts}


@contextmanager
def connected(address: str, reporter: Reporter) -> Iterator[dict]:
    """Connect to the Ray cluster at ``address`` (``local``: start one in this process); yields its resources."""
    try:
        import ray
    except ImportError:
        raise SaigError("--ray needs Ray: pip install 'saig-geolocate[ray]' (or 'ray[data]')") from None
    kwargs = {"include_dashboard": False} if address == "local" else {"address": address}
    ray.init(log_to_driver=False, logging_level=logging.ERROR, **kwargs)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        resources = ray.cluster_resources()
        reporter.log(f"Ray cluster {address}: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} "
                     f"GPUs, {sum(1 for n in ray.nodes() if n.get('Alive'))} node(s)")
        yield resources
    finally:
        ray.shutdown()


def encode_on_ray(planner: ChipPlanner, encoder, prog, shard_dir: Path, opts, reporter: Reporter,
                  failed: list[str], polar_size: tuple[int, int] | None) -> None:
    """The encoding step of :func:`tiling.index.build_index` on a Ray cluster (see the module docstring);
    leaves the build's shards in ``shard_dir`` for its final step."""
    ray_dir = shard_dir.parent / RAY_DIR
    ray_dir.mkdir(exist_ok=True)
    total, size = planner.count(), opts.shard_chips
    ranges = [(s, min(s + size, total)) for s in range(0, total, size)]
    todo = [r for r in ranges if not (ray_dir / f"{_range_name(r[0])}.npz").exists()]
    _drop_uncommitted(ray_dir)
    if len(todo) < len(ranges):
        reporter.log(f"resuming: {len(ranges) - len(todo)} of {len(ranges)} chip ranges already encoded")
    if todo:
        attempt = ray_dir / f"attempt-{uuid.uuid4().hex[:16]}"
        attempt.mkdir()
        with connected(opts.ray, reporter) as resources:
            _run_pipeline(planner, todo, ray_dir, attempt, opts, reporter, resources, polar_size,
                          encoder.descriptor_dim)
        for start, _ in todo:  # ranges whose summary came after their last batch, and ranges without chips
            if not (ray_dir / f"{_range_name(start)}.npz").exists():
                _commit_range(ray_dir, attempt, start, encoder.descriptor_dim)
        shutil.rmtree(attempt, ignore_errors=True)
    _lay_out_shards(planner, ranges, ray_dir, shard_dir, reporter, failed)


def _drop_uncommitted(ray_dir: Path) -> None:
    """Everything in ``ray_dir`` but the committed ranges: earlier runs' parts, summaries and temporary files."""
    for p in ray_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif not (p.name.startswith("range-") and p.suffix == ".npz"):
            p.unlink(missing_ok=True)


def _run_pipeline(planner: ChipPlanner, todo: list[tuple[int, int]], ray_dir: Path, attempt: Path, opts,
                  reporter: Reporter, resources: dict, polar_size: tuple[int, int] | None, dim: int) -> None:
    """Read tasks, then encoding actors, over the ranges still to do, writing in ``attempt``; each range is
    committed as soon as it is complete. Returns when every range is encoded."""
    import ray.data

    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    actors = gpus if gpus else max(1, cpus // 2)
    plan = ray.data.from_items([{"start": s, "stop": e} for s, e in todo], override_num_blocks=len(todo))
    read = functools.partial(read_range, paths=[str(s.path) for s in planner.sources], params=planner.params,
                             ray_dir=str(attempt), batch_size=opts.batch_size)
    # read tasks take one CPU each; given as a function, which also keeps Ray Data from fusing them into the
    # encoding actors (reading must scale over the CPU workers, not run inside the few encoding actors)
    chips = plan.map_batches(read, batch_size=1, batch_format="numpy", ray_remote_args_fn=lambda: {"num_cpus": 1})
    ds = chips.map_batches(ChipEncoder, batch_size=opts.batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                           num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, batch_format="numpy",
                           fn_constructor_kwargs={"checkpoint": str(Path(opts.checkpoint).resolve()),
                                                  "device": opts.device, "polar_size": polar_size,
                                                  "ray_dir": str(attempt), "batch_size": opts.batch_size})
    reporter.log(f"encoding {len(todo)} chip range(s) with {actors} {'GPU' if gpus else 'CPU'} actor(s)")
    candidates = sum(e - s for s, e in todo)
    encoded: dict[int, int] = {}  # chips encoded so far per range not yet committed
    with reporter.task("index", candidates) as task:  # (encoded chips; skipped candidates count at the end)
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for start, n in zip(batch["range"].tolist(), batch["chips"].tolist(), strict=True):
                encoded[start] = encoded.get(start, 0) + n
            task.update(int(np.sum(batch["chips"])))
            done += int(np.sum(batch["chips"]))
            _commit_finished(ray_dir, attempt, encoded, dim)
        task.update(candidates - done)


def _commit_finished(ray_dir: Path, attempt: Path, encoded: dict[int, int], dim: int) -> None:
    """Commit every range whose read task has written its summary and whose chips are all encoded."""
    for start, n in list(encoded.items()):
        summary = attempt / f"{_range_name(start)}.json"
        if summary.exists() and json.loads(summary.read_text())["chips"] == n:
            _commit_range(ray_dir, attempt, start, dim)
            del encoded[start]


def _commit_range(ray_dir: Path, attempt: Path, start: int, dim: int) -> None:
    """Merge a range's parts (in ``attempt``) into ``ray_dir/range-S.npz``; they must hold every chip its
    summary counts."""
    summary_path = attempt / f"{_range_name(start)}.json"
    if not summary_path.exists():
        raise SaigError(f"{summary_path}: missing after the Ray pipeline finished (a read task was lost); "
                        "run the build again to redo that range")
    summary = json.loads(summary_path.read_text())
    parts = sorted((attempt / _range_name(start)).glob("part-*.npz"))
    desc, seq, records = [], [], []
    for p in parts:
        with np.load(p, allow_pickle=False) as z:
            desc.append(z["descriptors"])
            seq.append(z["seq"])
            records += json.loads(str(z["records"]))
    if len(records) != summary["chips"]:
        raise SaigError(f"{attempt / _range_name(start)}: {len(records)} encoded chips, the read task counted "
                        f"{summary['chips']}; run the build again to redo that range")
    order = np.argsort(np.concatenate(seq) if seq else np.zeros(0, np.int64), kind="stable")
    _atomic_savez(ray_dir / f"{_range_name(start)}.npz",
                  descriptors=(np.concatenate(desc) if desc else np.zeros((0, dim), np.float32))[order],
                  seq=(np.concatenate(seq) if seq else np.zeros(0, np.int64))[order],
                  records=np.array(json.dumps([records[i] for i in order])), summary=np.array(json.dumps(summary)))
    shutil.rmtree(attempt / _range_name(start), ignore_errors=True)
    summary_path.unlink()


def _lay_out_shards(planner: ChipPlanner, ranges: list[tuple[int, int]], ray_dir: Path, shard_dir: Path,
                    reporter: Reporter, failed: list[str]) -> None:
    """The committed ranges as the build's shards, in plan order (each grid cell is one candidate)."""
    from tiling.index import _write_shard

    for old in shard_dir.glob("shard-*.npz"):  # a single-process partial build of the same run: replaced
        old.unlink()
    failed_sources: dict[int, str] = {}
    loaded = []
    for start, _ in ranges:
        with np.load(ray_dir / f"{_range_name(start)}.npz", allow_pickle=False) as z:
            summary = json.loads(str(z["summary"]))
            loaded.append((start, summary))
            failed_sources.update({int(k): v for k, v in summary["errors"].items()})
    for k, message in sorted(failed_sources.items()):
        path = str(planner.sources[k].path)
        failed.append(path)
        reporter.error(message, file=path, kind="RasterError")
    for number, (start, summary) in enumerate(loaded):
        with np.load(ray_dir / f"{_range_name(start)}.npz", allow_pickle=False) as z:
            desc, records = z["descriptors"], json.loads(str(z["records"]))
        _write_shard(shard_dir, number, desc, records, summary["stop"], summary["skipped"], set(failed_sources))
