"""Writing a synthetic world to files: GeoTIFFs (rasterio), geotagged JPEGs (piexif), truth.csv.

Every writer writes a temporary name in the destination folder and renames it into place, so an
interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthetic_world.world import World, WorldConfig, generate_world, utm_epsg

TRUTH_FIELDS = ("file", "lon", "lat", "x", "y", "heading", "kind")


def world_crs(config: WorldConfig) -> str:
    """The grid CRS of a world: ``config.crs`` or the UTM zone of its centre."""
    return config.crs or f"EPSG:{utm_epsg(config.center_lon, config.center_lat)}"


def make_world(config: WorldConfig) -> World:
    """Generate the world of ``config``, centred on its (lon, lat) projected into its grid CRS."""
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    crs = world_crs(config)
    try:
        projected = CRS.from_user_input(crs).is_projected
    except CRSError as e:  # an unknown or malformed CRS string
        raise ValueError(f"the world's CRS {crs!r} is not a valid CRS ({e})") from None
    if not projected:
        raise ValueError(f"the world's CRS must be projected in metres, got {crs}")
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    cx, cy = to_grid.transform(config.center_lon, config.center_lat)
    return generate_world(config, crs, (float(cx), float(cy)))


def to_lonlat(world: World, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Grid-CRS (x, y) -> (lon, lat) in EPSG:4326 degrees."""
    from pyproj import Transformer

    to_geo = Transformer.from_crs(world.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_geo.transform(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(lon), np.asarray(lat)


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _profile(world: World, count: int, dtype: str, **extra) -> dict:
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    h, w = world.shape
    return dict(driver="GTiff", width=w, height=h, count=count, dtype=dtype, crs=CRS.from_user_input(world.crs),
                transform=Affine(*world.geotransform), tiled=True, blockxsize=256, blockysize=256,
                compress="deflate", BIGTIFF="IF_SAFER", **extra)


def write_orthophoto(path: str | Path, world: World, ortho: np.ndarray) -> Path:
    """RGB uint8 GeoTIFF, 256 px tiles, deflate, with averaged overviews down to ~256 px."""
    import rasterio
    from rasterio.enums import ColorInterp, Resampling

    path = Path(path)
    tmp = _temp(path)
    try:
        with rasterio.open(tmp, "w", **_profile(world, 3, "uint8", predictor=2, photometric="RGB")) as dst:
            dst.write(np.moveaxis(ortho, 2, 0))
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
            factors = [f for f in (2, 4, 8, 16, 32, 64) if min(world.shape) / f >= 128]
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")
            dst.update_tags(SYNTHETIC_SEED=str(world.config.seed), SOURCE="saig synth orthophoto")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_dsm(path: str | Path, world: World) -> Path:
    """Float32 GeoTIFF of the top-surface elevation (metres), deflate with float predictor."""
    import rasterio

    path = Path(path)
    tmp = _temp(path)
    try:
        with rasterio.open(tmp, "w", **_profile(world, 1, "float32", predictor=3)) as dst:
            dst.write(world.dsm, 1)
            dst.set_band_description(1, "surface elevation (m)")
            dst.update_tags(SYNTHETIC_SEED=str(world.config.seed), SOURCE="saig synth DSM")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _dms(value: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """|degrees| as EXIF rationals (d/1, m/1, s*10000/10000), carried so seconds stay < 60."""
    total = int(round(abs(value) * 3600 * 10000))
    d, rest = divmod(total, 3600 * 10000)
    m, s = divmod(rest, 60 * 10000)
    return ((d, 1), (m, 1), (s, 10000))


def gps_exif(lon: float, lat: float, heading_deg: float | None = None, altitude_m: float | None = None,
             focal_35mm: int | None = None) -> bytes:
    """EXIF bytes with a GPS IFD as phones write it: rational D/M/S, N/S and E/W refs, and
    ``GPSImgDirection`` (rational degrees, ref ``T`` = true north); ``FocalLengthIn35mmFilm`` when
    given (how readers infer a photo's field of view)."""
    import piexif

    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"position lon={lon}, lat={lat} is not valid WGS 84")
    gps = {
        piexif.GPSIFD.GPSVersionID: (2, 3, 0, 0),
        piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S",
        piexif.GPSIFD.GPSLatitude: _dms(lat),
        piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W",
        piexif.GPSIFD.GPSLongitude: _dms(lon),
        piexif.GPSIFD.GPSMapDatum: b"WGS-84",
    }
    if altitude_m is not None:
        gps[piexif.GPSIFD.GPSAltitudeRef] = 0 if altitude_m >= 0 else 1
        gps[piexif.GPSIFD.GPSAltitude] = (int(round(abs(altitude_m) * 100)), 100)
    if heading_deg is not None:
        gps[piexif.GPSIFD.GPSImgDirectionRef] = b"T"
        gps[piexif.GPSIFD.GPSImgDirection] = (int(round((heading_deg % 360.0) * 100)) % 36000, 100)
    zeroth = {piexif.ImageIFD.Make: b"SAIG Geolocate", piexif.ImageIFD.Model: b"saig synth camera",
              piexif.ImageIFD.Software: b"saig synth"}
    exif = {piexif.ExifIFD.FocalLengthIn35mmFilm: int(focal_35mm)} if focal_35mm else {}
    return piexif.dump({"0th": zeroth, "Exif": exif, "GPS": gps, "1st": {}, "thumbnail": None})


def write_jpeg(path: str | Path, rgb: np.ndarray, exif: bytes | None = None, quality: int = 92) -> Path:
    """Write an (H, W, 3) uint8 image as JPEG, with the given EXIF bytes when any."""
    from PIL import Image

    path = Path(path)
    tmp = _temp(path)
    try:
        kwargs = {"quality": quality}
        if exif is not None:
            kwargs["exif"] = exif
        Image.fromarray(rgb).save(tmp, format="JPEG", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image as PNG atomically (a temporary file renamed into place)."""
    from PIL import Image

    path = Path(path)
    tmp = _temp(path)
    try:
        Image.fromarray(rgb).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class TruthRow:
    """Ground truth of one photo: position in EPSG:4326 and in the world's grid CRS."""

    file: str
    lon: float
    lat: float
    x: float
    y: float
    heading: float
    kind: str        # "panorama" or "photo"


def write_csv(path: str | Path, fields: tuple[str, ...], rows: list[dict]) -> Path:
    """Write ``rows`` as CSV with a header of ``fields``, atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = _temp(path)
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_truth(path: str | Path, rows: list[TruthRow]) -> Path:
    """truth.csv: lon/lat with 8 decimals (~1 mm), x/y with 3 (mm), heading with 2."""
    return write_csv(path, TRUTH_FIELDS, [
        {"file": r.file, "lon": f"{r.lon:.8f}", "lat": f"{r.lat:.8f}", "x": f"{r.x:.3f}", "y": f"{r.y:.3f}",
         "heading": f"{r.heading:.2f}", "kind": r.kind} for r in rows])


def read_truth(path: str | Path) -> list[TruthRow]:
    """The rows of a truth.csv written by :func:`write_truth`."""
    with open(path, newline="") as f:
        return [TruthRow(file=r["file"], lon=float(r["lon"]), lat=float(r["lat"]), x=float(r["x"]),
                         y=float(r["y"]), heading=float(r["heading"]), kind=r["kind"]) for r in csv.DictReader(f)]

