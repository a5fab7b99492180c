"""What a command wrote into a folder, so that a later run deletes that and nothing else.

``saig demo --out DIR`` and ``saig synth --out DIR --overwrite`` replace what an earlier run of
theirs wrote. They record it in a marker file in the folder (``.saig-demo.json``,
``.saig-synth.json``: the command and the entries, relative to the folder), written *before* the
entries themselves, so even a run killed half-way is cleaned up by the next one. A later run
deletes only the entries of its own marker, and only those that stay inside the folder once
resolved (no absolute paths, no ``..``, symbolic links removed as links, never followed). An entry
that already exists but is not in the marker belongs to the user: the command refuses to touch it.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from saig_core.errors import SaigError

MARKERS = {"saig demo": ".saig-demo.json", "saig synth": ".saig-synth.json"}


class OwnershipError(SaigError, ValueError):
    """A folder holds files the command did not write where it would write its own."""


def marker_path(folder: Path, command: str) -> Path:
    """The marker file of ``command`` in ``folder``."""
    return folder / MARKERS[command]


def inside(folder: Path, entry: str) -> Path | None:
    """``folder / entry`` when ``entry`` is a plain relative path whose parent resolves inside ``folder``
    (the entry itself may be a link: it is removed as a link), else None."""
    rel = PurePosixPath(entry)
    if not entry or rel.is_absolute() or ".." in rel.parts or rel.parts[:1] == ("",):
        return None
    path = folder / Path(*rel.parts)
    root = os.path.realpath(folder)
    parent = os.path.realpath(path.parent)
    if parent != root and not parent.startswith(root + os.sep):
        return None
    return path


def read_marker(folder: Path, command: str) -> list[str] | None:
    """The entries a previous run of ``command`` recorded in ``folder``, or None without a (valid) marker."""
    try:
        data = json.loads(marker_path(folder, command).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != command or not isinstance(data.get("entries"), list):
        return None
    return [str(e) for e in data["entries"]]


def write_marker(folder: Path, command: str, entries: Iterable[str]) -> None:
    """Record (atomically) that ``command`` writes ``entries`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = marker_path(folder, command)
    tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"written_by": command, "entries": sorted(set(entries))}, indent=1))
        os.replace(tmp, marker)
    finally:
        tmp.unlink(missing_ok=True)


def remove_written(folder: Path, command: str) -> int:
    """Delete what the marker of ``command`` lists (inside ``folder`` only); returns how many entries went."""
    removed = 0
    for entry in read_marker(folder, command) or []:
        path = inside(folder, entry)
        if path is None or not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed += 1
    return removed


def claim(folder: Path, command: str, entries: list[str], describe: str) -> None:
    """Make ``folder`` ready for ``command`` to write ``entries``: delete what its previous run wrote, refuse
    (naming them) entries that exist but were not written by it, then record the new entries."""
    if folder.exists() and not folder.is_dir():
        raise OwnershipError(f"{folder} is not a folder")
    if folder.is_dir():
        remove_written(folder, command)
        foreign = [e for e in entries if os.path.lexists(folder / e)]
        if foreign:
            raise OwnershipError(
                f"{folder} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which {command} did "
                f"not write; it deletes only {describe} -- choose another folder or move these away")
    write_marker(folder, command, entries)
