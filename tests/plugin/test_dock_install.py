"""The dock's Install backend panel: the real installer in a background task, its log streamed, Cancel.

The complete install (real pip, torch, the backend wheel from the plugin ZIP, then a geolocation with
that backend) is in ``test_install_from_zip.py``; these tests stop at the first pip step, which is
enough to see the panel's wiring with real subprocesses.
"""
from __future__ import annotations

import glob
import time

import pytest
from conftest import SignalRecorder, wait_until
from qgis.core import QgsProject
from qgis.gui import QgsMapCanvas, QgsMessageBar

from qgis_saig_plugin import backend, backend_install
from qgis_saig_plugin.dock import SaigDock

TORCH_WHEELS = sorted(glob.glob("/opt/wheels/torch-*.whl"))


@pytest.fixture
def dock(tmp_path, monkeypatch):
    """A dock whose managed backend lives in a temporary folder and whose plugin ships a (dummy) wheel."""
    monkeypatch.setenv(backend_install.HOME_ENV, str(tmp_path / "managed"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "saig_geolocate-0.0.0-py3-none-any.whl").write_bytes(b"not installed by these tests")
    monkeypatch.setattr(backend_install, "WHEELS", wheels)
    bar = QgsMessageBar()
    widget = SaigDock(QgsMapCanvas(), bar, lambda: [])
    yield widget
    if widget.install_panel.is_installing():
        widget.install_panel.cancel()
        wait_until(lambda: not widget.install_panel.is_installing(), 60, "the install to stop")
    QgsProject.instance().clear()
    backend.set_configured_python("")
    bar.clearWidgets()


def test_a_failing_install_step_is_shown_with_the_step_the_pip_output_and_the_log(dock, tmp_path):
    panel = dock.install_panel
    panel.torch_requirement.setText("torch==0.0.0.does.not.exist")
    panel.find_links.setFilePath(str(tmp_path / "empty-wheelhouse"))
    panel.offline.setChecked(True)
    installed = SignalRecorder(dock.backend_installed)
    panel.install_button.click()
    assert panel.is_installing() and not panel.install_button.isEnabled()
    ok, text = installed.wait(180)
    assert not ok
    assert "Installing torch (custom build) failed" in text and "install.log" in text
    shown = panel.log.toPlainText()
    assert "== Creating the virtual environment" in shown and "torch==0.0.0.does.not.exist" in shown  # pip's own
    assert "Python 3." in shown  # the Python found for the venv is reported
    assert backend_install.read_record(tmp_path / "managed") is None  # the plugin does not use a half install
    assert panel.install_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "Installing torch (custom build) failed" in dock.status.text()


@pytest.mark.skipif(not TORCH_WHEELS, reason="no local torch wheel to install from")
def test_cancel_stops_the_install_while_pip_works_and_leaves_no_record(dock, tmp_path):
    panel = dock.install_panel
    panel.torch_requirement.setText(TORCH_WHEELS[0])  # a local wheel: offline, and pip takes a while on it
    panel.find_links.setFilePath(str(tmp_path / "empty-wheelhouse"))
    panel.offline.setChecked(True)
    installed = SignalRecorder(dock.backend_installed)
    panel.install_button.click()
    wait_until(lambda: "== Installing torch" in panel.log.toPlainText(), 180, "the torch step")
    started = time.monotonic()
    panel.cancel_button.click()
    ok, text = installed.wait(60)
    assert not ok and text.startswith("Canceled")
    assert time.monotonic() - started < 20
    assert backend_install.read_record(tmp_path / "managed") is None
    assert "canceled" in (tmp_path / "managed" / "install.log").read_text()


def test_install_options_are_kept_for_the_next_install(dock):
    panel = dock.install_panel
    panel.torch_requirement.setText("torch==2.13.0")
    panel.torch_index.setText("https://download.pytorch.org/whl/cpu")
    panel.offline.setChecked(False)
    options = panel.options()
    assert (options.torch_requirement, options.torch_index_url) == ("torch==2.13.0",
                                                                    "https://download.pytorch.org/whl/cpu")
    again = SaigDock(QgsMapCanvas(), QgsMessageBar(), lambda: []).install_panel
    assert again.torch_requirement.text() == "torch==2.13.0"
    assert again.torch_index.text() == "https://download.pytorch.org/whl/cpu"
    panel.torch_requirement.setText("")
    panel.torch_index.setText("")
    panel.options()


def test_once_installed_the_button_offers_to_repair_or_upgrade(tmp_path, monkeypatch):
    import json
    import sys

    monkeypatch.setenv(backend_install.HOME_ENV, str(tmp_path / "managed"))
    assert SaigDock(QgsMapCanvas(), QgsMessageBar(), lambda: []).install_panel.install_button.text() == \
        "Install backend"
    (tmp_path / "managed").mkdir()
    (tmp_path / "managed" / "install.json").write_text(json.dumps({"python": sys.executable}))
    assert SaigDock(QgsMapCanvas(), QgsMessageBar(), lambda: []).install_panel.install_button.text() == \
        "Repair / upgrade backend"
