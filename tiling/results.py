"""The results of a ``saig locate`` run: committed photo by photo, published as one GeoPackage.

A run writes into a hidden folder next to the output, ``.<out name>.partial/``:

* ``run.json``: what the run is (index, model, options, the photo list's digest), written once;
* ``journal.jsonl``: one line per located photo (its ``photos`` row and its candidate rows),
  appended, flushed and fsynced before the next photo starts. A line cut short by a kill is
  dropped (and cut off the file) when the journal is reopened.

When every photo has been tried, the GeoPackage (layers ``candidates`` and ``photos``, GeoPackage
1.2) is written from the journal under a temporary name in the output's folder, renamed onto the
output, and only then is the partial folder removed. So after a kill at any moment -- SIGKILL
included -- the same command with ``--resume`` skips every photo already journaled and finishes the
run, and the output holds each photo exactly once. The last step is idempotent: a kill between
the rename and the removal is finished by the next ``--resume``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from saig_core.errors import SaigError
from tiling.manifest import GPKG_OPTIONS
from tiling.schema import CANDIDATE_COLUMNS, PHOTO_COLUMNS

JOURNAL_FORMAT = "saig-locate-journal"
JOURNAL_VERSION = 1
_WRITE_BATCH = 20_000  # candidate rows per GeoPackage write: bounded memory whatever the run's size


class JournalError(SaigError, ValueError):
    """An unfinished run that cannot be resumed as asked (the message says why and what to do)."""


def photo_list_digest(photos: list[Path]) -> str:
    """sha256 of the run's photo list (resolved paths, in order): a resumed run must locate the same photos."""
    h = hashlib.sha256()
    for p in photos:
        h.update(os.path.realpath(p).encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def partial_dir(out: Path) -> Path:
    """The hidden folder holding the committed results of an unfinished run towards ``out``."""
    return out.with_name(f".{out.name}.partial")


def check_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (without --overwrite) or an unfinished run of it
    (without --resume or --overwrite), and a --resume with nothing to resume."""
    unfinished = partial_dir(out).exists()
    if unfinished and not (resume or overwrite):
        raise JournalError(f"{out}: an unfinished run of this output exists ({partial_dir(out)}); pass --resume to "
                           "finish it, or --overwrite to start over")
    if resume and not unfinished and out.exists():
        raise JournalError(f"{out}: this run is already complete (nothing to resume); pass --overwrite to locate "
                           "the photos again")
    if out.exists() and not (overwrite or (resume and unfinished)):
        raise JournalError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise JournalError(f"{out} is a folder; expected a GeoPackage file name")


class ResultJournal:
    """The committed results of one run towards ``out`` (see the module docstring)."""

    def __init__(self, out: Path, run: dict, *, resume: bool, overwrite: bool) -> None:
        self.out = out
        self.dir = partial_dir(out)
        self.file = self.dir / "journal.jsonl"
        self.run = {"format": JOURNAL_FORMAT, "format_version": JOURNAL_VERSION, **run}
        self.done: dict[str, int] = {}  # photo key -> line number
        self.resumed = False
        self._open(resume, overwrite)

    # -- opening ------------------------------------------------------------------------------------
    def _open(self, resume: bool, overwrite: bool) -> None:
        check_output(self.out, resume=resume, overwrite=overwrite)
        if self.dir.exists():
            if resume:
                self._check_same_run()
                self._load()
                self.resumed = True
                return
            shutil.rmtree(self.dir)  # --overwrite: start over
        self.dir.mkdir(parents=True)
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(self.run, indent=1))
        os.replace(tmp, self.dir / "run.json")
        self.file.touch()

    def _check_same_run(self) -> None:
        try:
            recorded = json.loads((self.dir / "run.json").read_text())
        except (OSError, ValueError):
            raise JournalError(f"{self.dir}: not an unfinished locate run this can resume (run.json unreadable); "
                               "pass --overwrite instead of --resume to start over") from None
        differ = sorted(k for k in set(recorded) | set(self.run) if recorded.get(k) != self.run.get(k))
        if differ:
            detail = ", ".join(f"{k}: {recorded.get(k)!r} then, {self.run.get(k)!r} now" for k in differ[:4])
            raise JournalError(f"{self.out}: the unfinished run was started with other settings ({detail}); rerun "
                               "the same command with --resume, or pass --overwrite to start over")

    def _load(self) -> None:
        """Read the committed lines; a last line cut short by a kill is dropped and cut off the file."""
        good = 0
        self.file.touch()
        with open(self.file, "rb") as f:
            for n, line in enumerate(f):
                try:
                    key = json.loads(line)["photo"]["photo_key"]
                except (ValueError, KeyError, TypeError):
                    break
                if not line.endswith(b"\n"):
                    break
                self.done[key] = n
                good += len(line)
        with open(self.file, "r+b") as f:
            f.truncate(good)
            os.fsync(f.fileno())

    # -- writing ------------------------------------------------------------------------------------
    def record(self, photo_row: dict, candidate_rows: list[dict], result: dict) -> None:
        """Commit one located photo (its ``photo_key`` must be new) with its rows and its JSON result line:
        appended, flushed and fsynced."""
        record = {"photo": photo_row, "candidates": candidate_rows, "result": result}
        line = json.dumps(record, allow_nan=False, default=str) + "\n"
        with open(self.file, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.done[photo_row["photo_key"]] = len(self.done)

    def _records(self) -> Iterator[dict]:
        """The committed records, each photo once."""
        seen: set[str] = set()
        with open(self.file, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                key = record["photo"]["photo_key"]
                if key not in seen:
                    seen.add(key)
                    yield record

    def replay(self, reporter) -> None:
        """Emit the result lines of the photos an earlier run committed (marked ``resumed``)."""
        for rec in self._records():
            reporter.emit("result", **rec["result"], resumed=True)

    def publish(self) -> int:
        """Write the GeoPackage from the journal, rename it onto the output, remove the partial folder;
        returns the number of photos written (nothing is written when there are none)."""
        if not self.done:
            self.discard()
            return 0
        tmp = self.dir / f"publish{self.out.suffix or '.gpkg'}"
        tmp.unlink(missing_ok=True)
        try:
            count = _write_geopackage(tmp, self._records())
            os.replace(tmp, self.out)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        return count

    def discard(self) -> None:
        """Remove the partial folder (nothing of value in it)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_geopackage(path: Path, records: Iterator[dict]) -> int:
    """Both layers from the journal records, in batches; returns the number of photos."""
    photos: list[dict] = []
    cands: list[dict] = []
    written = {"candidates": False, "photos": False}
    count = 0
    for rec in records:
        photos.append(rec["photo"])
        cands.extend(rec["candidates"])
        count += 1
        if len(cands) >= _WRITE_BATCH or len(photos) >= _WRITE_BATCH:
            _append(path, cands, photos, written)
            cands, photos = [], []
    _append(path, cands, photos, written, final=True)
    return count


def _append(path: Path, cands: list[dict], photos: list[dict], written: dict, final: bool = False) -> None:
    import geopandas as gpd
    import pandas as pd  # no pandas-stubs in the environment
    import shapely

    for layer, rows, columns in (("candidates", cands, CANDIDATE_COLUMNS), ("photos", photos, PHOTO_COLUMNS)):
        if not rows and (written[layer] or not final):
            continue
        df = pd.DataFrame(rows, columns=list(columns))
        for name, kind in columns.items():
            if kind == "float":
                df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
            elif kind == "int":
                df[name] = df[name].astype("int64")
            else:
                df[name] = df[name].astype("object")
        lon, lat = df["lon"].to_numpy(float), df["lat"].to_numpy(float)
        geom = shapely.points(lon, lat)
        if layer == "photos":
            geom[~(pd.notna(df["lon"]) & pd.notna(df["lat"])).to_numpy()] = None
        gdf = gpd.GeoDataFrame(df, geometry=geom, crs="EPSG:4326")
        kwargs = {"append": True} if written[layer] else {"dataset_options": GPKG_OPTIONS}
        gdf.to_file(path, layer=layer, driver="GPKG", engine="pyogrio", **kwargs)
        written[layer] = True
