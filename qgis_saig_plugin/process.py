"""Child processes of the plugin: a clean environment, their own process group, reading, stopping the tree.

Standard library only (no QGIS): the backend runner and the backend installer both use it, and the
installer also runs outside QGIS (``python3 -m qgis_saig_plugin.backend_install``).

Process handling per platform:

* POSIX (Linux, macOS): the child starts a new session (``start_new_session``), so it leads its own
  process group; stopping it sends SIGTERM to the whole group, then SIGKILL after a grace period,
  which also ends what the child started (pip's build subprocesses, torch worker processes).
* Windows: the child starts with ``CREATE_NEW_PROCESS_GROUP`` (so QGIS's own console events never
  reach it) and ``CREATE_NO_WINDOW`` (no console window flashes up from a GUI application); stopping
  it runs ``taskkill /T`` (the tree, politely), then ``taskkill /F /T`` after the grace period.
  ``Popen.terminate`` alone would leave the child's own children running.
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

#: Variables of the QGIS process that would break a child Python's own packages, PROJ and GDAL.
STRIPPED_ENV = (
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
    "PROJ_LIB", "PROJ_DATA", "GDAL_DATA", "GDAL_DRIVER_PATH",
    "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FALLBACK_LIBRARY_PATH",
)

TERMINATE_GRACE_S = 3.0


def clean_environment(base: Mapping[str, str] | None = None) -> dict:
    """A copy of ``base`` (default os.environ) safe for a child Python: QGIS's variables removed."""
    env = dict(os.environ if base is None else base)
    for name in STRIPPED_ENV:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def group_options(os_name: str = os.name) -> dict:
    """Popen keyword arguments that start the child in its own process group on this platform."""
    if os_name == "posix":
        return {"start_new_session": True}
    flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) | getattr(subprocess, "CREATE_NO_WINDOW",
                                                                             0x8000000)
    return {"creationflags": flags}


def start(command: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group, stdin closed, stdout/stderr as UTF-8 text pipes.

    Raises OSError when the program cannot be started.
    """
    return subprocess.Popen(
        list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, encoding="utf-8", errors="replace", bufsize=1,
        env=dict(clean_environment() if env is None else env), cwd=cwd or os.path.expanduser("~"),
        **group_options(),
    )


def tree_kill_commands(pid: int, force: bool) -> list[str]:
    """The Windows command that ends process ``pid`` and its children (``/F``: without asking)."""
    return ["taskkill", *(["/F"] if force else []), "/T", "/PID", str(pid)]


def _signal_tree(proc: subprocess.Popen, force: bool) -> None:
    if os.name == "posix":
        os.killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(tree_kill_commands(proc.pid, force), capture_output=True, timeout=10,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0x8000000))
    if force and proc.poll() is None:
        proc.kill()


def terminate(proc: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """Stop the child and everything it started (its process group or tree), gently first."""
    if proc.poll() is not None:
        return
    try:
        _signal_tree(proc, force=False)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            _signal_tree(proc, force=True)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def pump(stream, sink: queue.Queue, tag: str) -> None:
    """Put every line of ``stream`` on ``sink`` as (tag, line), then (tag, None) when it closes."""
    for line in iter(stream.readline, ""):
        sink.put((tag, line.rstrip("\r\n")))
    sink.put((tag, None))


def start_readers(proc: subprocess.Popen, sink: queue.Queue) -> list[threading.Thread]:
    """Two daemon threads reading the child's stdout ('out') and stderr ('err') onto ``sink``."""
    readers = [threading.Thread(target=pump, args=(proc.stdout, sink, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, sink, "err"), daemon=True)]
    for reader in readers:
        reader.start()
    return readers


#: Windows NTSTATUS exit codes of a process that crashed (Windows has no signals and no OOM killer:
#: a process out of memory ends with STATUS_NO_MEMORY or a MemoryError traceback and exit code 1).
WINDOWS_CRASHES = {0xC0000005: "access violation", 0xC0000017: "out of memory (STATUS_NO_MEMORY)",
                   0xC00000FD: "stack overflow", 0xC0000409: "fail-fast abort (STATUS_STACK_BUFFER_OVERRUN)",
                   0xC000013A: "interrupted (Ctrl+C or the console closed)"}


def windows_crash(returncode: int) -> str | None:
    """What a Windows NTSTATUS exit code says (as an unsigned or a negative 32-bit number), else None."""
    code = returncode & 0xFFFFFFFF
    return WINDOWS_CRASHES.get(code) if (code & 0xC0000000) == 0xC0000000 else None


def killed_by_signal(returncode: int) -> int | None:
    """The signal that ended a child (-N from Python, or 128+N from a shell wrapper), else None."""
    if returncode < 0 and windows_crash(returncode) is None:
        return -returncode
    if 128 < returncode < 128 + 65 and os.name == "posix":
        return returncode - 128
    return None
