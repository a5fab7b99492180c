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
        """The provider id (``saig``), the prefix of its algorithm ids."""
        return "saig"

    def name(self) -> str:
        """The short name shown in the toolbox."""
        return "SAIG"

    def longName(self) -> str:
        """The descriptive name shown in the toolbox."""
        return "SAIG cross-view geolocation"

    def icon(self) -> QIcon:
        """The plugin icon."""
        return QIcon(ICON_PATH)

    def loadAlgorithms(self) -> None:
        """Add the three SAIG algorithms."""
        for algorithm in (TileOrthophotoAlgorithm(), BuildIndexAlgorithm(), GeolocatePhotosAlgorithm()):
            self.addAlgorithm(algorithm)
