"""What a photo's EXIF says about where, when and how it was taken, tolerating any garbage.

* **Position** (EPSG:4326): ``GPSLatitude``/``GPSLongitude`` with their ``GPSLatitudeRef`` (N/S) and
  ``GPSLongitudeRef`` (E/W). A missing or unknown reference is not guessed: the position is then
  unknown, with a warning. 0, 0 (an unset fix) and out-of-range values are refused likewise.
* **Heading**: ``GPSImgDirection`` (degrees clockwise from north) with ``GPSImgDirectionRef`` ``T``
  (true north) or ``M`` (magnetic north). A magnetic heading is converted to true north with the
  World Magnetic Model (:mod:`tiling.declination`) at the photo's position and date; both values
  are kept. Without a position it cannot be converted: the heading is then unknown, with a warning.
  A missing reference is taken as true north, with a warning.
* **Date** (for the declination): ``DateTimeOriginal``, else ``GPSDateStamp``, else the file's
  modification time; ``date_source`` says which.
* **Field of view** (horizontal, of the image as displayed, i.e. after the EXIF orientation): from
  ``FocalLengthIn35mmFilm`` f35 as ``2 atan(d_w / 2 f35)`` where ``d_w = 43.27 mm x W / sqrt(W^2 +
  H^2)`` is the displayed width's share of the 35 mm frame diagonal (CIPA DC-008 defines the
  equivalent focal length on the diagonal): 26 mm gives 67 degrees for a 4:3 landscape photo and
  53 for a portrait one. Without it, from ``FocalLength`` and the sensor width
  (``PixelXDimension`` / ``FocalPlaneXResolution`` in ``FocalPlaneResolutionUnit``). Values outside
  :data:`PLAUSIBLE_FOV_DEG` (e.g. a 65535 mm "focal length") are refused with a warning.

Every problem is a warning naming the file and the tag; nothing here raises.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from tiling.declination import magnetic_declination, true_heading

GPS_IFD, EXIF_IFD = 0x8825, 0x8769
ORIENTATION = 0x0112
DATETIME_ORIGINAL, FOCAL_LENGTH, FOCAL_35MM = 0x9003, 0x920A, 0xA405
PIXEL_X, PIXEL_Y = 0xA002, 0xA003
FOCAL_PLANE_X_RES, FOCAL_PLANE_Y_RES, FOCAL_PLANE_UNIT = 0xA20E, 0xA20F, 0xA210
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
GPS_DIRECTION_REF, GPS_DIRECTION, GPS_DATESTAMP = 16, 17, 29
#: A field of view outside this range (degrees) comes from a broken focal length tag.
PLAUSIBLE_FOV_DEG = (1.0, 179.0)
FRAME_35MM_DIAGONAL_MM = math.hypot(36.0, 24.0)
#: FocalPlaneResolutionUnit -> millimetres per unit (1 = none, read as inches as the standard's default).
_UNIT_MM = {1: 25.4, 2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}


@dataclass
class PhotoExif:
    """What EXIF says about a photo (position in EPSG:4326; headings in degrees clockwise from north)."""

    lon: float | None = None
    lat: float | None = None
    heading: float | None = None  # true north (converted when recorded magnetic)
    heading_ref: str | None = None  # "T" true or "M" magnetic, as recorded
    heading_magnetic: float | None = None  # the recorded magnetic heading, when the ref is M
    declination_deg: float | None = None  # WMM declination used for the conversion (east positive)
    date: str | None = None  # ISO date used for the declination
    date_source: str | None = None  # "DateTimeOriginal", "GPSDateStamp" or "file time"
    fov_deg: float | None = None  # horizontal, of the displayed image
    fov_source: str | None = None  # "FocalLengthIn35mmFilm" or "FocalLength + sensor width"
    has_focal_length: bool = False  # a lens focal length is recorded (a camera photo, not a stitched panorama)
    orientation: int = 1
    warnings: list[str] = field(default_factory=list)

    @property
    def has_position(self) -> bool:
        """Whether EXIF gave a usable GPS position (both longitude and latitude)."""
        return self.lon is not None and self.lat is not None

    def as_json(self) -> dict | None:
        """Position and heading for a JSON result, or None when EXIF gave neither."""
        if not self.has_position and self.heading is None and self.heading_magnetic is None:
            return None
        return {"lon": self.lon, "lat": self.lat, "heading": self.heading, "heading_ref": self.heading_ref,
                "heading_magnetic": self.heading_magnetic, "declination_deg": self.declination_deg}


def _number(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):  # raw rational
        value = Fraction(value[0], value[1])
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{value!r} is not a finite number")
    return v


def _dms(value: Any) -> float:
    parts = [_number(v) for v in value] if isinstance(value, (tuple, list)) else [_number(value)]
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 3:
        raise ValueError(f"expected degrees, minutes, seconds; got {len(parts)} values")
    d, m, s = parts
    if not (0 <= m < 60 and 0 <= s < 60):
        raise ValueError(f"minutes/seconds out of range ({m}, {s})")
    return d + m / 60.0 + s / 3600.0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ")


def _ref(value: Any) -> str:
    return _text(value).upper()[:1]


_PROBLEMS = (ValueError, TypeError, ZeroDivisionError, OverflowError, ArithmeticError, IndexError, KeyError)


def read_exif(image: Image.Image, path: Path, stored_size: tuple[int, int]) -> PhotoExif:
    """Parse an opened image's EXIF (``stored_size`` = width, height as stored, before orientation)."""
    out = PhotoExif()
    try:
        exif = image.getexif()
        gps = dict(exif.get_ifd(GPS_IFD))
        sub = dict(exif.get_ifd(EXIF_IFD))
        orientation = exif.get(ORIENTATION, 1)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on broken EXIF
        out.warnings.append(f"{path}: EXIF unreadable, ignored ({_short(e)})")
        return out
    try:
        out.orientation = int(orientation) if int(orientation) in range(1, 9) else 1
    except _PROBLEMS:
        out.warnings.append(f"{path}: EXIF Orientation {orientation!r} ignored")
    _position(out, gps, path)
    _field_of_view(out, sub, path, stored_size)
    if GPS_DIRECTION in gps:
        _heading(out, gps, sub, path)
    return out


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _position(out: PhotoExif, gps: dict, path: Path) -> None:
    if GPS_LAT not in gps and GPS_LON not in gps:
        return
    try:
        if GPS_LAT not in gps or GPS_LON not in gps:
            raise ValueError("only one of GPSLatitude and GPSLongitude is recorded")
        lat_ref, lon_ref = _ref(gps.get(GPS_LAT_REF, "")), _ref(gps.get(GPS_LON_REF, ""))
        if lat_ref not in ("N", "S"):
            raise ValueError("GPSLatitudeRef (N/S) is missing or unknown: the hemisphere is not guessed")
        if lon_ref not in ("E", "W"):
            raise ValueError("GPSLongitudeRef (E/W) is missing or unknown: the hemisphere is not guessed")
        lat = _dms(gps[GPS_LAT]) * (-1 if lat_ref == "S" else 1)
        lon = _dms(gps[GPS_LON]) * (-1 if lon_ref == "W" else 1)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"latitude {lat} / longitude {lon} out of range")
        if lat == 0 and lon == 0:
            raise ValueError("position 0, 0 (an unset GPS fix)")
        out.lat, out.lon = lat, lon
    except _PROBLEMS as e:
        out.warnings.append(f"{path}: EXIF GPS position ignored, position unknown ({_short(e)})")


def _heading(out: PhotoExif, gps: dict, sub: dict, path: Path) -> None:
    try:
        heading = _number(gps[GPS_DIRECTION])
        if not 0 <= heading <= 360:
            raise ValueError(f"GPSImgDirection {heading:g} outside 0..360")
        heading %= 360.0
        ref = _ref(gps.get(GPS_DIRECTION_REF, ""))
        if not ref:
            out.warnings.append(f"{path}: EXIF GPSImgDirectionRef missing; heading {heading:g} taken as true north")
            ref = "T"
        if ref not in ("T", "M"):
            raise ValueError(f"GPSImgDirectionRef {ref!r} is neither T nor M")
    except _PROBLEMS as e:
        out.warnings.append(f"{path}: EXIF heading ignored ({_short(e)})")
        return
    out.heading_ref = ref
    if ref == "T":
        out.heading = heading
        return
    out.heading_magnetic = heading
    if not out.has_position:
        out.warnings.append(f"{path}: magnetic heading {heading:g} not converted to true north: no usable GPS "
                            "position for the declination; heading unknown")
        return
    try:
        when, source = _photo_date(gps, sub, path, out)
        decl = magnetic_declination(float(out.lat or 0.0), float(out.lon or 0.0), when)
    except ImportError:
        out.warnings.append(f"{path}: magnetic heading {heading:g} not converted to true north: pygeomag (the World "
                            "Magnetic Model) is not installed (pip install pygeomag); heading unknown")
        return
    except (*_PROBLEMS, OSError) as e:
        out.warnings.append(f"{path}: magnetic heading {heading:g} not converted to true north ({_short(e)}); "
                            "heading unknown")
        return
    out.declination_deg, out.date, out.date_source = decl.degrees, when.isoformat(), source
    out.heading = true_heading(heading, decl)
    if decl.note:
        out.warnings.append(f"{path}: {decl.note}")


def _photo_date(gps: dict, sub: dict, path: Path, out: PhotoExif) -> tuple[_dt.date, str]:
    """The date the photo was taken, and which tag (or the file time) said so."""
    for tag, name in ((DATETIME_ORIGINAL, "DateTimeOriginal"), (GPS_DATESTAMP, "GPSDateStamp")):
        source = sub if tag == DATETIME_ORIGINAL else gps
        if tag not in source:
            continue
        text = _text(source[tag])
        try:
            return _dt.datetime.strptime(text[:10], "%Y:%m:%d").date(), name
        except ValueError:
            out.warnings.append(f"{path}: EXIF {name} {text[:40]!r} is not a date; ignored")
    when = _dt.datetime.fromtimestamp(os.stat(path).st_mtime, _dt.timezone.utc).date()
    out.warnings.append(f"{path}: no EXIF date; the magnetic declination uses the file time ({when.isoformat()})")
    return when, "file time"


def _field_of_view(out: PhotoExif, sub: dict, path: Path, stored_size: tuple[int, int]) -> None:
    w, h = stored_size
    swapped = out.orientation in (5, 6, 7, 8)
    disp_w, disp_h = (h, w) if swapped else (w, h)
    fov, source = None, None
    try:
        f35 = _number(sub[FOCAL_35MM]) if FOCAL_35MM in sub else 0.0
        if f35 > 0:
            out.has_focal_length = True
            width_mm = FRAME_35MM_DIAGONAL_MM * disp_w / math.hypot(disp_w, disp_h)
            fov, source = math.degrees(2 * math.atan(width_mm / (2 * f35))), "FocalLengthIn35mmFilm"
    except _PROBLEMS as e:
        out.warnings.append(f"{path}: EXIF FocalLengthIn35mmFilm ignored ({_short(e)})")
    if fov is None:
        try:
            fov = _fov_from_sensor(out, sub, stored_size, swapped)
            source = "FocalLength + sensor width" if fov is not None else None
        except _PROBLEMS as e:
            out.warnings.append(f"{path}: EXIF FocalLength/FocalPlaneResolution ignored ({_short(e)})")
    if fov is None:
        return
    lo, hi = PLAUSIBLE_FOV_DEG
    if not lo <= fov <= hi:
        out.warnings.append(f"{path}: EXIF {source} gives a field of view of {fov:.3g} degrees, outside "
                            f"{lo:g}..{hi:g}: ignored")
        return
    out.fov_deg, out.fov_source = fov, source


def _fov_from_sensor(out: PhotoExif, sub: dict, stored_size: tuple[int, int], swapped: bool) -> float | None:
    """Horizontal FoV from FocalLength and the focal-plane resolution (sensor size), or None without them."""
    if FOCAL_LENGTH not in sub:
        return None
    focal = _number(sub[FOCAL_LENGTH])
    if focal <= 0:
        return None
    out.has_focal_length = True
    if FOCAL_PLANE_X_RES not in sub:
        return None
    unit = int(_number(sub.get(FOCAL_PLANE_UNIT, 2)))
    if unit not in _UNIT_MM:
        raise ValueError(f"FocalPlaneResolutionUnit {unit} is not a known unit")
    x_res = _number(sub[FOCAL_PLANE_X_RES])
    y_res = _number(sub.get(FOCAL_PLANE_Y_RES, x_res))
    if x_res <= 0 or y_res <= 0:
        raise ValueError("FocalPlaneResolution must be positive")
    w = _number(sub.get(PIXEL_X, stored_size[0]))
    h = _number(sub.get(PIXEL_Y, stored_size[1]))
    if w <= 0 or h <= 0:
        w, h = stored_size
    sensor_mm = (h / y_res if swapped else w / x_res) * _UNIT_MM[unit]
    return math.degrees(2 * math.atan(sensor_mm / (2 * focal)))
