"""One writer per output: a lock file beside the output that names the process holding it.

``saig index build`` (and ``saig tile``) hold ``.<output name>.lock`` next to their output for the whole
run, so two runs writing the same output refuse instead of interleaving their shards. The lock is an
advisory ``flock`` where the platform has one: it dies with its process, so the file a killed run
leaves behind (``kill -9``) is simply taken over. Elsewhere the file is created exclusively and a
lock whose recorded process is no longer alive on this host is taken over.
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

from saig_core.errors import SaigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class OutputLockedError(SaigError, RuntimeError):
    """Another live process is writing the same output (the message names it and the lock file)."""


def lock_path(out: Path) -> Path:
    """The lock file of an output: a hidden sibling, so it survives the output being replaced."""
    return out.with_name(f".{out.name}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _refusal(out: Path, path: Path, holder: dict) -> OutputLockedError:
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = f" since {holder['started']}" if holder.get("started") else ""
    return OutputLockedError(
        f"{out}: another run ({holder.get('command', 'saig')}, {who}{since}) is writing this output (lock file "
        f"{path}); wait for it to finish or stop it. If no such process is running, delete {path}")


def _record(command: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})


@contextmanager
def output_lock(out: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of ``out`` for the ``with`` block; raises :class:`OutputLockedError` when another
    live process holds it. The lock file is removed on exit."""
    out = Path(out)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield from _exclusive_file(out, path, command)
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(out, path, _holder(path)) from None
        try:  # the file we locked may have been removed by its previous holder meanwhile: lock the current one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, _record(command).encode())
        yield path
    finally:
        with suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _exclusive_file(out: Path, path: Path, command: str) -> Iterator[Path]:
    """Without ``flock``: create the file exclusively; take over one left by a dead process of this host."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            pid = holder.get("pid")
            if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
                with suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise _refusal(out, path, holder) from None
        with os.fdopen(fd, "w") as f:
            f.write(_record(command))
        try:
            yield path
        finally:
            with suppress(FileNotFoundError):
                path.unlink()
        return
    raise _refusal(out, path, _holder(path))
