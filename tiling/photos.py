"""Ground photos: reading (EXIF orientation applied), EXIF GPS/heading, and the model's ground input.

* Formats: anything Pillow reads (JPEG, PNG, TIFF, ...); EXIF orientation is applied
  (``ImageOps.exif_transpose``) before anything else.
* EXIF: ``GPSLatitude``/``GPSLongitude`` (+ refs) give the position (EPSG:4326);
  ``GPSImgDirection`` with ``GPSImgDirectionRef`` ``T`` (true north) or ``M`` (magnetic north, kept
  as recorded: no declination model is applied) gives the heading. Values that are missing,
  non-numeric, non-finite or out of range are ignored with a warning naming the file and the tag;
  the photo is still located, without a prior.
* Model input (the convention of :mod:`saig_core.data.transforms`, shared with training): an image at
  least :data:`PANORAMA_ASPECT` times wider than tall is a 360° equirectangular panorama (column 0 =
  north) resized to the ground input. Any other photo is a limited field of view of ``fov_deg``
  degrees (``--fov-deg``; else from EXIF ``FocalLengthIn35mmFilm`` as 2·atan(36 / 2f); else the
  checkpoint's training FoV; else :data:`DEFAULT_FOV_DEG`), turned into input by
  ``limited_fov_to_input`` with the placement recorded in the checkpoint (``ground_input``:
  ``resize`` by default, or ``canvas`` centred on the heading column when the model was trained
  with known headings and the photo has one, else on the middle column).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from saig_core.errors import SaigError

PANORAMA_ASPECT = 3.0
DEFAULT_FOV_DEG = 90.0
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}
_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769
_FOCAL_35MM = 0xA405


class PhotoError(SaigError, ValueError):
    """A photo that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.filename = str(path)


@dataclass
class PhotoExif:
    """What EXIF says about where and how a photo was taken (position in EPSG:4326)."""

    lon: float | None = None
    lat: float | None = None
    heading: float | None = None  # degrees clockwise from north
    heading_ref: str | None = None  # "T" true or "M" magnetic, as recorded
    fov_deg: float | None = None  # from the 35 mm equivalent focal length
    warnings: list[str] = field(default_factory=list)

    @property
    def has_position(self) -> bool:
        """Whether EXIF gave a usable GPS position (both longitude and latitude)."""
        return self.lon is not None and self.lat is not None

    def as_json(self) -> dict | None:
        """Position and heading for a JSON result, or None when EXIF gave neither."""
        if not self.has_position and self.heading is None:
            return None
        return {"lon": self.lon, "lat": self.lat, "heading": self.heading, "heading_ref": self.heading_ref}


@dataclass
class Photo:
    """A ground photo read from disk: its pixels (RGB, orientation applied) and what its EXIF says."""

    path: Path
    image: Image.Image  # RGB, orientation applied
    exif: PhotoExif

    @property
    def is_panorama(self) -> bool:
        """Whether the image is a 360° equirectangular panorama (at least PANORAMA_ASPECT times wider than tall)."""
        w, h = self.image.size
        return w >= PANORAMA_ASPECT * h


def collect_photos(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus the photo files (by suffix, sorted) of folders given."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES))
        else:
            out.append(p)
    return out


def read_photo(path: str | os.PathLike) -> Photo:
    """Open a photo, apply its EXIF orientation, parse its EXIF; raises :class:`PhotoError`."""
    path = Path(path)
    if not path.is_file():
        raise PhotoError(path, "no such file")
    try:
        with Image.open(path) as im:
            exif = read_exif(im, path)
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as e:  # noqa: BLE001 - a garbage orientation tag must not lose the photo
                exif.warnings.append(f"{path}: EXIF orientation ignored ({e})")
            im.load()
            from saig_core.data.preprocess import to_rgb

            rgb = to_rgb(im)
    except UnidentifiedImageError:
        raise PhotoError(path, "not an image Pillow can read (JPEG, PNG, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PhotoError(path, f"cannot be decoded; truncated or corrupt? ({e})") from None
    if min(rgb.size) < 2:
        raise PhotoError(path, f"image of {rgb.size[0]}x{rgb.size[1]} pixels is too small")
    return Photo(path, rgb, exif)


def _number(value) -> float:
    if isinstance(value, tuple) and len(value) == 2:  # raw rational
        num, den = value
        return float(Fraction(int(num), int(den)))
    v = float(value)
    if not math.isfinite(v):
        raise ValueError("not finite")
    return v


def _dms(value) -> float:
    parts = [_number(v) for v in value] if isinstance(value, (tuple, list)) else [_number(value)]
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 3:
        raise ValueError(f"expected degrees, minutes, seconds; got {len(parts)} values")
    d, m, s = parts
    if not (0 <= m < 60 and 0 <= s < 60):
        raise ValueError(f"minutes/seconds out of range ({m}, {s})")
    return d + m / 60.0 + s / 3600.0


def _ref(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ").upper()[:1]


def read_exif(image: Image.Image, path: Path) -> PhotoExif:
    """GPS position, heading and FoV from EXIF, tolerating garbage (see the module docstring)."""
    out = PhotoExif()
    try:
        exif = image.getexif()
        gps = exif.get_ifd(_GPS_IFD)
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on broken EXIF
        out.warnings.append(f"{path}: EXIF unreadable, ignored ({e})")
        return out
    if 2 in gps and 4 in gps:
        try:
            lat = _dms(gps[2]) * (-1 if _ref(gps.get(1, "N")) == "S" else 1)
            lon = _dms(gps[4]) * (-1 if _ref(gps.get(3, "E")) == "W" else 1)
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"latitude {lat} / longitude {lon} out of range")
            if lat == 0 and lon == 0:
                raise ValueError("position 0, 0 (an unset GPS fix)")
            out.lat, out.lon = lat, lon
        except (ValueError, TypeError, ZeroDivisionError, OverflowError) as e:
            out.warnings.append(f"{path}: EXIF GPS position ignored ({e})")
    if 17 in gps:
        try:
            heading = _number(gps[17])
            if not 0 <= heading <= 360:
                raise ValueError(f"GPSImgDirection {heading} outside 0..360")
            ref = _ref(gps.get(16, "T")) or "T"
            if ref not in ("T", "M"):
                raise ValueError(f"GPSImgDirectionRef {ref!r} is neither T nor M")
            out.heading, out.heading_ref = heading % 360.0, ref
        except (ValueError, TypeError, ZeroDivisionError, OverflowError) as e:
            out.warnings.append(f"{path}: EXIF heading ignored ({e})")
    if _FOCAL_35MM in sub:
        try:
            f35 = _number(sub[_FOCAL_35MM])
            if f35 > 0:
                out.fov_deg = math.degrees(2 * math.atan(36.0 / (2 * f35)))
        except (ValueError, TypeError, ZeroDivisionError):
            out.warnings.append(f"{path}: EXIF FocalLengthIn35mmFilm ignored (not a number)")
    return out


@dataclass(frozen=True)
class GroundInput:
    """How photos become ground input for one model (from the checkpoint's ``ground_input`` metadata)."""

    size: tuple[int, int]
    placement: str = "resize"
    heading_known: bool = False
    train_fov_deg: float | None = None

    @classmethod
    def from_metadata(cls, size: tuple[int, int], metadata: dict | None) -> GroundInput:
        """The ground input of a model of input ``size`` (height, width) from its checkpoint metadata;
        without a ``ground_input`` record: resized photos, headings unknown, no training FoV."""
        gi = (metadata or {}).get("ground_input") or {}
        fovs = gi.get("fov_deg") or []
        h, w = size
        return cls((h, w), gi.get("fov_placement", "resize"), bool(gi.get("fov_heading_known", False)),
                   float(fovs[0]) if fovs else None)

    def describe(self, photo: Photo, fov_override: float | None) -> tuple[str, float]:
        """('panorama' | 'fov', fov degrees) for a photo."""
        if photo.is_panorama:
            return "panorama", 360.0
        fov = fov_override or photo.exif.fov_deg or self.train_fov_deg or DEFAULT_FOV_DEG
        return "fov", float(fov)

    def tensor(self, photo: Photo, fov_override: float | None = None):
        """The normalised (3, H, W) ground input of a photo."""
        from saig_core.data.preprocess import image_to_tensor
        from saig_core.data.transforms import limited_fov_to_input

        kind, fov = self.describe(photo, fov_override)
        if kind == "panorama":
            return image_to_tensor(photo.image, self.size)
        heading = photo.exif.heading if (self.placement == "canvas" and self.heading_known) else None
        return limited_fov_to_input(photo.image, self.size, min(fov, 360.0), self.placement, heading)
