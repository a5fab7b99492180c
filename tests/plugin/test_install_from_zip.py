"""The analyst's path, end to end: Install from ZIP into an empty QGIS profile, install the backend with the
plugin's own installer (real pip, real torch), geolocate through Processing (qgis_process) with it, then run
the installer again to repair a damaged backend.

Marked ``install`` (minutes: pip installs torch and the backend's dependencies into a new venv); run it
with ``make test-plugin-install``. Here it installs the CPU torch wheel found in /opt/wheels (the
installer's torch-requirement option, as an offline user would) and the other dependencies from pip's
configured indexes; elsewhere it lets the installer choose torch for the machine.
"""
from __future__ import annotations

import configparser
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from qgis.core import QgsVectorLayer

TORCH_WHEELS = sorted(glob.glob("/opt/wheels/torch-*cpu*.whl"))
USER_PIP_CONFIG = Path.home() / ".config" / "pip" / "pip.conf"  # this machine's package mirrors, if any


@pytest.mark.install
def test_install_from_zip_then_install_backend_then_geolocate_through_processing(world, tmp_path):
    home = tmp_path / "home"
    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    archive = tmp_path / "qgis_saig_plugin.zip"
    subprocess.run([sys.executable, str(REPO / "scripts" / "plugin_package.py"), "zip", str(archive)], check=True,
                   capture_output=True, timeout=600)
    subprocess.run([sys.executable, str(REPO / "scripts" / "plugin_package.py"), "install", str(archive),
                    "--profile", str(profile)], check=True, capture_output=True, timeout=120)  # no checkout
    plugins = profile / "python" / "plugins"
    assert not (plugins / "qgis_saig_plugin" / "backend.json").exists()  # nothing points at this checkout
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "SAIG_", "PIP_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    env.update(HOME=str(home), QT_QPA_PLATFORM="offscreen", PATH="/usr/bin:/bin")  # no saig on PATH either
    if USER_PIP_CONFIG.exists():
        env["PIP_CONFIG_FILE"] = str(USER_PIP_CONFIG)

    # The Processing-free install command of docs/plugin.md, run from the installed plugin.
    torch = ["--torch", TORCH_WHEELS[0]] if TORCH_WHEELS else []
    install = subprocess.run([sys.executable, "-m", "qgis_saig_plugin.backend_install", *torch], cwd=plugins,
                             env=env, capture_output=True, text=True, timeout=3000)
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    backend_home = profile / "saig_backend"
    record = json.loads((backend_home / "install.json").read_text())
    assert Path(record["python"]).is_relative_to(backend_home / "venv")
    assert record["wheel"].startswith("saig_geolocate-") and record["torch"] and record["device"] == "cpu"
    cfg = configparser.ConfigParser()
    cfg.read_string("[venv]\n" + (backend_home / "venv" / "pyvenv.cfg").read_text())
    assert cfg["venv"]["include-system-site-packages"] == "false"  # QGIS's own packages never leak in
    assert "Python 3." in install.stdout and "torch:" in install.stdout  # what was found and chosen, reported
    assert (backend_home / "install.log").stat().st_size > 0

    listed = subprocess.run(["/usr/bin/qgis_process.bin", "plugins"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "* qgis_saig_plugin" in listed.stdout, listed.stdout + listed.stderr
    out = tmp_path / "out.gpkg"
    proc = subprocess.run(["/usr/bin/qgis_process.bin", "run", "saig:geolocatephotos", "--",
                           f"PHOTOS={os.path.dirname(world.photos[0])}", f"INDEX={world.index}", "TOP_K=3",
                           "DEVICE=2", f"OUTPUT={out}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    layer = QgsVectorLayer(str(out), "out", "ogr")
    assert layer.isValid() and layer.featureCount() == 3 * 3

    # Running the installer again repairs: a backend file lost from the venv is put back from the wheel.
    lost = next((backend_home / "venv").glob("lib/python3*/site-packages/tiling/photos.py"))
    lost.unlink()
    again = subprocess.run([sys.executable, "-m", "qgis_saig_plugin.backend_install", *torch], cwd=plugins,
                           env=env, capture_output=True, text=True, timeout=3000)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert lost.is_file() and "usable: kept" in again.stdout  # the venv itself was kept
    assert json.loads((backend_home / "install.json").read_text())["python"] == record["python"]


@pytest.mark.install
def test_install_backend_in_the_dock_streams_pip_then_checks_the_new_backend(tmp_path, monkeypatch):
    import zipfile

    from conftest import SignalRecorder, wait_until
    from qgis.core import QgsProject
    from qgis.gui import QgsMapCanvas, QgsMessageBar

    from qgis_saig_plugin import backend, backend_install
    from qgis_saig_plugin.dock import SaigDock

    archive = tmp_path / "qgis_saig_plugin.zip"
    subprocess.run([sys.executable, str(REPO / "scripts" / "plugin_package.py"), "zip", str(archive)], check=True,
                   capture_output=True, timeout=600)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unpacked")
    monkeypatch.setattr(backend_install, "WHEELS", tmp_path / "unpacked" / "qgis_saig_plugin" / "wheels")
    monkeypatch.setenv(backend_install.HOME_ENV, str(tmp_path / "managed"))
    monkeypatch.delenv("SAIG_PYTHON")  # nothing else configured: the installed backend is the one used
    backend.set_configured_python("")
    bar = QgsMessageBar()
    dock = SaigDock(QgsMapCanvas(), bar, lambda: [])
    try:
        dock.checkpoint.setFilePath("")
        panel = dock.install_panel
        panel.torch_requirement.setText(TORCH_WHEELS[0] if TORCH_WHEELS else "")
        panel.offline.setChecked(False)
        installed, checked = SignalRecorder(dock.backend_installed), SignalRecorder(dock.backend_checked)
        panel.install_button.click()
        wait_until(lambda: "Installing collected packages" in panel.log.toPlainText(), 1500, "pip to install")
        assert 0 < panel.progress.value() < 100  # progress moves with pip's output
        ok, text = installed.wait(3000)
        assert ok, text + "\n" + panel.log.toPlainText()[-3000:]
        assert "installed saig" in text and panel.install_button.text() == "Repair / upgrade backend"
        assert backend.locate_backend().source == backend.managed_source()
        ok, info = checked.wait(300)  # Check backend runs by itself after the install
        assert ok and info.startswith("saig ") and "torch" in info, info
        assert "== Installing the SAIG backend (saig_geolocate-" in panel.log.toPlainText()
    finally:
        QgsProject.instance().clear()
        bar.clearWidgets()
