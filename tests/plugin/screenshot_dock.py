"""Open a QGIS-like window (map canvas + SAIG dock) with a run's results and save a screenshot.

Run by test_dock.py under Xvfb (a real X server, not the offscreen platform):
    xvfb-run -a /usr/bin/python3 screenshot_dock.py RESULTS.json ORTHO.tif OUT.png
RESULTS.json holds the outputs of saig:geolocatephotos (OUTPUT, EXIF_OUTPUT, HEATMAPS, PHOTOS_LOCATED).
"""
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]


def main() -> int:
    results_path, ortho, out = sys.argv[1:4]
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    from conftest import isolate_settings

    profile = tempfile.mkdtemp(prefix="saig-shot-profile-")
    isolate_settings(profile)
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], True, profile)
    app.initQgis()
    from qgis.gui import QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QMainWindow, QVBoxLayout, QWidget

    from qgis_saig_plugin.dock import SaigDock

    window = QMainWindow()
    window.setWindowTitle("SAIG Geolocate")
    central = QWidget()
    layout = QVBoxLayout(central)
    bar = QgsMessageBar()
    canvas = QgsMapCanvas()
    canvas.setCanvasColor(Qt.white)
    layout.addWidget(bar)
    layout.addWidget(canvas, 1)
    window.setCentralWidget(central)
    project = QgsProject.instance()
    base = QgsRasterLayer(ortho, "orthophoto")
    project.addMapLayer(base)
    canvas.setDestinationCrs(base.crs())
    canvas.setLayers([base])
    dock = SaigDock(canvas, bar, lambda: [])
    window.addDockWidget(Qt.RightDockWidgetArea, dock)
    window.resize(1280, 720)
    window.show()

    results = json.loads(Path(results_path).read_text())
    dock.index_dir.setFilePath(results.get("INDEX", ""))
    dock.photos.setFilePath(" ".join(f'"{p}"' for p in results.get("PHOTOS", [])))
    dock.progress.setValue(100)
    dock.message_bar.pushSuccess("SAIG", dock.show_results(results))
    order = [layer for layer in project.layerTreeRoot().layerOrder()]
    canvas.setLayers(order)
    dock.table.selectRow(0)

    rendered = []
    canvas.mapCanvasRefreshed.connect(lambda: rendered.append(True))
    canvas.refresh()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not rendered:
        app.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    ok = window.grab().save(out)
    print(json.dumps({"saved": ok, "rendered": bool(rendered), "rows": dock.table.rowCount(),
                      "layers": [layer.name() for layer in order]}), flush=True)
    bar.clearWidgets()
    project.clear()
    window.close()
    del dock, window, canvas, bar
    app.processEvents()
    app.exitQgis()
    return 0 if ok and rendered else 1


if __name__ == "__main__":
    sys.exit(main())
