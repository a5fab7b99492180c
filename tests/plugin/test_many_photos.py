"""Hundreds of photos in the dock: one collapsed group of heatmaps (only the selected photo's visible) and a
results table that pages, so what a run adds to QGIS does not grow with the number of photos shown.

The run's outputs are written here with GDAL/OGR as the Geolocate algorithm writes them (candidates
GeoPackage with the backend's columns, one Float32 heatmap GeoTIFF per photo, real JPEG photos), and
handed to the dock's ``show_results`` exactly as a finished run hands them.
"""
from __future__ import annotations

import os

import pytest
from conftest import ORTHO_CRS, ORTHO_ORIGIN, utm_to_lonlat
from qgis.core import QgsLayerTreeGroup, QgsLayerTreeLayer, QgsProject
from qgis.gui import QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtGui import QColor, QImage

from qgis_saig_plugin import dock as dock_module
from qgis_saig_plugin.dock import PAGE_ROWS, SaigDock

K = 3


def write_run(folder, photos: int) -> dict:
    """A finished run's outputs for ``photos`` photos, K candidates each, with heading and confidence."""
    from osgeo import gdal, ogr, osr

    folder.mkdir(parents=True)
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32633)
    path = str(folder / "candidates.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = ds.CreateLayer("candidates", wgs84, ogr.wkbPoint)
    columns = [("photo", ogr.OFTString), ("photo_name", ogr.OFTString), ("rank", ogr.OFTInteger),
               ("score", ogr.OFTReal), ("chip_id", ogr.OFTString), ("lon", ogr.OFTReal), ("lat", ogr.OFTReal),
               ("x", ogr.OFTReal), ("y", ogr.OFTReal), ("grid_crs", ogr.OFTString), ("distance_m", ogr.OFTReal),
               ("heading_deg", ogr.OFTReal), ("confidence", ogr.OFTReal), ("heatmap", ogr.OFTString)]
    for name, kind in columns:
        layer.CreateField(ogr.FieldDefn(name, kind))
    layer.StartTransaction()
    for i in range(photos):
        photo = folder / f"IMG_{i:04d}.jpg"
        image = QImage(16, 12, QImage.Format.Format_RGB32)
        image.fill(QColor(i % 256, 80, 160))
        assert image.save(str(photo), "JPG")
        heatmap = str(folder / "heatmaps" / f"IMG_{i:04d}.tif")
        os.makedirs(os.path.dirname(heatmap), exist_ok=True)
        raster = gdal.GetDriverByName("GTiff").Create(heatmap, 8, 8, 1, gdal.GDT_Float32)
        raster.SetGeoTransform((ORTHO_ORIGIN[0], 32.0, 0.0, ORTHO_ORIGIN[1], 0.0, -32.0))
        raster.SetProjection(utm.ExportToWkt())
        raster.GetRasterBand(1).SetNoDataValue(-9999)
        raster.GetRasterBand(1).Fill(0.1 * (i % 10))
        raster = None
        for rank in range(1, K + 1):
            x, y = ORTHO_ORIGIN[0] + 16 + 32 * ((i + rank) % 8), ORTHO_ORIGIN[1] - 16 - 32 * (rank % 8)
            lon, lat = utm_to_lonlat(x, y)
            f = ogr.Feature(layer.GetLayerDefn())
            for name, value in (("photo", str(photo)), ("photo_name", photo.name), ("rank", rank),
                                ("score", 1.0 - rank / 10), ("chip_id", f"c{rank}"), ("lon", lon), ("lat", lat),
                                ("x", x), ("y", y), ("grid_crs", ORTHO_CRS), ("heading_deg", 10.0 * rank),
                                ("confidence", 0.5 / rank), ("heatmap", heatmap)):
                f.SetField(name, value)
            f.SetFieldNull("distance_m")
            f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({lon} {lat})"))
            layer.CreateFeature(f)
    layer.CommitTransaction()
    ds = None
    return {"OUTPUT": path, "PHOTOS_LOCATED": photos, "PHOTOS_FAILED": 0, "PHOTOS_MISSING": 0}


@pytest.fixture
def dock():
    bar = QgsMessageBar()
    widget = SaigDock(QgsMapCanvas(), bar, lambda: [])
    yield widget
    QgsProject.instance().clear()
    bar.clearWidgets()


def shown(dock: SaigDock, results: dict, monkeypatch) -> dict:
    """Show a run's results; count what was added to QGIS and how many thumbnails were decoded."""
    decoded: list[str] = []
    real_thumbnail = dock_module._thumbnail
    monkeypatch.setattr(dock_module, "_thumbnail", lambda path: decoded.append(path) or real_thumbnail(path))
    before = len(QgsProject.instance().mapLayers())
    dock.show_results(results)
    root = QgsProject.instance().layerTreeRoot()
    group = root.children()[0]
    subgroups = [n for n in group.children() if isinstance(n, QgsLayerTreeGroup)]
    heatmap_nodes = [n for n in subgroups[0].children() if isinstance(n, QgsLayerTreeLayer)] if subgroups else []
    return {"layers": len(QgsProject.instance().mapLayers()) - before, "top_level": len(root.children()),
            "subgroups": subgroups, "heatmaps": heatmap_nodes,
            "visible": [n for n in heatmap_nodes if n.isVisible()], "rows": dock.table.rowCount(),
            "decoded": len(decoded)}


def test_300_photos_add_one_collapsed_heatmap_group_one_visible_heatmap_and_a_paged_table(
        dock, tmp_path, monkeypatch):
    small = shown(dock, write_run(tmp_path / "small", 30), monkeypatch)
    QgsProject.instance().clear()
    big = shown(dock, write_run(tmp_path / "big", 300), monkeypatch)

    assert big["top_level"] == 1 and len(big["subgroups"]) == 1  # one results group, one heatmap group in it
    heatmaps = big["subgroups"][0]
    assert heatmaps.name() == "Heatmaps (300)" and not heatmaps.isExpanded()
    assert len(big["heatmaps"]) == 300 and big["layers"] == 300 + 1
    assert [n.name() for n in big["visible"]] == ["SAIG heatmap IMG_0000.jpg"]  # the selected photo's only
    # what is drawn, listed and decoded does not grow with the run: the same for 30 and for 300 photos
    assert len(small["visible"]) == len(big["visible"]) == 1
    assert small["rows"] == 30 * K < PAGE_ROWS and big["rows"] == PAGE_ROWS
    assert big["decoded"] <= PAGE_ROWS // K + 1 and small["decoded"] == 30
    assert dock.page_count() == -(-300 * K // PAGE_ROWS)
    assert dock.page_label.text() == f"page 1 of {dock.page_count()} · {300 * K} candidates"

    dock.next_page.click()
    assert dock.page == 1 and dock.table.rowCount() == PAGE_ROWS and dock.prev_page.isEnabled()
    photo = dock.table.item(0, 0).toolTip()
    assert photo == str(tmp_path / "big" / f"IMG_{PAGE_ROWS // K:04d}.jpg")
    dock.table.selectRow(0)
    visible = [n.name() for n in heatmaps.children() if n.isVisible()]
    assert visible == [f"SAIG heatmap {os.path.basename(photo)}"]
    dock.show_page(dock.page_count() - 1)
    assert dock.table.rowCount() == 300 * K - (dock.page_count() - 1) * PAGE_ROWS and not dock.next_page.isEnabled()


def test_the_table_shows_the_backends_heading_and_confidence_columns_when_present(dock, tmp_path, monkeypatch):
    shown(dock, write_run(tmp_path / "run", 2), monkeypatch)
    headers = [dock.table.horizontalHeaderItem(c).text() for c in range(dock.table.columnCount())]
    assert headers == ["Photo", "Rank", "Score", "Dist. EXIF (m)", "Lon", "Lat", "Heading (°)", "Confidence"]
    assert dock.table.item(0, 6).text() == "10.000" and dock.table.item(0, 7).text() == "0.500"
    assert dock.table.item(0, 3).text() == ""  # no EXIF position: no distance
