"""Ground photos from disk: finding them, and reading each once, memory-bounded, with a clear error.

* **Finding** (:func:`collect_photos`): files given are taken as they are; folders are searched
  recursively (symbolic links followed, loops detected) for :func:`photo_suffixes`. Every file
  skipped in a folder is named with its reason (not a photo type, HEIC without ``pillow-heif``,
  unreadable); the same photo given twice is located once.
* **Formats**: what Pillow reads (JPEG, PNG, TIFF, WebP, BMP, AVIF where Pillow has it) and
  HEIC/HEIF through ``pillow-heif`` (its opener registered once, on import).
* **Reading** (:func:`read_photo`): the header first (EXIF :mod:`tiling.exif`, XMP GPano
  :mod:`tiling.gpano`), so the photo is classified (:mod:`tiling.ground_input`) before any pixel is
  decoded; then one decode, reduced to what the model needs (JPEG: ``Image.draft``, a DCT-domain
  reduction by up to 8; other formats: ``Image.reduce``), EXIF orientation applied.
* **Limits**: a photo over :data:`MAX_PHOTO_PIXELS` is refused with an error naming it, before
  decoding. ``PIL.Image.MAX_IMAGE_PIXELS`` is set to the same number, so Pillow's own
  decompression-bomb check agrees with it.
* **Errors**: :class:`PhotoError`, naming the file and the reason ("no such file", "is a folder",
  "permission denied", "symbolic link loop", "not an image", "truncated or corrupt", "over the
  pixel limit"). Python warnings raised while reading (EXIF, decompression bombs) become one-line
  notes naming the file, never printed with source lines.
"""
from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from saig_core.errors import SaigError
from tiling.exif import PhotoExif, read_exif
from tiling.gpano import GPano, parse_gpano, xmp_packet
from tiling.ground_input import DEFAULT_FOV_DEG, PANORAMA_ASPECT, GroundInput, View

__all__ = ["DEFAULT_FOV_DEG", "MAX_PHOTO_PIXELS", "PANORAMA_ASPECT", "GroundInput", "Photo", "PhotoError",
           "PhotoExif", "collect_photos", "photo_suffixes", "read_photo"]

#: Largest photo accepted (pixels): a 200-megapixel image, above any phone or 360-degree camera today.
MAX_PHOTO_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PHOTO_PIXELS
BASE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
AVIF_SUFFIXES = frozenset({".avif"})


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()


def _avif_available() -> bool:
    from PIL import features

    try:
        return bool(features.check("avif"))
    except ValueError:  # Pillow too old to know the feature
        return False


AVIF_AVAILABLE = _avif_available()


def photo_suffixes() -> frozenset[str]:
    """The photo file suffixes this installation reads (HEIC/HEIF with pillow-heif, AVIF where Pillow has it)."""
    return BASE_SUFFIXES | (HEIF_SUFFIXES if HEIF_AVAILABLE else frozenset()) | (
        AVIF_SUFFIXES if AVIF_AVAILABLE else frozenset())


#: Every suffix the project can read when its optional decoders are present (for ``saig schema``).
PHOTO_SUFFIXES = BASE_SUFFIXES | HEIF_SUFFIXES | AVIF_SUFFIXES


class PhotoError(SaigError, ValueError):
    """A photo that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.filename = str(path)


@dataclass
class Photo:
    """A ground photo read from disk: its pixels (RGB, orientation applied, reduced to what the model
    needs), what its metadata says, how it becomes model input, and its full size (width, height)."""

    path: Path
    image: Image.Image
    exif: PhotoExif
    view: View
    size: tuple[int, int]
    notes: tuple[str, ...] = ()

    @property
    def is_panorama(self) -> bool:
        """Whether the photo is read as a 360-degree panorama."""
        return self.view.kind == "panorama"


# -- finding photos -------------------------------------------------------------------------------------

def _skip_reason(path: Path) -> str | None:
    """Why a file found in a folder is not a photo to locate, or None when it is one."""
    suffix = path.suffix.lower()
    if suffix in photo_suffixes():
        return None
    if suffix in HEIF_SUFFIXES:
        return "HEIC/HEIF photos need pillow-heif (pip install pillow-heif)"
    if suffix in AVIF_SUFFIXES:
        return "AVIF photos need a Pillow built with AVIF support (Pillow >= 11.3)"
    return f"not a photo type this reads ({suffix or 'no suffix'}; reads {', '.join(sorted(photo_suffixes()))})"


def _walk(folder: Path, skipped: list[tuple[Path, str]], seen: set[tuple[int, int]]) -> Iterator[Path]:
    """Photo files under ``folder``, sorted, recursively; loops and unreadable entries go to ``skipped``."""
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            skipped.append((folder, "symbolic link loop (this folder is already being searched)"))
            return
        seen.add(key)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        skipped.append((folder, _os_reason(e)))
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
            is_file = not is_dir and entry.is_file(follow_symlinks=True)
            if not is_dir and not is_file:
                os.stat(path)  # raises for loops and broken links: a clear reason below
                skipped.append((path, "not a regular file"))
                continue
        except OSError as e:
            skipped.append((path, _os_reason(e)))
            continue
        if is_dir:
            yield from _walk(path, skipped, seen)
            continue
        reason = _skip_reason(path)
        if reason is None:
            yield path
        else:
            skipped.append((path, reason))


def collect_photos(inputs: Sequence[str | os.PathLike],
                   skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files given directly, plus the photo files found recursively in folders given (sorted per folder),
    each once; files skipped in folders are appended to ``skipped`` as (path, reason)."""
    skipped = skipped if skipped is not None else []
    out: list[Path] = []
    seen_files: set[str] = set()
    for item in inputs:
        p = Path(item)
        found = _walk(p, skipped, set()) if _is_dir(p) else iter([p])
        for f in found:
            key = os.path.realpath(f)
            if key not in seen_files:
                seen_files.add(key)
                out.append(f)
    return out


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _os_reason(e: OSError) -> str:
    reasons = {errno.ENOENT: "no such file", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ELOOP: "symbolic link loop", errno.EISDIR: "is a folder, not a photo",
               errno.ENOTDIR: "a path component is not a folder", errno.ENAMETOOLONG: "file name too long"}
    return reasons.get(e.errno or 0, f"cannot be read ({e.strerror or e})")


# -- reading one photo ---------------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise PhotoError(path, "broken symbolic link") from None
        raise PhotoError(path, _os_reason(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise PhotoError(path, "is a folder, not a photo")
    if not stat.S_ISREG(st.st_mode):
        raise PhotoError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise PhotoError(path, "permission denied")


def _displayed(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def read_photo(path: str | os.PathLike, ground: GroundInput | None = None, mode: str = "auto",
               fov_override: float | None = None) -> Photo:
    """Read a photo for ``ground`` (default: a 128x512 input), classified as ``mode`` says
    (``auto``, ``panorama``, ``photo``); raises :class:`PhotoError`, never anything else for bad input."""
    path = Path(path)
    ground = ground or GroundInput((128, 512))
    _check_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            photo = _read(path, ground, mode, fov_override)
        except PhotoError:
            raise
        except Image.DecompressionBombError as e:
            raise PhotoError(path, f"over the pixel limit ({e})") from None
        except UnidentifiedImageError:
            raise PhotoError(path, _not_an_image(path)) from None
        except PermissionError:
            raise PhotoError(path, "permission denied") from None
        except MemoryError:
            raise PhotoError(path, "not enough memory to decode it") from None
        except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, ArithmeticError) as e:
            raise PhotoError(path, f"cannot be decoded; truncated or corrupt? ({_one_line(e)})") from None
    photo.exif.warnings.extend(_warning_notes(path, caught))
    return photo


def _warning_notes(path: Path, caught: list[warnings.WarningMessage]) -> list[str]:
    """Python warnings raised while reading, as one line each naming the file; Pillow's EXIF (TIFF
    directory) complaints collapsed into one."""
    exif: list[str] = []
    other: list[str] = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue
        text = _one_line(w.message)
        (exif if "TiffImagePlugin" in str(w.filename) or "EXIF" in text else other).append(text)
    notes = [f"{path}: {t}" for t in dict.fromkeys(other)]
    if exif:
        unique = list(dict.fromkeys(exif))
        more = f"; and {len(unique) - 2} more" if len(unique) > 2 else ""
        notes.append(f"{path}: EXIF damaged, partly ignored ({'; '.join(unique[:2])}{more})")
    return notes


def _not_an_image(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in HEIF_SUFFIXES and not HEIF_AVAILABLE:
        return "HEIC/HEIF photos need pillow-heif (pip install pillow-heif)"
    if suffix in AVIF_SUFFIXES and not AVIF_AVAILABLE:
        return "AVIF photos need a Pillow built with AVIF support"
    return f"not an image this reads ({', '.join(sorted(photo_suffixes()))})"


def _one_line(e: object) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read(path: Path, ground: GroundInput, mode: str, fov_override: float | None) -> Photo:
    from saig_core.model.saig_model import InputError  # torch: imported only when a photo is read

    with Image.open(path) as im:
        stored = im.size
        if stored[0] * stored[1] > MAX_PHOTO_PIXELS:
            raise PhotoError(path, f"{stored[0]}x{stored[1]} = {stored[0] * stored[1]:,} pixels is over the limit "
                                   f"of {MAX_PHOTO_PIXELS:,} (tiling.photos.MAX_PHOTO_PIXELS)")
        if min(stored) < 2:
            raise PhotoError(path, f"image of {stored[0]}x{stored[1]} pixels is too small")
        exif = read_exif(im, path, stored)
        gpano = _gpano(im, path, stored, exif)
        display = _displayed(stored, exif.orientation)
        view, notes = ground.view(display, exif, gpano, mode, fov_override)
        try:
            image = _decode(im, ground.decode_size(view), exif.orientation)
        except InputError as e:
            raise PhotoError(path, f"unsupported pixel format ({e})") from None
    return Photo(path, image, exif, view, display, tuple(f"{path}: {n}" for n in notes))


def _gpano(im: Image.Image, path: Path, stored: tuple[int, int], exif: PhotoExif) -> GPano | None:
    try:
        return parse_gpano(xmp_packet(im), stored)
    except (ValueError, TypeError, OverflowError) as e:
        exif.warnings.append(f"{path}: XMP GPano metadata ignored ({_one_line(e)})")
        return None


def _decode(im: Image.Image, need: tuple[int, int], orientation: int) -> Image.Image:
    """Decode once, reduced so the displayed image keeps at least ``need`` (width, height), then oriented."""
    need_w, need_h = _displayed(need, orientation)  # in stored orientation
    if im.format == "JPEG":
        im.draft("RGB", (need_w, need_h))  # picks the largest DCT scale still >= the requested size
    im.load()
    from saig_core.data.preprocess import to_rgb

    factor = max(1, min(im.size[0] // max(need_w, 1), im.size[1] // max(need_h, 1)))
    out: Image.Image = im
    if factor > 1:
        try:
            out = im.reduce(factor)
        except ValueError:  # a mode reduce() does not take (palette, 1-bit, 16-bit): to RGB first
            out = to_rgb(im).reduce(factor)
    return _transpose(to_rgb(out), orientation)


_TRANSPOSES = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
               4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE],
               6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}


def _transpose(image: Image.Image, orientation: int) -> Image.Image:
    """The image as displayed under an EXIF orientation (1-8)."""
    for op in _TRANSPOSES.get(orientation, []):
        image = image.transpose(op)
    return image
