"""Install, repair or upgrade the SAIG backend the plugin manages: a venv in the QGIS profile folder.

Standard library only, so it runs inside QGIS (the dock's *Install backend*) and without it, for
``qgis_process`` users::

    cd ~/.local/share/QGIS/QGIS3/profiles/default/python/plugins
    python3 -m qgis_saig_plugin.backend_install            # --help for the options

Steps, each a subprocess in its own process group (cancel stops the tree, :mod:`process`), every
line of output streamed to the caller and appended to ``install.log``:

1. a suitable Python (3.10 or newer, with ``venv``/``ensurepip``), found and reported: the one given,
   else the Python running QGIS when it is a real interpreter (not ``qgis-bin.exe``, not inside the
   macOS app bundle), else ``python3.X``/``python3``/``python`` on PATH (and the ``py`` launcher on
   Windows, the python.org and Homebrew Pythons on macOS). The venv is created without system
   site-packages, so QGIS's own packages never leak in;
2. torch: the build :mod:`torch_choice` picks for the machine (CUDA when ``nvidia-smi`` reports a
   driver that supports one, else CPU), or the requirement and index set in the install options;
3. the backend: the ``saig-geolocate`` wheel shipped inside the plugin (``wheels/``), with its
   dependencies, then reinstalled from that wheel without dependencies so a re-run repairs files;
4. ``saig backend-info``: versions and device, as *Check backend* shows them.

Only when every step succeeded is ``install.json`` written (atomically); the plugin uses the managed
backend only when that record exists, so a canceled or failed install is never picked up half-done.
Re-running repairs (a venv whose Python no longer runs is recreated, a torch that no longer imports
is reinstalled) and upgrades (a newer wheel in a newer plugin replaces the installed backend).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import process, torch_choice

HOME_ENV = "SAIG_BACKEND_HOME"
HOME_DIR = "saig_backend"
RECORD = "install.json"
LOG = "install.log"
MARKER = ".saig-managed"
WHEELS = Path(__file__).with_name("wheels")
MIN_PYTHON = (3, 10)
_PROBE = ("import json, sys, venv, ensurepip; print(json.dumps({'version': list(sys.version_info[:3]), "
          "'executable': sys.executable, 'base': getattr(sys, '_base_executable', '') or sys.executable, "
          "'in_venv': sys.prefix != sys.base_prefix}))")


class InstallError(Exception):
    """An install step failed; the message says which, why, and where the log is."""


class InstallCanceled(InstallError):
    """The user canceled; the running step was stopped."""


@dataclass
class InstallOptions:
    """Where to install and what: the install options of the dock (or the command line)."""

    home: Path
    python: str = ""  # base Python for the venv; "" = find one
    torch_requirement: str = ""  # "" = automatic (torch_choice)
    torch_index_url: str = ""  # "" = the automatic choice's index, or pip's configuration for a custom torch
    find_links: str = ""  # a folder (or URL) of wheels offered to every pip call
    no_index: bool = False  # only find_links and pip's configured find-links: no package index at all
    wheel: str = ""  # the backend wheel; "" = the one shipped in the plugin
    nvidia_smi: str = ""  # "" = nvidia-smi on PATH


@dataclass
class Step:
    """One subprocess of the install; ``weight`` is its share of the progress bar."""

    title: str
    command: list[str]
    weight: float


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment, on POSIX or Windows."""
    posix = venv / "bin" / "python"
    return posix if posix.exists() or os.name != "nt" else venv / "Scripts" / "python.exe"


def managed_home(profile_dir: str | os.PathLike) -> Path:
    """``saig_backend`` in the QGIS profile folder (``SAIG_BACKEND_HOME`` overrides it)."""
    override = os.environ.get(HOME_ENV, "").strip()
    return Path(override) if override else Path(profile_dir) / HOME_DIR


def read_record(home: Path) -> dict | None:
    """The record of a completed install (None when absent, unreadable, or its Python is gone)."""
    try:
        record = json.loads((home / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("python") or not Path(record["python"]).exists():
        return None
    return record


def shipped_wheel(folder: Path | None = None) -> Path:
    """The ``saig_geolocate-*.whl`` shipped inside the plugin (``wheels/``); InstallError when there is none or
    several."""
    folder = WHEELS if folder is None else folder
    found = sorted(folder.glob("saig_geolocate-*.whl"))
    if len(found) != 1:
        what = "no backend wheel" if not found else f"{len(found)} backend wheels"
        raise InstallError(f"This copy of the plugin ships {what} in {folder}: install the plugin from the ZIP "
                           "that 'make plugin-zip' builds (it contains the backend as a wheel).")
    return found[0]


def python_candidates(explicit: str = "", platform: str = sys.platform) -> list[tuple[list[str], str]]:
    """Commands that may start a suitable Python, each with how it was found, best first."""
    if explicit:
        return [([explicit], "the Python chosen in the install options")]
    found: list[tuple[list[str], str]] = []
    exe = sys.executable or ""
    if Path(exe).name.lower().startswith("python") and ".app/Contents" not in exe:
        found.append(([exe], "the Python running QGIS"))
    if platform == "win32":
        found.append(([os.path.join(sys.base_prefix, "python.exe")], "QGIS's Python installation"))
    import shutil

    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3", "python"):
        path = shutil.which(name)
        if path:
            found.append(([path], f"{name} on PATH"))
    if platform == "win32" and shutil.which("py"):
        found.append((["py", "-3"], "the py launcher"))
    if platform == "darwin":
        for path in ("/Library/Frameworks/Python.framework/Versions/Current/bin/python3",
                     "/opt/homebrew/bin/python3", "/usr/local/bin/python3"):
            found.append(([path], "a python.org or Homebrew Python"))
    unique: dict[str, tuple[list[str], str]] = {}
    for command, how in found:
        unique.setdefault(" ".join(command), (command, how))
    return list(unique.values())


def probe_python(command: Sequence[str], timeout_s: float = 60.0) -> tuple[dict | None, str]:
    """(facts, '') when ``command`` is a Python that can make venvs, else (None, why not)."""
    import subprocess

    try:
        proc = subprocess.run([*command, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s,
                              env=process.clean_environment(), **process.group_options())
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"cannot run ({e})"
    if proc.returncode != 0:
        if "ensurepip" in proc.stderr or "venv" in proc.stderr:
            return None, "has no venv/ensurepip (on Debian/Ubuntu: apt install python3-venv)"
        return None, f"fails ({(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]})"
    try:
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, "did not answer like a Python"
    if tuple(facts["version"][:2]) < MIN_PYTHON:
        return None, f"is Python {'.'.join(map(str, facts['version']))}; the backend needs 3.10 or newer"
    return facts, ""


def find_python(explicit: str = "") -> tuple[list[str], dict, str]:
    """(command, facts, how found) of the first suitable Python; InstallError listing what was tried."""
    tried = []
    for command, how in python_candidates(explicit):
        facts, why = probe_python(command)
        if facts is not None:
            base = facts["base"] if facts.get("in_venv") and facts.get("base") else None
            return ([base] if base else list(command)), facts, how
        tried.append(f"{' '.join(command)} ({how}): {why}")
    raise InstallError("No suitable Python (3.10 or newer, with venv) was found to create the backend "
                       "environment. Tried:\n  " + "\n  ".join(tried or ["nothing on PATH"]) +
                       "\nInstall Python 3 (python.org, or your system's packages) or choose one in the "
                       "install options.")


class Installer:
    """Runs the install steps for :class:`InstallOptions`, reporting lines and progress, honouring cancel."""

    def __init__(self, options: InstallOptions, on_line: Callable[[str], None] | None = None,
                 on_progress: Callable[[float, str], None] | None = None,
                 is_canceled: Callable[[], bool] | None = None) -> None:
        self.options = options
        self.home = Path(options.home)
        self.venv = self.home / "venv"
        self.on_line = on_line
        self.on_progress = on_progress
        self.is_canceled = is_canceled or (lambda: False)
        self._done_weight = 0.0
        self._log_file = None

    @property
    def log_path(self) -> Path:
        """The install log (appended to by every run)."""
        return self.home / LOG

    def say(self, line: str) -> None:
        """A line for the user: the log file and the caller."""
        if self._log_file is not None:
            self._log_file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            self._log_file.flush()
        if self.on_line is not None:
            self.on_line(line)

    def _progress(self, fraction_of_step: float, weight: float, title: str) -> None:
        if self.on_progress is not None:
            self.on_progress(min(1.0, self._done_weight + weight * max(0.0, min(1.0, fraction_of_step))), title)

    def run(self) -> dict:
        """Install or repair; returns the record written to ``install.json``. Raises InstallError/InstallCanceled."""
        self.home.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.home / RECORD).unlink()  # from now on the managed backend counts only once this run completes
        with open(self.log_path, "a", encoding="utf-8") as log:
            self._log_file = log
            try:
                self.say(f"--- SAIG backend install {time.strftime('%Y-%m-%d %H:%M:%S')} into {self.home}")
                return self._run_steps()
            except InstallCanceled:
                self.say("canceled: run Install backend again to finish (it repairs what is there)")
                raise
            except InstallError as e:
                self.say(f"failed: {e}")
                raise
            finally:
                self._log_file = None

    def _run_steps(self) -> dict:
        wheel = Path(self.options.wheel) if self.options.wheel else shipped_wheel()
        if not wheel.is_file():
            raise InstallError(f"The backend wheel {wheel} does not exist.")
        base_command, facts, how = self._base_python()
        choice = self._torch_choice()
        self.say(f"torch: {choice.describe()}")
        python = venv_python(self.venv)
        venv_command = self._venv_command(base_command)
        if venv_command is None:
            self.say(f"the virtual environment {self.venv} is usable: kept")
            self._done_weight += 0.05
        else:
            self._run(Step("Creating the virtual environment", venv_command, 0.05))
        (self.venv / MARKER).write_text("created by the SAIG Geolocate plugin's backend installer\n", encoding="utf-8")
        self._run(Step(f"Installing torch ({choice.build} build)", self._torch_command(python, choice), 0.55))
        self._run(Step(f"Installing the SAIG backend ({wheel.name})",
                       [str(python), "-m", "pip", "install", *self._pip_options(), str(wheel)], 0.25))
        self._run(Step("Refreshing the SAIG backend's files",
                       [str(python), "-m", "pip", "install", *self._pip_options(), "--force-reinstall", "--no-deps",
                        str(wheel)], 0.07))
        info = self._check(python)
        record = {"python": str(python), "venv": str(self.venv), "base_python": {"command": base_command,
                  "version": ".".join(map(str, facts["version"])), "found": how}, "torch_choice": asdict(choice),
                  "wheel": wheel.name, "saig": info.get("version"), "torch": info.get("torch"),
                  "device": info.get("device"), "device_name": info.get("device_name"),
                  "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "log": str(self.log_path)}
        tmp = self.home / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.home / RECORD)
        self.say(f"done: saig {record['saig']}, torch {record['torch']} on {record['device_name']}")
        return record

    def _base_python(self) -> tuple[list[str], dict, str]:
        command, facts, how = find_python(self.options.python)
        self.say(f"Python {'.'.join(map(str, facts['version']))} at {' '.join(command)} ({how})")
        return command, facts, how

    def _torch_choice(self) -> torch_choice.TorchChoice:
        gpus, note = torch_choice.query_gpus(self.options.nvidia_smi or None)
        self.say(note)
        automatic = torch_choice.choose_torch(gpus, note)
        if self.options.torch_requirement.strip() or self.options.torch_index_url.strip():
            return torch_choice.custom_choice(self.options.torch_requirement.strip() or "torch",
                                              self.options.torch_index_url, automatic)
        return automatic

    def _venv_command(self, base_command: list[str]) -> list[str] | None:
        """Create the venv; recreate one of ours whose Python no longer runs; refuse a foreign folder."""
        python = venv_python(self.venv)
        if self.venv.exists():
            if not (self.venv / MARKER).exists() and any(self.venv.iterdir()):
                raise InstallError(f"{self.venv} exists and was not created by this installer: move it away or "
                                   f"set {HOME_ENV} to another folder (nothing was changed).")
            facts, why = probe_python([str(python)]) if python.exists() else (None, "missing")
            if facts is not None:
                return None
            self.say(f"the virtual environment's Python {python} is broken ({why}): recreating it")
            return [*base_command, "-m", "venv", "--clear", str(self.venv)]
        return [*base_command, "-m", "venv", str(self.venv)]

    def _pip_options(self) -> list[str]:
        options = ["--no-input", "--disable-pip-version-check"]
        if self.options.no_index:
            options.append("--no-index")
        if self.options.find_links.strip():
            options += ["--find-links", self.options.find_links.strip()]
        return options

    def _torch_command(self, python: Path, choice: torch_choice.TorchChoice) -> list[str]:
        command = [str(python), "-m", "pip", "install", *self._pip_options()]
        if choice.index_url and not self.options.no_index:
            command += ["--index-url", choice.index_url]
        if self._installed_but_broken(python, "torch"):
            self.say("torch is installed but does not import: reinstalling it")
            command.append("--force-reinstall")
        return [*command, choice.requirement]

    def _installed_but_broken(self, python: Path, module: str) -> bool:
        import subprocess

        check = (f"import importlib.metadata as m, importlib, sys\ntry: m.version('{module}')\n"
                 f"except m.PackageNotFoundError: sys.exit(0)\nimportlib.import_module('{module}')")
        try:
            proc = subprocess.run([str(python), "-c", check], capture_output=True, timeout=300,
                                  env=process.clean_environment(), **process.group_options())
        except (OSError, subprocess.SubprocessError):
            return False
        return proc.returncode != 0

    def _run(self, step: Step) -> list[str]:
        """Run one step, streaming its lines; InstallError on a non-zero exit, InstallCanceled on cancel."""
        self.say(f"== {step.title}")
        self._progress(0.0, step.weight, step.title)
        try:
            proc = process.start(step.command, cwd=str(self.home), env=self._pip_environment())
        except OSError as e:
            raise InstallError(f"{step.title}: cannot start {step.command[0]} ({e.strerror or e})") from None
        lines: queue.Queue = queue.Queue()
        readers = process.start_readers(proc, lines)
        output: list[str] = []
        try:
            self._follow(step, lines, output)
            while proc.poll() is None:
                self._raise_if_canceled()
                time.sleep(0.1)
        except BaseException:
            process.terminate(proc)
            raise
        finally:
            for reader in readers:
                reader.join(1.0)
            proc.stdout.close()
            proc.stderr.close()
        if proc.returncode != 0:
            tail = "\n".join(output[-8:])
            raise InstallError(f"{step.title} failed (exit code {proc.returncode}):\n{tail}\n"
                               f"Full log: {self.log_path}")
        self._done_weight += step.weight
        self._progress(0.0, 0.0, step.title)
        return output

    def _follow(self, step: Step, lines: queue.Queue, output: list[str]) -> None:
        """Stream a step's lines; pip's 'Collecting' and 'Installing' lines move the step's progress."""
        open_streams, collected = 2, 0
        while open_streams:
            self._raise_if_canceled()
            try:
                _, line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            output.append(line)
            self.say(line)
            if line.startswith("Collecting ") or line.startswith("Requirement already satisfied"):
                collected += 1
                self._progress(0.7 * (1 - 0.85 ** collected), step.weight, step.title)
            elif line.startswith("Installing collected packages"):
                self._progress(0.8, step.weight, step.title)

    def _raise_if_canceled(self) -> None:
        if self.is_canceled():
            raise InstallCanceled("Canceled: the backend install was stopped. Run Install backend again to "
                                  "finish it.")

    def _pip_environment(self) -> dict:
        env = process.clean_environment()
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_PROGRESS_BAR="off")
        return env

    def _check(self, python: Path) -> dict:
        """``saig backend-info --json`` in the new environment: versions and device."""
        output = self._run(Step("Checking the backend",
                                [str(python), "-m", "saig_core", "--progress", "json", "backend-info", "--json"], 0.08))
        for line in reversed(output):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "result":
                    return event
        raise InstallError(f"The installed backend answered backend-info without a result. Full log: {self.log_path}")


def default_profile() -> Path:
    """The profile this module is installed in (``<profile>/python/plugins/<plugin>``), else QGIS's default one."""
    package = Path(__file__).resolve().parent
    if package.parent.name == "plugins" and package.parent.parent.name == "python":
        return package.parent.parent.parent
    if sys.platform == "win32":
        root = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support"
    else:
        root = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return root / "QGIS" / "QGIS3" / "profiles" / "default"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m qgis_saig_plugin.backend_install",
                                description="Install, repair or upgrade the SAIG backend the QGIS plugin uses "
                                            "(a venv in the QGIS profile folder; no QGIS needed).")
    p.add_argument("--profile", type=Path, default=None,
                   help="QGIS profile folder (default: the one this plugin is installed in, else QGIS's default)")
    p.add_argument("--python", default="", help="Python to create the venv with (default: found automatically)")
    p.add_argument("--torch", default="", metavar="REQUIREMENT",
                   help="torch requirement or wheel file instead of the automatic choice, e.g. torch==2.13.0")
    p.add_argument("--torch-index-url", default="", metavar="URL",
                   help="package index for torch (default: the automatic choice's, or pip's configuration)")
    p.add_argument("--find-links", default="", metavar="DIR_OR_URL", help="a folder of wheels offered to pip")
    p.add_argument("--no-index", action="store_true", help="offline: no package index, only --find-links")
    p.add_argument("--wheel", default="", help="backend wheel (default: the one shipped in the plugin)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: install into the profile's ``saig_backend``; exit 0 ok, 1 failed, 130 canceled."""
    args = _parser().parse_args(argv)
    profile = (args.profile or default_profile()).expanduser()
    options = InstallOptions(home=managed_home(profile), python=args.python, torch_requirement=args.torch,
                             torch_index_url=args.torch_index_url, find_links=args.find_links,
                             no_index=args.no_index, wheel=args.wheel)
    print(f"installing the SAIG backend into {options.home} (QGIS profile {profile})", flush=True)
    installer = Installer(options, on_line=lambda line: print(line, flush=True),
                          on_progress=lambda f, step: None)
    try:
        record = installer.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"the plugin now uses {record['python']} (log: {installer.log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
