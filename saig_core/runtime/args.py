"""Argument builders and validators shared by every ``saig`` command group.

Each option is declared here once, so its spelling, default and help text are the same in every
command that takes it. The ``type=`` functions check a value when the command line is parsed: a bad
value is a usage error (exit 2, argparse's ``saig CMD: error: argument --x: ...``) before any work
starts, never a traceback or a surprise after hours of work. Torch-free: ``saig --help`` stays
instant.

Output locations (:func:`output_path`) follow one rule in every command: the nearest existing
ancestor of the output must be a writable folder; missing parent folders are created when the
command starts its work (:func:`make_parents`).
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from saig_core.runtime.choices import DEVICE_HELP, PRECISION_HELP, PRECISIONS, PROGRESS_MODES

#: Largest side accepted for a model or chip image size (pixels): 4096 x 4096 is already ~65,000 tokens.
MAX_IMAGE_SIDE = 4096
#: Smallest side: one 16 x 16 token of the model's stem.
MIN_IMAGE_SIDE = 16

_Error = argparse.ArgumentTypeError


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Error(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _Error(f"expected a finite number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Error(f"expected an integer, got {text!r}") from None


def positive_finite_float(text: str) -> float:
    """A finite number > 0 (metres, radii, sizes): ``inf``, ``nan``, 0 and negatives are refused."""
    value = _float(text)
    if value <= 0:
        raise _Error(f"must be positive, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise _Error(f"must not be negative, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise _Error(f"must be between 0 and 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, batch sizes, -k)."""
    value = _int(text)
    if value < 1:
        raise _Error(f"must be at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise _Error(f"must not be negative, got {text!r}")
    return value


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """A type for an integer in [lo, hi] (e.g. an XYZ zoom level)."""
    def parse(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise _Error(f"must be between {lo} and {hi}, got {text!r}")
        return value

    parse.__name__ = f"integer {lo}..{hi}"
    return parse


def fov_degrees(text: str) -> float:
    """A horizontal field of view in degrees, in (0, 360] (360 = a panorama)."""
    value = _float(text)
    if not 0 < value <= 360:
        raise _Error(f"a field of view must be more than 0 and at most 360 degrees, got {text!r}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """An image size written HxW (height x width, pixels), each side in [MIN_IMAGE_SIDE, MAX_IMAGE_SIDE]."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise _Error(f"expected HxW such as 128x512, got {text!r}") from None
    if not (MIN_IMAGE_SIDE <= h <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= w <= MAX_IMAGE_SIDE):
        raise _Error(f"each side must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels, got {text!r}")
    return (h, w)


#: The HxW parser under its historical name (one parser for every size option).
parse_size = image_size


def lonlat(text: str) -> tuple[float, float]:
    """``LON,LAT`` in EPSG:4326 degrees, within -180..180 and -90..90."""
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise _Error(f"expected LON,LAT in degrees, got {text!r}") from None
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise _Error(f"longitude must be within -180..180 and latitude within -90..90, got {text!r}")
    return (lon, lat)


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(".")


def output_path(text: str) -> str:
    """An output file or folder that can be written: its nearest existing ancestor is a writable
    folder (missing parents are created by :func:`make_parents` when the work starts)."""
    if not text.strip():
        raise _Error("an output location must not be empty")
    path = Path(text).expanduser()
    parent = _nearest_existing(path.absolute().parent)
    if not parent.is_dir():
        raise _Error(f"{text}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _Error(f"{text}: permission denied (cannot write in {parent})")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise _Error(f"{text}: permission denied (cannot write in this folder)")
    if os.path.lexists(path) and not path.exists():
        raise _Error(f"{text}: a broken symbolic link")
    return str(path)


def output_file(text: str) -> str:
    """An output file (see :func:`output_path`); an existing folder of that name is refused."""
    path = output_path(text)
    if Path(path).is_dir():
        raise _Error(f"{text}: is a folder; expected a file name")
    return path


def output_dir(text: str) -> str:
    """An output folder (see :func:`output_path`); an existing file of that name is refused."""
    path = output_path(text)
    if os.path.lexists(path) and not Path(path).is_dir():
        raise _Error(f"{text}: exists and is not a folder")
    return path


def make_parents(path: str | os.PathLike) -> Path:
    """Create the missing parent folders of an output (the one rule every command follows)."""
    path = Path(path)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    return path


def add_size_args(p: argparse.ArgumentParser) -> None:
    """``--ground-size`` and ``--aerial-size`` (default: as the checkpoint records)."""
    p.add_argument("--ground-size", type=image_size, default=None, metavar="HxW",
                   help="ground image size (default: as recorded, or 128x512)")
    p.add_argument("--aerial-size", type=image_size, default=None, metavar="HxW",
                   help="aerial image size (default: as recorded, or 256x256)")


def device_name(text: str) -> str:
    """A device name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (availability is checked later)."""
    name = text.strip().lower()
    base, _, index = name.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
        raise _Error(f"expected {DEVICE_HELP}; got {text!r}")
    return name


def add_device_arg(p: argparse.ArgumentParser, default: str | None = "auto", help_prefix: str = "") -> None:
    """``--device``: where the encoder runs."""
    p.add_argument("--device", type=device_name, default=default, help=help_prefix + DEVICE_HELP)


def add_precision_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--precision``: the encoder's arithmetic."""
    p.add_argument("--precision", default=default, choices=PRECISIONS, help=PRECISION_HELP)


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--progress``: how a command reports progress, logs and results."""
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="progress display: a bar on stderr, JSON lines on stdout (for programs), or none "
                        "(default auto: a bar when stderr is a terminal)")
