"""The plugin as QGIS users get it: metadata, the ZIP, imports, and qgis_process on an installed ZIP."""
from __future__ import annotations

import ast
import configparser
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, register_provider, write_backend_that_stops_after_two_photos
from qgis.core import QgsVectorLayer

PACKAGE = REPO / "qgis_saig_plugin"
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository", "tracker", "homepage", "tags", "category", "icon", "experimental",
                     "hasProcessingProvider")


def build_zip(out: Path) -> Path:
    """The same command `make plugin-zip` runs."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "plugin_package.py"), "zip", str(out)], check=True,
                   capture_output=True)
    return out


def test_metadata_has_every_required_key_and_declares_the_processing_provider():
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    general = meta["general"]
    for key in REQUIRED_METADATA:
        assert general.get(key, "").strip(), key
    assert general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.22"
    assert (PACKAGE / general["icon"]).is_file()
    assert "<" not in general["about"]


def test_plugin_imports_only_pyqgis_and_the_standard_library():
    allowed_roots = set(sys.stdlib_module_names) | {"qgis", "__future__"}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed_roots, f"{path.name} imports {name}"


def test_zip_has_one_top_level_folder_with_metadata_init_and_classfactory(tmp_path):
    archive = build_zip(tmp_path / "qgis_saig_plugin.zip")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"qgis_saig_plugin"}
        for required in ("metadata.txt", "__init__.py", "icon.png", "LICENSE", "provider.py"):
            assert f"qgis_saig_plugin/{required}" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith("backend.json")]
        assert "def classFactory(iface)" in zf.read("qgis_saig_plugin/__init__.py").decode()


def install_into_temporary_home(tmp_path: Path) -> tuple[Path, dict]:
    """Install the ZIP as `make install-plugin` does, into a throwaway HOME (the user's profile is untouched)."""
    home = tmp_path / "home"
    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    archive = build_zip(tmp_path / "qgis_saig_plugin.zip")
    subprocess.run([sys.executable, str(REPO / "scripts" / "plugin_package.py"), "install", str(archive),
                    "--profile", str(profile), "--checkout", str(REPO)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k != "SAIG_PYTHON"}
    env.update(HOME=str(home), QT_QPA_PLATFORM="offscreen")
    return profile, env


def test_install_enables_the_plugin_and_records_the_checkout_backend(tmp_path):
    profile, _ = install_into_temporary_home(tmp_path)
    ini = (profile / "QGIS" / "QGIS3.ini").read_text()
    assert "[PythonPlugins]" in ini and "qgis_saig_plugin=true" in ini
    record = json.loads((profile / "python" / "plugins" / "qgis_saig_plugin" / "backend.json").read_text())
    assert record["python"] == str(REPO / ".venv" / "bin" / "python")


@pytest.mark.slow
def test_qgis_process_geolocates_with_the_installed_zip(world, tmp_path):
    _, env = install_into_temporary_home(tmp_path)
    listed = subprocess.run(["/usr/bin/qgis_process.bin", "plugins"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "* qgis_saig_plugin" in listed.stdout, listed.stdout + listed.stderr
    out = tmp_path / "out.gpkg"
    photos_folder = os.path.dirname(world.photos[0])
    proc = subprocess.run(["/usr/bin/qgis_process.bin", "run", "saig:geolocatephotos", "--",
                           f"PHOTOS={photos_folder}", f"INDEX={world.index}", "TOP_K=3", f"OUTPUT={out}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    layer = QgsVectorLayer(str(out), "out", "ogr")
    assert layer.isValid() and layer.featureCount() == 3 * 3
    assert layer.crs().authid() == "EPSG:4326"


@pytest.mark.slow
def test_qgis_process_reports_a_backend_that_stopped_early_as_a_partial_result(world, tmp_path):
    _, env = install_into_temporary_home(tmp_path)
    env["SAIG_PYTHON"] = str(write_backend_that_stops_after_two_photos(tmp_path / "stops" / "bin" / "python",
                                                                       "kill -9 $$"))
    out = tmp_path / "out.gpkg"
    proc = subprocess.run(["/usr/bin/qgis_process.bin", "run", "saig:geolocatephotos", "--json", "--",
                           f"PHOTOS={os.path.dirname(world.photos[0])}", f"INDEX={world.index}", "TOP_K=2",
                           "DEVICE=2", f"OUTPUT={out}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the located photos are delivered ...
    results = json.loads(proc.stdout[proc.stdout.index("{"):])["results"]
    assert results["PHOTOS_LOCATED"] == 2 and results["PHOTOS_MISSING"] == 1  # ... and the missing one counted
    assert "Partial result: 1 of 3 photos" in proc.stdout + proc.stderr
    assert QgsVectorLayer(str(out), "out", "ogr").featureCount() == 2 * 2


def test_headless_class_factory_registers_and_unregisters_the_provider(qgis_app):
    from qgis.core import QgsApplication

    import qgis_saig_plugin

    registry = QgsApplication.processingRegistry()
    assert registry.removeProvider(registry.providerById("saig"))  # the session's provider, put back below
    try:
        plugin = qgis_saig_plugin.classFactory(None)  # what qgis_process does: no iface
        plugin.initProcessing()
        plugin.initGui()  # harmless without iface
        assert registry.algorithmById("saig:geolocatephotos") is not None
        plugin.unload()
        assert registry.providerById("saig") is None
    finally:
        register_provider()
