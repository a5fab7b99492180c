"""A GDAL VRT mosaic of north-up rasters sharing one CRS and pixel size, written without GDAL's utilities.

Used by the benchmarks (a large mosaic that repeats one file) and the tests (a ``.vrt`` input); the
result is what ``gdalbuildvrt`` writes for such inputs: one ``SimpleSource`` per raster and band,
the first given on top (listed last, as VRT sources paint in order).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio


def write_mosaic_vrt(placements: Sequence[tuple[str | os.PathLike, float, float]], out: str | os.PathLike) -> Path:
    """Write ``out``: each (raster, x, y) placed with its upper-left corner at (x, y) in the first raster's
    CRS (a raster may be placed several times). Returns ``out``."""
    out = Path(out)
    metas = []
    for path, x, y in placements:
        with rasterio.open(path) as ds:
            metas.append((Path(path).resolve(), x, y, ds.width, ds.height, ds.count, ds.dtypes[0], ds.transform.a,
                          -ds.transform.e, ds.crs.to_wkt(), ds.block_shapes[0], list(ds.colorinterp)))
    res_x, res_y, crs = metas[0][7], metas[0][8], metas[0][9]
    west = min(m[1] for m in metas)
    north = max(m[2] for m in metas)
    east = max(m[1] + m[3] * res_x for m in metas)
    south = min(m[2] - m[4] * res_y for m in metas)
    width, height = math.ceil((east - west) / res_x - 1e-6), math.ceil((north - south) / res_y - 1e-6)
    count, dtype, interp = metas[0][5], metas[0][6], metas[0][11]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(crs)}</SRS>",
             f"  <GeoTransform>{west!r}, {res_x!r}, 0, {north!r}, 0, {-res_y!r}</GeoTransform>"]
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}[dtype]
    for band in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">')
        lines.append(f"    <ColorInterp>{interp[band - 1].name.capitalize()}</ColorInterp>")
        for path, x, y, w, h, _, _, _, _, _, (bh, bw), _ in reversed(metas):
            col, row = round((x - west) / res_x), round((north - y) / res_y)
            lines += ["    <SimpleSource>",
                      f'      <SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>',
                      f"      <SourceBand>{band}</SourceBand>",
                      f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{gdal_type}" '
                      f'BlockXSize="{bw}" BlockYSize="{bh}" />',
                      f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />',
                      f'      <DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}" />',
                      "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    out.write_text("\n".join(lines) + "\n")
    return out
