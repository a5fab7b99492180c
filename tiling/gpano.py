"""Google Photo Sphere XMP (``GPano``): what part of the sphere a panorama covers and where it faces.

Read from the photo's XMP packet (JPEG APP1, PNG iTXt, TIFF tag 700, WebP/HEIF metadata) with a
regular expression on the namespace ``http://ns.google.com/photos/1.0/panorama/``, whatever prefix
the writer chose, as attributes (``GPano:ProjectionType="equirectangular"``) or elements
(``<GPano:ProjectionType>equirectangular</GPano:ProjectionType>``). No XML parser: the packet comes
from untrusted files and only a handful of scalar properties are needed.

Geometry (the Photo Sphere specification): the full panorama is ``FullPanoWidthPixels`` x
``FullPanoHeightPixels`` (default: half the width), equirectangular, covering 360 degrees of
azimuth and 180 of elevation; the image is the crop of ``CroppedAreaImageWidthPixels`` x
``CroppedAreaImageHeightPixels`` at ``CroppedAreaLeftPixels``, ``CroppedAreaTopPixels``;
``PoseHeadingDegrees`` is the compass heading (clockwise from true north) of the full panorama's
centre column.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from PIL import Image

GPANO_NS = b"http://ns.google.com/photos/1.0/panorama/"
_PREFIX = re.compile(rb'xmlns:([A-Za-z_][\w.-]*)\s*=\s*["\']' + re.escape(GPANO_NS) + rb'["\']')
_MAX_XMP_BYTES = 4 << 20  # larger packets are not a Photo Sphere's


@dataclass(frozen=True)
class GPano:
    """The Photo Sphere properties of one image (pixel values refer to the full-resolution image)."""

    projection: str
    full_width: float
    full_height: float
    crop_width: float
    crop_height: float
    crop_left: float
    crop_top: float
    heading_deg: float | None

    @property
    def horizontal_fov_deg(self) -> float:
        """Azimuth span of the image in degrees (360 for a full panorama)."""
        return min(360.0, 360.0 * self.crop_width / self.full_width)

    @property
    def elevation_span(self) -> tuple[float, float]:
        """(top, bottom) elevation of the image's first and last rows' outer edges, degrees."""
        top = 90.0 - 180.0 * self.crop_top / self.full_height
        bottom = 90.0 - 180.0 * (self.crop_top + self.crop_height) / self.full_height
        return (max(-90.0, min(90.0, top)), max(-90.0, min(90.0, bottom)))

    @property
    def azimuth0_deg(self) -> float | None:
        """Azimuth of the image's column 0 (left edge), or None without a heading."""
        if self.heading_deg is None:
            return None
        return (self.heading_deg - 180.0 + 360.0 * self.crop_left / self.full_width) % 360.0


def xmp_packet(image: Image.Image) -> bytes | None:
    """The raw XMP packet of an opened image, wherever its format keeps it, or None."""
    info = getattr(image, "info", {}) or {}
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = info.get(key)
        if value:
            return value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)
    tags = getattr(image, "tag_v2", None)  # TIFF
    if tags is not None:
        try:
            value = tags.get(700)
        except Exception:  # noqa: BLE001 - a damaged TIFF directory: no XMP
            return None
        if value:
            return value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)
    return None


def _property(packet: bytes, prefix: bytes, name: str) -> str | None:
    key = re.escape(prefix + b":" + name.encode())
    m = re.search(key + rb'\s*=\s*"([^"]*)"', packet) or re.search(key + rb"\s*=\s*'([^']*)'", packet)
    if m is None:
        m = re.search(rb"<" + key + rb"(?:\s[^>]*)?>([^<]*)</" + key + rb">", packet)
    return m.group(1).decode("utf-8", "replace").strip() if m else None


def _positive(packet: bytes, prefix: bytes, name: str, default: float) -> float:
    text = _property(packet, prefix, name)
    if text is None:
        return default
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"GPano:{name} {text!r} is not a non-negative number")
    return value


def parse_gpano(packet: bytes | None, image_size: tuple[int, int]) -> GPano | None:
    """The GPano properties of an XMP packet for an image of ``image_size`` (width, height) as stored,
    or None when the packet has no ``ProjectionType``; raises ValueError on unusable values."""
    if not packet or len(packet) > _MAX_XMP_BYTES:
        return None
    m = _PREFIX.search(packet)
    if m is None:
        return None
    prefix = m.group(1)
    projection = _property(packet, prefix, "ProjectionType")
    if projection is None:
        return None
    w, h = image_size
    crop_w = _positive(packet, prefix, "CroppedAreaImageWidthPixels", float(w))
    crop_h = _positive(packet, prefix, "CroppedAreaImageHeightPixels", float(h))
    full_w = _positive(packet, prefix, "FullPanoWidthPixels", crop_w)
    full_h = _positive(packet, prefix, "FullPanoHeightPixels", full_w / 2)
    left = _positive(packet, prefix, "CroppedAreaLeftPixels", 0.0)
    top = _positive(packet, prefix, "CroppedAreaTopPixels", max(0.0, (full_h - crop_h) / 2))
    if not (crop_w > 0 and crop_h > 0 and full_w > 0 and full_h > 0):
        raise ValueError("GPano sizes must be positive")
    if crop_w > full_w * 1.001 or top + crop_h > full_h * 1.001:
        raise ValueError(f"GPano cropped area {crop_w:g}x{crop_h:g} at top {top:g} exceeds the full panorama "
                         f"{full_w:g}x{full_h:g}")
    heading_text = _property(packet, prefix, "PoseHeadingDegrees")
    heading = None
    if heading_text is not None:
        heading = float(heading_text)
        if not (math.isfinite(heading) and -360.0 <= heading <= 720.0):
            raise ValueError(f"GPano:PoseHeadingDegrees {heading_text!r} is not a compass heading")
        heading %= 360.0
    return GPano(projection.lower(), full_w, full_h, crop_w, crop_h, left, top, heading)


def gpano_xmp(full_size: tuple[int, int], crop: tuple[int, int, int, int] | None = None,
              heading_deg: float | None = None) -> bytes:
    """An XMP packet describing an equirectangular panorama (``full_size`` = width, height of the
    whole sphere; ``crop`` = left, top, width, height of the image in it), as Photo Sphere writes it."""
    fw, fh = full_size
    left, top, cw, ch = crop if crop is not None else (0, 0, fw, fh)
    heading = f' GPano:PoseHeadingDegrees="{heading_deg:.2f}"' if heading_deg is not None else ""
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
        'GPano:ProjectionType="equirectangular" GPano:UsePanoramaViewer="True" '
        f'GPano:FullPanoWidthPixels="{fw}" GPano:FullPanoHeightPixels="{fh}" '
        f'GPano:CroppedAreaImageWidthPixels="{cw}" GPano:CroppedAreaImageHeightPixels="{ch}" '
        f'GPano:CroppedAreaLeftPixels="{left}" GPano:CroppedAreaTopPixels="{top}"{heading}/>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()
