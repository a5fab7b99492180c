"""What the geospatial commands accept and write, in one place: the contract their callers rely on.

``saig schema --json`` prints :func:`contract`, which is how the QGIS plugin learns which photo
files the backend reads and which columns its outputs hold, instead of keeping copies of its own.
"""
from __future__ import annotations

from typing import Any

from saig_core.runtime.choices import DEVICES, PRECISIONS
from tiling.photos import photo_suffixes
from tiling.search import INDEX_KINDS

#: Files a folder given to ``saig tile`` / ``saig index build`` is searched for (recursively); a ``.vrt``
#: mosaic is read as one raster by GDAL. Files given by name or glob may have any suffix GDAL reads.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".ecw", ".sid")
#: ``saig locate`` output: layer ``candidates`` (points in EPSG:4326), column -> type.
CANDIDATE_COLUMNS: dict[str, str] = {
    "photo": "str", "rank": "int", "score": "float", "chip_id": "str", "faiss_id": "int", "lon": "float",
    "lat": "float", "x": "float", "y": "float", "distance_m": "float", "grid_crs": "str",
    "heading_deg": "float", "heading_estimated": "int", "confidence": "float", "refined_lon": "float",
    "refined_lat": "float", "refined_x": "float", "refined_y": "float", "refined_score": "float",
    "uncertainty_m": "float",
}
#: What ``saig locate`` adds to each candidate after retrieval (``tiling.assess``): ``confidence``, the probability
#: that the true position is within 25 m of the candidate's reported position (the refined one when refined),
#: calibrated per checkpoint; the refined position (EPSG:4326 and grid CRS) and score of the best distinct places
#: re-scored on a fine grid, and their uncertainty radius in metres (null for candidates not refined).
ASSESSMENT_FIELDS = ("confidence", "refined_lon", "refined_lat", "refined_x", "refined_y", "refined_score",
                     "uncertainty_m")
#: The per-candidate fields of a ``locate --json`` result line (``x``/``y`` are in ``grid_crs``). ``heading_deg``
#: is the photo's heading (of its centre column, degrees from north) the candidate was matched at: the EXIF one,
#: or -- ``heading_estimated`` -- the best rotation of an orientation-aware model's search (null for other models
#: without a heading).
CANDIDATE_RESULT_FIELDS = ("rank", "score", "chip_id", "lon", "lat", "x", "y", "grid_crs", "distance_m",
                           "heading_deg", "heading_estimated", *ASSESSMENT_FIELDS)
#: ``saig locate`` output: layer ``photos`` (EXIF positions in EPSG:4326, or no geometry), column -> type.
#: ``heading`` is true north (converted from ``heading_magnetic`` with ``declination_deg`` when EXIF recorded a
#: magnetic one); ``heading_source`` says where a panorama's heading came from; ``input``/``input_reason`` and
#: ``fov_deg``/``fov_source`` how the photo was read; ``warnings`` what was ignored or assumed.
PHOTO_COLUMNS: dict[str, str] = {
    "photo": "str", "lon": "float", "lat": "float", "heading": "float", "heading_ref": "str",
    "heading_magnetic": "float", "declination_deg": "float", "date": "str", "date_source": "str",
    "heading_source": "str", "input": "str", "input_reason": "str", "fov_deg": "float", "fov_source": "str",
    "top1_chip_id": "str", "top1_lon": "float", "top1_lat": "float", "top1_score": "float",
    "top1_distance_m": "float", "top1_confidence": "float", "heatmap": "str", "warnings": "str",
}


def contract() -> dict[str, Any]:
    """The accepted inputs and written outputs, JSON-able (``saig schema --json``)."""
    return {
        "photo_suffixes": sorted(photo_suffixes()),
        "raster_suffixes": list(RASTER_SUFFIXES),
        "devices": list(DEVICES),
        "precisions": list(PRECISIONS),
        "index_kinds": list(INDEX_KINDS),
        "layers": {"candidates": CANDIDATE_COLUMNS, "photos": PHOTO_COLUMNS},
        "candidate_result_fields": list(CANDIDATE_RESULT_FIELDS),
    }
