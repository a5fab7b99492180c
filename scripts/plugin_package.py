#!/usr/bin/env python3
"""Package and install the QGIS plugin (standard library only; used by `make plugin-zip` / `make install-plugin`).

    plugin_package.py zip OUT.zip [--python PY] [--wheel WHEEL]
        One top-level folder ``qgis_saig_plugin/`` with the package, metadata.txt, LICENSE and icon.png,
        which QGIS's "Install from ZIP" accepts, and the backend (this project) as a wheel in
        ``qgis_saig_plugin/wheels/`` for the plugin's "Install backend". The wheel is built by
        ``PY -m pip wheel`` from a copy of the project's sources (so stale build/ files never get in),
        or taken from --wheel.
    plugin_package.py install ZIP --profile PROFILE_DIR [--checkout REPO]
        Unpacks into PROFILE_DIR/python/plugins (replacing an older copy), enables the plugin in
        PROFILE_DIR/QGIS/QGIS3.ini [PythonPlugins], and records the checkout in backend.json so the
        plugin finds the backend (REPO/.venv) by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "qgis_saig_plugin"
REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"__pycache__"}
SKIP_FILES = {"backend.json"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
#: What the backend wheel is built from (pyproject.toml names the packages and the version's module).
BACKEND_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "saig_core", "tiling", "synthetic_world", "saig_cli")


def build_backend_wheel(out_dir: Path, python: str) -> Path:
    """``saig_geolocate-VERSION-py3-none-any.whl`` built by pip from a clean copy of the sources."""
    with tempfile.TemporaryDirectory(prefix="saig-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in BACKEND_SOURCES:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / name)
        built = Path(tmp) / "wheels"
        proc = subprocess.run([python, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(built),
                               str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"plugin_package: building the backend wheel failed:\n{proc.stdout}{proc.stderr}")
        wheels = sorted(built.glob("saig_geolocate-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"plugin_package: expected one saig_geolocate wheel, pip made {[w.name for w in wheels]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def build_zip(out: Path, python: str = sys.executable, wheel: Path | None = None) -> Path:
    """Write the plugin ZIP (with the backend wheel) atomically (temp name, then rename)."""
    src = REPO / PACKAGE
    for required in (REPO / "metadata.txt", src / "__init__.py", src / "icon.png"):
        if not required.is_file():
            sys.exit(f"plugin_package: {required} is missing")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="saig-plugin-zip-") as tmp_dir:
        if wheel is None:
            wheel = build_backend_wheel(Path(tmp_dir), python)
        elif not wheel.is_file():
            sys.exit(f"plugin_package: {wheel} is missing")
        _write_zip(out, src, wheel)
    return out


def _write_zip(out: Path, src: Path, wheel: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(src)
                if path.is_dir() or SKIP_DIRS & set(rel.parts) or path.name in SKIP_FILES \
                        or path.suffix in SKIP_SUFFIXES or rel.parts[0] == "wheels":
                    continue
                zf.write(path, f"{PACKAGE}/{rel.as_posix()}")
            zf.write(REPO / "metadata.txt", f"{PACKAGE}/metadata.txt")
            zf.write(REPO / "LICENSE", f"{PACKAGE}/LICENSE")
            zf.write(wheel, f"{PACKAGE}/wheels/{wheel.name}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def enable_in_ini(ini: Path, name: str) -> None:
    """Set ``name=true`` in the [PythonPlugins] section, leaving every other line as it was."""
    lines = ini.read_text(encoding="utf-8").splitlines() if ini.exists() else []
    out, in_section, done = [], False, False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if in_section and not done:
                out.append(f"{name}=true")
                done = True
            in_section = stripped == "[PythonPlugins]"
        elif in_section and stripped.split("=", 1)[0].strip() == name:
            if not done:
                out.append(f"{name}=true")
                done = True
            continue
        out.append(line)
    if not done:
        if not in_section:
            if out and out[-1].strip():
                out.append("")
            out.append("[PythonPlugins]")
        out.append(f"{name}=true")
    ini.parent.mkdir(parents=True, exist_ok=True)
    tmp = ini.with_name(ini.name + ".tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, ini)


def install(zip_path: Path, profile: Path, checkout: Path | None) -> Path:
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saig_install_", dir=plugins))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(staging)
        new = staging / PACKAGE
        if checkout is not None:
            venv = checkout / ".venv"
            python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
            (new / "backend.json").write_text(
                json.dumps({"checkout": str(checkout), "python": str(python)}, indent=2) + "\n", encoding="utf-8")
        target = plugins / PACKAGE
        if target.exists():
            old = staging / "old"
            os.replace(target, old)
        os.replace(new, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    enable_in_ini(profile / "QGIS" / "QGIS3.ini", PACKAGE)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    z = sub.add_parser("zip", help="build the plugin ZIP")
    z.add_argument("out", type=Path)
    z.add_argument("--python", default=sys.executable, help="Python whose pip builds the backend wheel")
    z.add_argument("--wheel", type=Path, default=None, help="use this backend wheel instead of building one")
    i = sub.add_parser("install", help="install the ZIP into a QGIS profile and enable it")
    i.add_argument("zip", type=Path)
    i.add_argument("--profile", type=Path, required=True,
                   help="QGIS profile folder, e.g. ~/.local/share/QGIS/QGIS3/profiles/default")
    i.add_argument("--checkout", type=Path, default=None, help="repository whose .venv is the backend")
    args = parser.parse_args(argv)
    if args.command == "zip":
        print(build_zip(args.out, args.python, args.wheel))
    else:
        target = install(args.zip, args.profile.expanduser(), args.checkout.resolve() if args.checkout else None)
        print(f"installed {target} and enabled it in {args.profile / 'QGIS' / 'QGIS3.ini'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
