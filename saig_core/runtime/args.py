"""Argument builders shared by every ``saig`` command group: image sizes, device, precision, progress.

Each option is declared here once, so its spelling, default and help text are the same in every
command that takes it. Torch-free: ``saig --help`` stays instant.
"""
from __future__ import annotations

import argparse

from saig_core.runtime.choices import DEVICE_HELP, PRECISION_HELP, PRECISIONS, PROGRESS_MODES


def parse_size(text: str) -> tuple[int, int]:
    """An argparse type for image sizes written HxW (height x width in pixels)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x512, got {text!r}") from None
    return (h, w)


def add_size_args(p: argparse.ArgumentParser) -> None:
    """``--ground-size`` and ``--aerial-size`` (default: as the checkpoint records)."""
    p.add_argument("--ground-size", type=parse_size, default=None, metavar="HxW",
                   help="ground image size (default: as recorded, or 128x512)")
    p.add_argument("--aerial-size", type=parse_size, default=None, metavar="HxW",
                   help="aerial image size (default: as recorded, or 256x256)")


def add_device_arg(p: argparse.ArgumentParser, default: str | None = "auto", help_prefix: str = "") -> None:
    """``--device``: where the encoder runs."""
    p.add_argument("--device", default=default, help=help_prefix + DEVICE_HELP)


def add_precision_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--precision``: the encoder's arithmetic."""
    p.add_argument("--precision", default=default, choices=PRECISIONS, help=PRECISION_HELP)


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--progress``: how a command reports progress, logs and results."""
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="progress display: a bar on stderr, JSON lines on stdout (for programs), or none "
                        "(default auto: a bar when stderr is a terminal)")
