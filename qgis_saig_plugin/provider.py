"""The "SAIG" Processing provider: tileorthophoto, buildindex, geolocatephotos."""
from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import BuildIndexAlgorithm, GeolocatePhotosAlgorithm, TileOrthophotoAlgorithm

ICON_PATH = os.path.join(os.path.dirname(__file__), "icon.png")


class SaigProvider(QgsProcessingProvider):
    """Provider id ``saig``; algorithm ids ``saig:tileorthophoto``, ``saig:buildindex``, ``saig:geolocatephotos``."""

    def id(self) -> str:
        return "saig"

    def name(self) -> str:
        return "SAIG"

    def longName(self) -> str:
        return "SAIG cross-view geolocation"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def loadAlgorithms(self) -> None:
        for algorithm in (TileOrthophotoAlgorithm(), BuildIndexAlgorithm(), GeolocatePhotosAlgorithm()):
            self.addAlgorithm(algorithm)
