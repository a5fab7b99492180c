"""The plugin inside the real QGIS desktop application (under Xvfb), installed from its ZIP."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ARTIFACTS, REPO

SCREENSHOT = ARTIFACTS / "qgis-desktop.png"
DOCK_SCREENSHOT = ARTIFACTS / "qgis-dock.png"  # docs/plugin-dock.png is a copy of it


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xvfb-run") is None or not os.path.exists("/usr/bin/qgis"),
                    reason="needs xvfb-run and the QGIS desktop")
def test_qgis_desktop_loads_the_plugin_and_geolocates_through_its_dock(world, tmp_path):
    profiles = tmp_path / "profiles-root"
    archive = tmp_path / "qgis_saig_plugin.zip"
    package = str(REPO / "scripts" / "plugin_package.py")
    subprocess.run([sys.executable, package, "zip", str(archive)], check=True, capture_output=True)
    subprocess.run([sys.executable, package, "install", str(archive), "--profile",
                    str(profiles / "profiles" / "default"), "--checkout", str(REPO)], check=True, capture_output=True)
    ARTIFACTS.mkdir(exist_ok=True)
    spec = {"ortho": str(world.ortho), "index": str(world.index), "photos": world.photos,
            "screenshot": str(SCREENSHOT), "dock_screenshot": str(DOCK_SCREENSHOT),
            "report": str(tmp_path / "report.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "SAIG_PYTHON")}
    env.update(SAIG_GUI_SPEC=str(tmp_path / "spec.json"), HOME=str(tmp_path / "home"))
    proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "/usr/bin/qgis", "--nologo",
                           "--noversioncheck", "--profiles-path", str(profiles),
                           "--code", str(REPO / "tests" / "plugin" / "qgis_gui_session.py")],
                          env=env, capture_output=True, text=True, timeout=240)
    report_path = tmp_path / "report.json"
    assert report_path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert "error" not in report, report["error"]
    assert report["loaded"] and report["provider"] and report["dock_visible"]
    assert report["menu_actions"] == ["SAIG Geolocate", "Check backend"]
    assert report["run_ok"], report["run_text"]
    assert report["rows"] == 15 and "SAIG candidates" in report["layers"]
    assert report["screenshot"] and SCREENSHOT.stat().st_size > 10_000
    assert report["backend_checked"][0], report["backend_checked"]  # Check backend answered in the dock
    assert report["dock_screenshot"] and DOCK_SCREENSHOT.stat().st_size > 10_000
    assert report["unloaded"] and not report["provider_after_unload"]
