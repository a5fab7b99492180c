"""How a photo becomes the model's ground input: panorama or limited field of view, and the pixels.

**Panorama or photo** (:meth:`GroundInput.view`), in this order:

1. ``--panorama`` / ``--photo`` (``mode``) decide for every photo of the run;
2. XMP ``GPano:ProjectionType="equirectangular"`` (:mod:`tiling.gpano`): a panorama when it covers
   360 degrees of azimuth, else a limited view as wide as it covers;
3. without GPano, an image at least :data:`PANORAMA_ASPECT` (about 2:1) times wider than tall is a
   360-degree equirectangular panorama -- unless EXIF records a lens focal length (phones' 18:9 and
   21:9 photos are that wide; 360-degree cameras and Photo Sphere write GPano): then it is a photo,
   with a warning suggesting ``--panorama``;
4. anything else is a photo of a limited field of view.

**Panoramas.** The image's rows span the elevations GPano records; without GPano, an image of
about 2:1 (:data:`FULL_SPHERE_ASPECT`) spans the full sphere (+90 to -90 degrees) and a wider strip
is taken to span the model's band already. From that, the elevation band the model was trained on
(:attr:`GroundInput.band`, the checkpoint's ``ground_input.panorama_elevation_deg``) is cut out;
rows the image does not cover are left 0 (mid-grey), as the limited-FoV canvas is. The panorama is
then rolled so that column 0 faces north (the convention of :mod:`saig_core.data.transforms`): its
heading comes from GPano ``PoseHeadingDegrees``, else EXIF ``GPSImgDirection`` (true north, after
any magnetic conversion), both the compass heading of the centre column, as phones and Photo
Sphere write them. A panorama without a heading is assumed north-aligned and says so
(:attr:`View.heading_known` is False: the place a rotation search over headings plugs in).

**Photos.** A field of view of, in order: ``--fov-deg``; GPano's horizontal coverage; EXIF
(:mod:`tiling.exif`); the checkpoint's training FoV; :data:`DEFAULT_FOV_DEG`. Turned into input by
``limited_fov_to_input`` with the placement the checkpoint records (``resize``, or ``canvas`` at the
heading column when the model was trained with known headings and the photo has one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tiling.exif import PhotoExif
from tiling.gpano import GPano

if TYPE_CHECKING:
    import torch

    from tiling.photos import Photo

PANORAMA_ASPECT = 1.95
FULL_SPHERE_ASPECT = (1.95, 2.05)
DEFAULT_FOV_DEG = 90.0
#: The elevation band (top, bottom degrees) of checkpoints that do not record one: the synthetic
#: world's panoramas (and CVUSA's strips) span about +-30; a 2:1 ground input (VIGOR) the full sphere.
DEFAULT_BAND = (30.0, -30.0)
FULL_SPHERE = (90.0, -90.0)
MODES = ("auto", "panorama", "photo")


@dataclass(frozen=True)
class PanoramaGeometry:
    """What a panorama image covers: the elevations of its top and bottom edges, and the azimuth of its
    column 0 (None when no heading is known), with where the heading came from."""

    elevation: tuple[float, float]
    azimuth0_deg: float | None
    heading_source: str


@dataclass(frozen=True)
class View:
    """How one photo is read: ``panorama`` or ``fov``, why, its horizontal field of view and where that
    came from, and (panoramas) its geometry."""

    kind: str
    reason: str
    fov_deg: float
    fov_source: str
    panorama: PanoramaGeometry | None = None

    @property
    def heading_known(self) -> bool:
        """False for a panorama whose heading is unknown (assumed north-aligned)."""
        return self.panorama is None or self.panorama.azimuth0_deg is not None


@dataclass(frozen=True)
class GroundInput:
    """How photos become ground input for one model (from the checkpoint's ``ground_input`` metadata)."""

    size: tuple[int, int]
    placement: str = "resize"
    heading_known: bool = False
    train_fov_deg: float | None = None
    band: tuple[float, float] = DEFAULT_BAND

    @classmethod
    def from_metadata(cls, size: tuple[int, int], metadata: dict | None) -> GroundInput:
        """The ground input of a model of input ``size`` (height, width) from its checkpoint metadata;
        without a ``ground_input`` record: resized photos, headings unknown, no training FoV, and the
        band of :data:`DEFAULT_BAND` (the full sphere for a 2:1 input)."""
        gi = (metadata or {}).get("ground_input") or {}
        fovs = gi.get("fov_deg") or []
        h, w = size
        band = gi.get("panorama_elevation_deg")
        if band is None:
            band = FULL_SPHERE if FULL_SPHERE_ASPECT[0] <= w / h <= FULL_SPHERE_ASPECT[1] else DEFAULT_BAND
        top, bottom = (float(v) for v in band)
        return cls((h, w), gi.get("fov_placement", "resize"), bool(gi.get("fov_heading_known", False)),
                   float(fovs[0]) if fovs else None, (top, bottom))

    def view(self, display_size: tuple[int, int], exif: PhotoExif, gpano: GPano | None, mode: str = "auto",
             fov_override: float | None = None) -> tuple[View, list[str]]:
        """How a photo of ``display_size`` (width, height after orientation) is read, and notes for the user."""
        w, h = display_size
        aspect = w / h
        notes: list[str] = []
        if mode == "photo":
            return self._photo_view("--photo", exif, None, fov_override), notes
        if gpano is not None and gpano.projection == "equirectangular" and mode == "auto":
            if gpano.horizontal_fov_deg < 359.0:
                return self._photo_view("GPano partial panorama", exif, gpano, fov_override), notes
            return View("panorama", "GPano", 360.0, "panorama", self._geometry(exif, gpano, aspect)), notes
        if gpano is not None and gpano.projection != "equirectangular":
            notes.append(f"GPano projection {gpano.projection!r} is not equirectangular; GPano ignored")
            gpano = None
        if mode == "panorama":
            return View("panorama", "--panorama", 360.0, "panorama", self._geometry(exif, gpano, aspect)), notes
        if aspect >= PANORAMA_ASPECT:
            if exif.has_focal_length:
                notes.append(f"{aspect:.2f}:1 wide, but EXIF records a lens focal length and no GPano metadata: "
                             "taken as a photo (pass --panorama if it is a 360-degree panorama)")
                return self._photo_view(f"aspect {aspect:.2f}:1 with a lens focal length", exif, None,
                                        fov_override), notes
            return View("panorama", f"aspect {aspect:.2f}:1", 360.0, "panorama",
                        self._geometry(exif, None, aspect)), notes
        return self._photo_view(f"aspect {aspect:.2f}:1", exif, None, fov_override), notes

    def _photo_view(self, reason: str, exif: PhotoExif, gpano: GPano | None, fov_override: float | None) -> View:
        choices = (
            (fov_override, "--fov-deg"),
            (gpano.horizontal_fov_deg if gpano is not None else None, "GPano"),
            (exif.fov_deg, exif.fov_source or "EXIF"),
            (self.train_fov_deg, "checkpoint training FoV"),
            (DEFAULT_FOV_DEG, "default"),
        )
        fov, source = next((float(v), s) for v, s in choices if v is not None)
        return View("fov", reason, min(fov, 360.0), source)

    def _geometry(self, exif: PhotoExif, gpano: GPano | None, aspect: float) -> PanoramaGeometry:
        if gpano is not None:
            elevation = gpano.elevation_span
        elif FULL_SPHERE_ASPECT[0] <= aspect <= FULL_SPHERE_ASPECT[1]:
            elevation = FULL_SPHERE
        else:
            elevation = self.band
        left = 360.0 * gpano.crop_left / gpano.full_width if gpano is not None else 0.0
        if gpano is not None and gpano.heading_deg is not None:
            return PanoramaGeometry(elevation, gpano.azimuth0_deg, "GPano PoseHeadingDegrees")
        if exif.heading is not None:
            return PanoramaGeometry(elevation, (exif.heading - 180.0 + left) % 360.0, "EXIF GPSImgDirection")
        return PanoramaGeometry(elevation, None, "none (assumed north-aligned)")

    def decode_size(self, view: View) -> tuple[int, int]:
        """The smallest (width, height) of the displayed image that still feeds the model at full detail."""
        h, w = self.size
        if view.kind == "panorama" and view.panorama is not None:
            (top, bottom), (btop, bbottom) = view.panorama.elevation, self.band
            rows = h * max(1.0, (top - bottom) / max(btop - bbottom, 1e-6))
            return (w, int(np.ceil(rows)))
        return (w, h)

    def tensor(self, photo: Photo) -> torch.Tensor:
        """The normalised (3, H, W) ground input of a photo read for this model."""
        from saig_core.data.transforms import limited_fov_to_input

        view = photo.view
        if view.kind == "panorama" and view.panorama is not None:
            return panorama_to_input(photo.image, view.panorama, self.band, self.size)
        heading = photo.exif.heading if (self.placement == "canvas" and self.heading_known) else None
        return limited_fov_to_input(photo.image, self.size, view.fov_deg, self.placement, heading)


def panorama_to_input(image, geometry: PanoramaGeometry, band: tuple[float, float],
                      size: tuple[int, int]) -> torch.Tensor:
    """An equirectangular image rolled so column 0 faces north, with the elevation ``band`` (top, bottom
    degrees) cut out and resized to ``size`` (H, W); rows outside the image are 0 (mid-grey)."""
    import torch
    from PIL import Image

    from saig_core.data.preprocess import array_to_tensor, to_rgb

    h_out, w_out = size
    arr = np.asarray(to_rgb(image))
    rows, cols = arr.shape[:2]
    if geometry.azimuth0_deg:
        arr = np.roll(arr, int(round(geometry.azimuth0_deg / 360.0 * cols)) % cols, axis=1)
    top, bottom = geometry.elevation
    btop, bbottom = band
    per_deg = rows / (top - bottom)
    r0, r1 = (top - btop) * per_deg, (top - bbottom) * per_deg  # the band's rows in the image (fractional)
    a0, a1 = max(r0, 0.0), min(r1, float(rows))
    out = torch.zeros(3, h_out, w_out)
    if a1 - a0 <= 0:
        return out
    scale = h_out / (r1 - r0)
    o0, o1 = int(round((a0 - r0) * scale)), int(round((a1 - r0) * scale))
    if o1 <= o0:
        return out
    part = Image.fromarray(np.ascontiguousarray(arr)).resize((w_out, o1 - o0), Image.Resampling.BILINEAR,
                                                               box=(0.0, a0, float(cols), a1), reducing_gap=None)
    out[:, o0:o1] = array_to_tensor(np.asarray(part))
    return out
