"""The ``saig`` command: the command groups assembled, global options, errors as exit codes.

Each command group is a module with ``register(subparsers)``; every command function takes
``(args, reporter)`` and returns an exit code (0 ok, 1 error; argparse gives 2 for usage errors).
Heavy imports happen inside the commands so ``saig --help`` is instant.
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from saig_cli import engine, geo, synthetic, training
from saig_core.errors import SaigError
from saig_core.runtime.args import add_progress_arg
from saig_core.runtime.progress import Reporter
from saig_core.version import __version__

#: The command groups of ``saig``, in help order (as ``rio`` lists its commands).
COMMAND_GROUPS = (engine, training, geo, synthetic)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``saig`` argument parser."""
    parser = argparse.ArgumentParser(prog="saig",
                                     description="SAIG cross-view geo-localisation: where was this photo taken?")
    parser.add_argument("--version", action="version", version=f"saig {__version__}")
    add_progress_arg(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``saig`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    reporter = Reporter(args.progress)
    _warnings_as_messages(reporter)
    try:
        return int(args.func(args, reporter) or 0)
    except KeyboardInterrupt:
        reporter.error("interrupted")
        return 130
    except (SaigError, OSError, ValueError) as e:
        if args.debug:
            traceback.print_exc()
        reporter.error(str(e), kind=type(e).__name__, file=getattr(e, "filename", None))
        if getattr(args, "json", False) and not reporter.json:  # --json callers read errors on stdout too
            reporter.emit("error", message=str(e), kind=type(e).__name__, file=getattr(e, "filename", None))
        return 1


def _warnings_as_messages(reporter: Reporter) -> None:
    """Python warnings (Pillow, EXIF, libraries) become one-line warning messages, never source lines."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        reporter.log(f"{' '.join(str(message).split())} ({category.__name__})", "warning")

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
