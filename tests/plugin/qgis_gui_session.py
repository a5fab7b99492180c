"""Run inside the real QGIS desktop (``qgis --code qgis_gui_session.py``), driven by test_qgis_desktop.py.

The plugin is installed and enabled in a temporary profile; this script finds it among QGIS's loaded
plugins, opens its dock, geolocates photos through the dock with the real backend, saves a screenshot
of the main window and a JSON report, unloads the plugin, then quits QGIS. Settings come from the JSON file named by
SAIG_GUI_SPEC: {"ortho", "index", "photos", "screenshot", "dock_screenshot", "report"}.
"""
import json
import os
import traceback

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtCore import QEventLoop, QTimer
from qgis.utils import active_plugins, iface, plugins, unloadPlugin

with open(os.environ["SAIG_GUI_SPEC"]) as spec_file:
    SPEC = json.load(spec_file)
report = {"loaded": "qgis_saig_plugin" in active_plugins}


def wait_for(signal, timeout_ms: int) -> tuple:
    """Block in a local event loop until ``signal`` fires (or the timeout)."""
    loop, got = QEventLoop(), []
    signal.connect(lambda *args: (got.append(args), loop.quit()))
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    return got[0] if got else (False, "timeout")


def settle(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def run() -> None:
    plugin = plugins["qgis_saig_plugin"]
    dock = plugin.dock
    report["menu_actions"] = [a.text() for a in plugin.actions]
    report["provider"] = QgsApplication.processingRegistry().providerById("saig") is not None
    plugin.actions[0].setChecked(True)  # the toolbar button shows the dock
    report["dock_visible"] = dock.isVisible()

    dock.check_backend_button.click()
    report["backend_checked"] = wait_for(dock.backend_checked, 120000)
    dock.install_panel.findChild(QgsCollapsibleGroupBox).setCollapsed(False)  # the install options, shown

    ortho = QgsRasterLayer(SPEC["ortho"], "orthophoto")
    QgsProject.instance().addMapLayer(ortho)
    iface.mapCanvas().setExtent(ortho.extent())
    dock.index_dir.setFilePath(SPEC["index"])
    dock.photos.setFilePath(" ".join(f'"{p}"' for p in SPEC["photos"]))
    dock.top_k.setValue(5)
    dock.device.setCurrentIndex(2)
    dock.run_button.click()
    ok, text = wait_for(dock.run_finished, 120000)
    report.update(run_ok=ok, run_text=text, rows=dock.table.rowCount(),
                  layers=sorted(layer.name() for layer in QgsProject.instance().mapLayers().values()))
    view = iface.layerTreeView()
    for node in QgsProject.instance().layerTreeRoot().children():
        view.setExpanded(view.node2index(node), node.name().startswith("SAIG results"))
    iface.mapCanvas().refreshAllLayers()
    settle(3000)
    report["screenshot"] = iface.mainWindow().grab().save(SPEC["screenshot"])
    report["dock_screenshot"] = dock.grab().save(SPEC["dock_screenshot"])
    report["unloaded"] = unloadPlugin("qgis_saig_plugin")
    report["provider_after_unload"] = QgsApplication.processingRegistry().providerById("saig") is not None


try:
    run()
except Exception:  # noqa: BLE001 - whatever fails inside QGIS, the report carries it to the test
    report["error"] = traceback.format_exc()
finally:
    with open(SPEC["report"], "w") as f:
        json.dump(report, f)
    QTimer.singleShot(0, QgsApplication.instance().quit)
