"""The SAIG backend: find its Python, run the ``saig`` CLI as a subprocess, read its JSON lines.

QGIS's own Python never imports torch, faiss or rasterio: everything heavy runs in the backend's
environment (a venv with the ``saig-geolocate`` project installed). The child gets a cleaned
environment so QGIS's PYTHONPATH, PROJ and GDAL settings cannot leak into the backend's wheels
(:mod:`process`).

Where the backend is looked for, first match wins:

1. the plugin setting ``saig/backend_python`` (set in the SAIG dock);
2. the ``SAIG_PYTHON`` environment variable;
3. ``backend.json`` next to this file, written by ``make install-plugin`` from a checkout
   (``{"python": ..., "checkout": ...}``; the checkout's ``.venv`` is used);
4. the backend the plugin installed itself (*Install backend*: a venv in the QGIS profile folder,
   :mod:`backend_install`), once its installation completed;
5. a ``saig`` executable on PATH.

Each may name a Python interpreter (run as ``PYTHON -m saig_core``) or the ``saig`` script itself.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from . import backend_install, process

SETTINGS_KEY = "saig/backend_python"
ENV_VAR = "SAIG_PYTHON"
BACKEND_JSON = Path(__file__).with_name("backend.json")

HOW_TO_FIX = (
    "Install the backend from the SAIG dock (Backend > Install backend), or point the plugin at the Python "
    "of an environment where saig-geolocate is installed: in the SAIG dock, Backend > Python "
    "(e.g. /path/to/saig-geolocate/.venv/bin/python), or set the SAIG_PYTHON environment variable before "
    "starting QGIS. Installing the plugin with 'make install-plugin' from a checkout sets it automatically."
)

_POLL_S = 0.1


class BackendError(Exception):
    """A failure of the backend, with a message a user can act on (no traceback needed).

    ``returncode`` is the backend's exit code when it exited with a failure, else None.
    """

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class BackendCanceled(BackendError):
    """The user canceled; the child was terminated."""


@dataclass(frozen=True)
class BackendLocation:
    """How to start the backend: the command prefix and where it was found (for messages)."""

    command: tuple[str, ...]
    source: str

    @property
    def executable(self) -> str:
        """The program that is started: the backend's Python or its ``saig`` script."""
        return self.command[0]


@dataclass
class BackendRun:
    """What one backend call produced: every ``result`` and ``error`` event, the exit code."""

    returncode: int
    results: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    stderr_tail: str = ""
    location: BackendLocation | None = None

    @property
    def clean_exit(self) -> bool:
        """Whether the backend exited with 0."""
        return self.returncode == 0

    def exit_description(self) -> str:
        """Why the exit was not clean, for people ('' after exit 0)."""
        if self.clean_exit:
            return ""
        return describe_exit(self.returncode, self.location or BackendLocation(("saig",), "unknown"),
                             self.stderr_tail)


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment, on POSIX or Windows."""
    return backend_install.venv_python(venv)


def _command_for(path: str) -> tuple[str, ...]:
    name = Path(path).name.lower()
    if name in ("saig", "saig.exe"):
        return (path,)
    return (path, "-m", "saig_core")


def _from_backend_json(path: Path) -> BackendLocation | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    python = info.get("python") or ""
    if not python and info.get("checkout"):
        python = str(venv_python(Path(info["checkout"]) / ".venv"))
    if not python:
        return None
    return BackendLocation(_command_for(python), f"the checkout recorded at install ({path})")


def configured_python() -> str:
    """The backend Python set in the plugin settings ('' when unset)."""
    return str(QgsSettings().value(SETTINGS_KEY, "", type=str) or "").strip()


def set_configured_python(path: str) -> None:
    """Store the backend Python in the plugin settings ('' to go back to auto-detection)."""
    if path.strip():
        QgsSettings().setValue(SETTINGS_KEY, path.strip())
    else:
        QgsSettings().remove(SETTINGS_KEY)


def managed_home() -> Path:
    """Where *Install backend* keeps its venv, log and record: ``saig_backend`` in the QGIS profile folder."""
    return backend_install.managed_home(QgsApplication.qgisSettingsDirPath())


def managed_source() -> str:
    """How the backend the plugin installed is named as a :class:`BackendLocation` source."""
    return f"the backend installed by the plugin ({managed_home()})"


def managed_backend() -> BackendLocation | None:
    """The backend the plugin installed, when its installation completed (else None)."""
    record = backend_install.read_record(managed_home())
    if record is None:
        return None
    return BackendLocation(_command_for(record["python"]), managed_source())


def locate_backend() -> BackendLocation:
    """Find the backend (see the module docstring for the order); raise BackendError when none."""
    setting = configured_python()
    if setting:
        return BackendLocation(_command_for(setting), "the plugin setting (SAIG dock > Backend)")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return BackendLocation(_command_for(env), f"the {ENV_VAR} environment variable")
    if BACKEND_JSON.exists():
        found = _from_backend_json(BACKEND_JSON)
        if found is not None:
            return found
    managed = managed_backend()
    if managed is not None:
        return managed
    on_path = shutil.which("saig")
    if on_path:
        return BackendLocation((on_path,), "the saig command on PATH")
    raise BackendError(f"No SAIG backend is configured. {HOW_TO_FIX}")


def _check_executable(location: BackendLocation) -> None:
    exe = Path(location.executable)
    if not exe.exists():
        raise BackendError(f"The SAIG backend {exe} (from {location.source}) does not exist. {HOW_TO_FIX}")
    if exe.is_dir() or not os.access(exe, os.X_OK):
        raise BackendError(f"The SAIG backend {exe} (from {location.source}) is not an executable file. {HOW_TO_FIX}")


def describe_exit(returncode: int, location: BackendLocation, stderr_tail: str) -> str:
    """A user-facing explanation of a failed backend exit."""
    sig = process.killed_by_signal(returncode)
    if sig == getattr(signal, "SIGKILL", 9):
        return ("The SAIG backend was killed (signal 9): probably out of memory. "
                "Try fewer photos or rasters per run, a smaller chip size, or close other programs.")
    if returncode == 130:
        return "The SAIG backend was interrupted (exit code 130)."
    crash = process.windows_crash(returncode)
    if crash is not None:
        hint = " Try fewer photos or rasters per run." if "memory" in crash else ""
        return f"The SAIG backend crashed: {crash} (exit code {returncode & 0xFFFFFFFF:#x}).{hint}"
    if sig is not None:
        return f"The SAIG backend was stopped by signal {sig} ({_signal_name(sig)})."
    if "No module named" in stderr_tail and "saig_core" in stderr_tail:
        return (f"{location.executable} (from {location.source}) runs, but saig-geolocate is not installed "
                f"in its environment. {HOW_TO_FIX}")
    if returncode == 2:
        last = stderr_tail.strip().splitlines()[-1:] or [""]
        return (f"The SAIG backend did not accept the command ({last[0]}). "
                "It is probably older than this plugin: update saig-geolocate in the backend environment "
                "(Backend > Install backend upgrades the backend the plugin installed).")
    last_lines = "\n".join(stderr_tail.strip().splitlines()[-5:])
    return f"The SAIG backend failed (exit code {returncode}).\n{last_lines}".rstrip()


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown signal"


def run_backend(
    args: Sequence[str],
    *,
    location: BackendLocation | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
    is_canceled: Callable[[], bool] | None = None,
    cwd: str | None = None,
    partial_ok: bool = False,
) -> BackendRun:
    """Run ``saig --progress json ARGS`` and stream its events to ``on_event`` (in this thread).

    Cancel is checked after every event and at least every 0.1 s; a cancel terminates the child's
    process group and raises BackendCanceled. A child that exits non-zero, or that was killed by a
    signal, raises BackendError with an explanation (killed = probably out of memory, missing
    module, ...), whatever it printed before. With ``partial_ok`` a failed child that produced results
    is returned instead: the caller must then account for what is missing (:func:`missing_photos`;
    :meth:`BackendRun.exit_description` says why it stopped).
    """
    location = location or locate_backend()
    _check_executable(location)
    proc = _start_child(location, args, cwd)
    lines: queue.Queue = queue.Queue()
    readers = process.start_readers(proc, lines)
    run = BackendRun(returncode=0, location=location)
    stderr_tail: deque = deque(maxlen=200)
    try:
        _read_events(lines, run, stderr_tail, on_event, on_stderr, is_canceled)
        _wait_for_exit(proc, is_canceled)
    except BaseException:
        process.terminate(proc)
        raise
    finally:
        for t in readers:
            t.join(1.0)
        proc.stdout.close()
        proc.stderr.close()
    run.returncode = proc.returncode
    run.stderr_tail = "\n".join(stderr_tail)
    _check_outcome(run, location, partial_ok)
    return run


def _start_child(location: BackendLocation, args: Sequence[str], cwd: str | None) -> subprocess.Popen:
    """Start ``saig --progress json ARGS`` in its own process group, with a cleaned environment."""
    command = [*location.command, "--progress", "json", *map(str, args)]
    try:
        return process.start(command, cwd=cwd)
    except OSError as e:
        raise BackendError(f"Could not start the SAIG backend {location.executable} "
                           f"(from {location.source}): {e.strerror or e}. {HOW_TO_FIX}") from None


def _raise_if_canceled(is_canceled: Callable[[], bool] | None) -> None:
    if is_canceled is not None and is_canceled():
        raise BackendCanceled("Canceled: the SAIG backend was stopped and nothing was written.")


def _read_events(lines: queue.Queue, run: BackendRun, stderr_tail: deque,
                 on_event: Callable[[dict], None] | None, on_stderr: Callable[[str], None] | None,
                 is_canceled: Callable[[], bool] | None) -> None:
    """Read both streams until they close: stdout lines become events, stderr lines the tail."""
    open_streams = 2
    while open_streams:
        _raise_if_canceled(is_canceled)
        try:
            tag, line = lines.get(timeout=_POLL_S)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        if tag == "err":
            stderr_tail.append(line)
            if on_stderr is not None:
                on_stderr(line)
            continue
        event = _parse_event(line)
        if event.get("event") == "result":
            run.results.append(event)
        elif event.get("event") == "error":
            run.errors.append(event)
        if on_event is not None:
            on_event(event)


def _wait_for_exit(proc: subprocess.Popen, is_canceled: Callable[[], bool] | None) -> None:
    """Wait for the child to exit once its streams are closed, still honouring cancel."""
    while proc.poll() is None:
        _raise_if_canceled(is_canceled)
        time.sleep(_POLL_S)


def _check_outcome(run: BackendRun, location: BackendLocation, partial_ok: bool) -> None:
    """Raise BackendError for any exit but 0, unless ``partial_ok`` and the child produced results.

    A backend that printed results and then crashed or was killed did not finish: only a caller that
    accounts for what is missing (``partial_ok``, see :func:`missing_photos`) may use those results.
    """
    if run.clean_exit or (partial_ok and run.results):
        return
    if run.errors and run.returncode == 1 and not run.results:  # every input failed, each said why
        raise BackendError(format_errors(run.errors), run.returncode)
    raise BackendError(describe_exit(run.returncode, location, run.stderr_tail), run.returncode)


def _parse_event(line: str) -> dict:
    """One stdout line as an event; anything that is not a JSON event becomes a log event."""
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": "log", "level": "info", "message": line}
    if not isinstance(event, dict) or "event" not in event:
        return {"event": "log", "level": "info", "message": line}
    return event


def format_errors(errors: Sequence[dict]) -> str:
    """Error events as lines of 'file: message'."""
    out = []
    for e in errors:
        message = str(e.get("message") or "unknown error")
        file = e.get("file")
        out.append(f"{file}: {message}" if file and str(file) not in message else message)
    return "\n".join(out)


def backend_info(location: BackendLocation | None = None, checkpoint: str = "",
                 device: str = "auto") -> dict:
    """``saig backend-info --json``: version, torch, device and (with a checkpoint) the model's info."""
    args = ["backend-info", "--device", device, "--json"]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    run = run_backend(args, location=location)
    if not run.results:
        raise BackendError("The SAIG backend answered backend-info without a result.")
    return run.results[-1]


#: What the plugin takes from ``saig schema --json``; see :func:`backend_contract`.
CONTRACT_KEYS = ("photo_suffixes", "layers", "candidate_result_fields")

_CONTRACTS: dict[tuple[str, ...], dict] = {}  # backend command -> its contract, for the session
_CONTRACTS_LOCK = threading.Lock()


def cached_contract(location: BackendLocation) -> dict | None:
    """The contract of this backend when it has been fetched already (never starts the backend)."""
    with _CONTRACTS_LOCK:
        return _CONTRACTS.get(location.command)


def backend_contract(location: BackendLocation | None = None,
                     is_canceled: Callable[[], bool] | None = None) -> dict:
    """``saig schema --json``: the photo types the backend reads, its devices and output columns.

    Fetched once per backend (its command) and kept for the session, so the plugin keeps no copy of
    these facts. A backend older than the ``schema`` command raises a BackendError saying to update it.
    """
    location = location or locate_backend()
    with _CONTRACTS_LOCK:
        if location.command not in _CONTRACTS:
            _CONTRACTS[location.command] = _fetch_contract(location, is_canceled)
        return _CONTRACTS[location.command]


def _fetch_contract(location: BackendLocation, is_canceled: Callable[[], bool] | None) -> dict:
    backend = f"The SAIG backend {location.executable} (from {location.source})"
    update = "Update saig-geolocate in the backend environment."
    try:
        run = run_backend(["schema", "--json"], location=location, is_canceled=is_canceled)
    except BackendCanceled:
        raise
    except BackendError as e:
        if e.returncode == 2:  # argparse: invalid choice 'schema'
            raise BackendError(f"{backend} is older than this plugin: it does not know 'saig schema', which "
                               f"tells the plugin the photo types it reads and the columns it writes. {update}",
                               e.returncode) from None
        raise
    contract = run.results[-1] if run.results else {}
    missing = [key for key in CONTRACT_KEYS if not contract.get(key)]
    layers = contract.get("layers")
    if not missing and not (isinstance(layers, dict) and isinstance(layers.get("candidates"), dict)):
        missing = ["layers.candidates"]
    if missing:
        raise BackendError(f"{backend} answered 'saig schema' without {', '.join(missing)}: it does not "
                           f"match this plugin. {update}")
    return contract


@dataclass
class PhotoList:
    """The photos a ``locate`` of the same inputs processes, and the files it skips with their reasons."""

    photos: list[str]
    skipped: list[tuple[str, str]]


def list_photos(entries: Sequence[str], location: BackendLocation | None = None,
                is_canceled: Callable[[], bool] | None = None) -> PhotoList:
    """``saig photos ENTRIES --json``: the backend expands folders (recursively) exactly as ``locate`` does.

    The plugin keeps no list of photo types or rules of its own: what the backend reads (HEIC, WebP,
    ...) is accepted, and every file it skips comes with its reason.
    """
    location = location or locate_backend()
    try:
        run = run_backend(["photos", *entries, "--json"], location=location, is_canceled=is_canceled)
    except BackendCanceled:
        raise
    except BackendError as e:
        if e.returncode == 2:  # argparse: invalid choice 'photos'
            raise BackendError(f"The SAIG backend {location.executable} (from {location.source}) is older than "
                               "this plugin: it does not know 'saig photos', which tells the plugin which photos "
                               "it will process. Update saig-geolocate in the backend environment.",
                               e.returncode) from None
        raise
    answer = run.results[-1] if run.results else {}
    photos = answer.get("photos")
    if not isinstance(photos, list):
        raise BackendError("The SAIG backend answered 'saig photos' without a photo list: update saig-geolocate "
                           "in the backend environment.")
    skipped = [(str(s.get("path", "")), str(s.get("reason", ""))) for s in answer.get("skipped") or []
               if isinstance(s, dict)]
    return PhotoList([str(p) for p in photos], skipped)


def missing_photos(photos: Sequence[str], run: BackendRun) -> list[str]:
    """The photos of the run that were neither located (a result) nor reported (an error event).

    Empty after a complete run; after a backend that crashed or was killed, the photos it never reached.
    """
    accounted = {os.path.realpath(str(e.get("photo") or e.get("file") or "")) for e in (*run.results, *run.errors)}
    return [p for p in photos if os.path.realpath(p) not in accounted]


def describe_backend_info(info: dict) -> str:
    """One line for people: 'saig 0.1.0 · torch 2.13.0 · CUDA (NVIDIA H100) · model saig_s gap 384-d'."""
    device = str(info.get("device") or "?")
    if info.get("cuda") or device.startswith("cuda"):
        device_text = f"CUDA ({info.get('device_name') or 'GPU'})"
    else:
        device_text = str(info.get("device_name") or device.upper())
    parts = [f"saig {info.get('version', '?')}", f"torch {info.get('torch', '?')}", device_text]
    model = info.get("model")
    if isinstance(model, dict) and model:
        dim = model.get("descriptor_dim")
        parts.append(" ".join(str(p) for p in (f"model {model.get('preset', '?')}", model.get("pool"),
                                               f"{dim}-d" if dim else "") if p))
    return " · ".join(parts)
