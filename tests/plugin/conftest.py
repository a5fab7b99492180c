"""QGIS plugin tests: real QGIS (one QgsApplication per process), real backend subprocesses.

Run with QGIS's Python, not the backend's venv:
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 -m pytest tests/plugin -q -p no:cacheprovider

QGIS settings go to a temporary profile, so the user's QGIS profile is never touched. The backend is
this checkout's .venv (SAIG_PYTHON). Test data is generated: a small UTM GeoTIFF written with GDAL,
tiny untrained saig_micro checkpoints and JPEG photos with EXIF GPS written by the backend's Python,
and a reference index built by the real ``saig index build``.
"""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BACKEND_PYTHON = REPO / ".venv" / "bin" / "python"
ARTIFACTS = REPO / "test-artifacts"
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"

# The generated orthophoto: EPSG:32633, 1 m pixels, 256 x 256 px; chips of 64 m every 32 m.
ORTHO_CRS = "EPSG:32633"
ORTHO_ORIGIN = (500000.0, 5000256.0)  # top-left corner, metres
ORTHO_PIXELS = 256
CHIP_M, STRIDE_M = 64.0, 32.0

try:
    import qgis.core  # noqa: F401  (QGIS's own Python: /usr/bin/python3 with python3-qgis)

    HAVE_QGIS = True
except ImportError:  # e.g. the backend's venv collecting all of tests/: nothing here can run there
    HAVE_QGIS = False
    collect_ignore_glob = ["test_*.py"]

_SESSION_TMP = ""
if HAVE_QGIS:
    os.environ["SAIG_PYTHON"] = str(BACKEND_PYTHON)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if QGIS_PLUGINS not in sys.path:
        sys.path.append(QGIS_PLUGINS)
    # One temporary root for the session, removed at the end: pytest's folders (other developers' runs
    # prune the shared /tmp/pytest-of-*), the QGIS profile, and every temporary file QGIS, Processing or
    # the backend make (TMPDIR is inherited by the subprocesses).
    _SESSION_TMP = tempfile.mkdtemp(prefix="saig-plugin-tests-")
    os.environ["TMPDIR"] = _SESSION_TMP
    tempfile.tempdir = _SESSION_TMP
    _PROFILE = os.path.join(_SESSION_TMP, "qgis-profile")
    os.makedirs(_PROFILE)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if _SESSION_TMP and not config.option.basetemp:
        config.option.basetemp = os.path.join(_SESSION_TMP, "pytest")


def pytest_unconfigure(config):
    if _SESSION_TMP:
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def isolate_settings(folder: str) -> None:
    """QgsSettings of this process go to ``folder``, never to the user's QGIS configuration."""
    from qgis.PyQt.QtCore import QCoreApplication, QSettings

    QCoreApplication.setOrganizationName("saig-plugin-tests")
    QCoreApplication.setApplicationName("saig-plugin-tests")
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, folder)


_PROVIDERS: list = []  # Python must hold its providers: otherwise sip drops the subclass and its algorithms


def register_provider() -> None:
    """Register the SAIG provider, as the plugin's initProcessing does."""
    from qgis.core import QgsApplication

    from qgis_saig_plugin.provider import SaigProvider

    provider = SaigProvider()
    _PROVIDERS.append(provider)
    assert QgsApplication.processingRegistry().addProvider(provider)


@pytest.fixture(scope="session", autouse=True)
def qgis_app():
    """One QgsApplication (GUI enabled, offscreen) with Processing and the SAIG provider, for the session."""
    from qgis.core import QgsApplication, QgsProject

    isolate_settings(_PROFILE)
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], True, _PROFILE)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    register_provider()
    yield app
    provider = QgsApplication.processingRegistry().providerById("saig")
    if provider is not None:
        QgsApplication.processingRegistry().removeProvider(provider)
    QgsProject.instance().clear()
    gc.collect()
    app.processEvents()
    app.exitQgis()


@pytest.fixture(scope="session")
def backend_python() -> Path:
    if not BACKEND_PYTHON.exists():
        pytest.fail(f"the backend venv {BACKEND_PYTHON} is missing: run `make venv` first")
    return BACKEND_PYTHON


def run_backend_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real `saig` CLI of the backend venv, with a clean environment (as the plugin runs it)."""
    from qgis_saig_plugin.process import clean_environment

    proc = subprocess.run([str(BACKEND_PYTHON), "-m", "saig_core", *args], capture_output=True, text=True,
                          env=clean_environment(), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"saig {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def write_backend_without_schema(path: Path) -> Path:
    """An executable standing in for a backend older than ``saig schema`` (argparse refuses the command)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    "echo 'usage: saig [-h] [--version] [--progress {auto,bar,json,none}] COMMAND ...' >&2\n"
                    "echo \"saig: error: argument COMMAND: invalid choice: 'schema' (choose from 'info', "
                    "'backend-info', 'tile', 'index', 'locate')\" >&2\n"
                    "exit 2\n")
    path.chmod(0o755)
    return path


def write_ortho(path: Path, seed: int = 1) -> None:
    """A 256 x 256 m RGB GeoTIFF in UTM 33N: random 16 m fields with soft shading, so every chip differs."""
    from osgeo import gdal, osr

    n = ORTHO_PIXELS
    rng = random.Random(seed)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), n, n, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((ORTHO_ORIGIN[0], 1.0, 0.0, ORTHO_ORIGIN[1], 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    block = 16
    colours = [[[rng.randrange(256) for _ in range(3)] for _ in range(n // block)] for _ in range(n // block)]
    for band in range(3):
        rows = bytearray()
        for y in range(n):
            for x in range(n):
                rows.append((colours[y // block][x // block][band] + (x % block + y % block)) % 256)
        ds.GetRasterBand(band + 1).WriteRaster(0, 0, n, n, bytes(rows))
    ds.FlushCache()
    ds = None


def utm_to_lonlat(x: float, y: float) -> tuple[float, float]:
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsPointXY, QgsProject

    xform = QgsCoordinateTransform(QgsCoordinateReferenceSystem(ORTHO_CRS),
                                   QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    p = xform.transform(QgsPointXY(x, y))
    return p.x(), p.y()


@dataclass
class World:
    """Everything a plugin test needs, generated once per session."""

    root: Path
    ortho: Path
    checkpoint: Path        # records an aerial footprint of CHIP_M metres
    other_checkpoint: Path  # records none (as checkpoints written before footprints were recorded)
    photos: list            # JPEGs: two with EXIF GPS, one without
    exif: dict              # photo path -> (lon, lat, heading)
    bad_photo: Path         # a .jpg that is not an image
    index: Path | None = None  # built with `checkpoint` by the real `saig index build` (the `world` fixture)


@pytest.fixture(scope="session")
def assets(backend_python, tmp_path_factory) -> World:
    """Orthophoto, two different untrained checkpoints and photos (no index yet)."""
    root = tmp_path_factory.mktemp("world")
    ortho = root / "ortho.tif"
    write_ortho(ortho)
    photos_dir = root / "photos"
    photos_dir.mkdir()
    exif = {}
    spec_photos = []
    for i, (px, py, heading) in enumerate([(100, 100, 45.0), (200, 60, 270.0), (None, None, None)]):
        path = photos_dir / f"photo_{i + 1}.jpg"
        gps = None
        if px is not None:
            lon, lat = utm_to_lonlat(ORTHO_ORIGIN[0] + px, ORTHO_ORIGIN[1] - py)
            gps = [lon, lat, heading]
            exif[str(path)] = (lon, lat, heading)
        spec_photos.append({"path": str(path), "seed": 10 + i, "size": [256, 64], "gps": gps})
    spec = {"checkpoints": [{"path": str(root / "micro.pt"), "seed": 0, "aerial_footprint_m": CHIP_M},
                            {"path": str(root / "other.pt"), "seed": 1}],
            "photos": spec_photos}
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([str(backend_python), str(Path(__file__).with_name("make_backend_fixtures.py")), str(spec_path)],
                   check=True, timeout=300)
    bad = root / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG at all")
    return World(root, ortho, root / "micro.pt", root / "other.pt",
                 [str(photos_dir / f"photo_{i}.jpg") for i in (1, 2, 3)], exif, bad)


@pytest.fixture(scope="session")
def world(assets) -> World:
    """The assets plus a reference index built from the orthophoto with `checkpoint`."""
    index = assets.root / "index"
    run_backend_cli("index", "build", str(assets.ortho), "--checkpoint", str(assets.checkpoint),
                    "--chip-size-m", str(CHIP_M), "--stride-m", str(STRIDE_M), "--out", str(index),
                    "--device", "cpu", "--json")
    return World(**{**assets.__dict__, "index": index})


HEAVY_MODULES = ("torch", "faiss", "rasterio", "geopandas", "onnxruntime")


@pytest.fixture(autouse=True)
def qgis_process_stays_thin():
    """After every test: the QGIS process has not imported the backend's heavy libraries."""
    yield
    loaded = [m for m in HEAVY_MODULES if m in sys.modules]
    assert not loaded, f"imported into QGIS's Python: {loaded}"


def wait_until(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    """Process Qt events until predicate() is true (tasks finish through the event loop)."""
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        QCoreApplication.processEvents()
        time.sleep(0.02)


class SignalRecorder:
    """Collects the arguments of every emission of a Qt signal."""

    def __init__(self, signal) -> None:
        self.calls: list[tuple] = []
        signal.connect(lambda *args: self.calls.append(args))

    def wait(self, timeout: float = 120.0) -> tuple:
        wait_until(lambda: bool(self.calls), timeout, "the signal")
        return self.calls[-1]


def write_backend_that_stops_after_two_photos(path: Path, death: str) -> Path:
    """A backend that answers like the real one but whose ``locate`` stops after two photos' results.

    Every other command runs the real backend; ``locate`` runs it too but passes on only its output up
    to the second result line, then stops the real backend (SIGTERM to its process group: no cleanup,
    as after a crash) and ``death`` happens: e.g. ``exit 1`` after a traceback (a crash) or
    ``kill -9 $$`` (killed by a signal, as by the out-of-memory killer).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    real = f"{BACKEND_PYTHON}"
    path.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" locate "*) ;; *) exec "{real}" "$@" ;; esac\n'
        f'"{real}" "$@" | {{ n=0; while IFS= read -r line; do printf "%s\\n" "$line";\n'
        '  case "$line" in *\'"event": "result"\'*) n=$((n+1)); [ $n -ge 2 ] && break ;; esac; done; }\n'
        "echo 'Traceback (most recent call last):' >&2\n"
        "echo 'RuntimeError: the stand-in backend stops here' >&2\n"
        "trap '' TERM; kill -TERM 0\n"
        f"{death}\n")
    path.chmod(0o755)
    return path
