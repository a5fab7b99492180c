"""SAIG Geolocate: where was this photo taken? A QGIS plugin (dock + Processing provider "SAIG").

Only PyQGIS and the standard library are imported here; the model runs in the backend CLI.
"""


def classFactory(iface):
    """QGIS entry point; ``iface`` is None when loaded headless by qgis_process."""
    from .plugin import SaigPlugin

    return SaigPlugin(iface)
