"""The QGIS plugin object: registers the "SAIG" Processing provider and, with a GUI, the dock."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

try:  # Qt6 (QGIS 4): QAction lives in QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:  # Qt5 (QGIS 3): in QtWidgets
    from qgis.PyQt.QtWidgets import QAction

from .provider import ICON_PATH, SaigProvider

MENU = "&SAIG Geolocate"


class SaigPlugin:
    """Created by QGIS through ``classFactory``. Headless (qgis_process) only ``initProcessing`` runs."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: SaigProvider | None = None
        self.dock = None
        self.actions: list[QAction] = []

    def initProcessing(self) -> None:
        """Register the "SAIG" Processing provider (also headless, in qgis_process)."""
        if self.provider is None:
            self.provider = SaigProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """Add the dock (hidden), its toolbar button and the menu entries."""
        self.initProcessing()
        if self.iface is None:
            return
        from .dock import SaigDock

        self.dock = SaigDock(self.iface.mapCanvas(), self.iface.messageBar(),
                             lambda: self.iface.layerTreeView().selectedLayers(), self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()

        show = QAction(QIcon(ICON_PATH), "SAIG Geolocate", self.iface.mainWindow())
        show.setCheckable(True)
        show.setToolTip("Where was this photo taken? Show the SAIG Geolocate dock")
        show.toggled.connect(self.dock.setUserVisible)
        self.dock.openedStateChanged.connect(show.setChecked)  # not visibility: a tabbed dock stays open
        check = QAction("Check backend", self.iface.mainWindow())
        check.triggered.connect(self._check_backend)
        self.iface.addToolBarIcon(show)
        for action in (show, check):
            self.iface.addPluginToMenu(MENU, action)
        self.actions = [show, check]

    def _check_backend(self) -> None:
        self.dock.setUserVisible(True)
        self.dock.check_backend()

    def unload(self) -> None:
        """Remove everything initGui and initProcessing added; a running job is canceled."""
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
        self.actions = []
        if self.dock is not None:
            self.dock.cancel()
            self.dock.install_panel.cancel()  # the install's process tree stops; nothing half-done is used
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
