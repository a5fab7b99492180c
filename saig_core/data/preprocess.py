"""Turning images into model input: RGB, resized, float, normalised with mean = std = 0.5.

Conversions (documented, never silent failures): grey images are repeated to RGB; RGBA / LA / PA
images (and palettes with a transparent colour) are composited over black with their alpha; 16-bit
images (``I;16*``) are scaled from 0..65535 to 0..255, and 32-bit integer images (``I``, which is how
Pillow opens some 16-bit files) likewise when any value exceeds 255; palette, CMYK and YCbCr images
are converted by Pillow. Anything else is refused with :class:`saig_core.model.saig_model.InputError`.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from saig_core.model.saig_model import InputError

MEAN = 0.5
STD = 0.5


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (alpha composited over black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode != "I" or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if image.mode in ("1", "L", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise InputError(f"cannot convert a {image.mode} image to RGB (expected 8/16-bit grey, RGB(A), palette)")


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image as a (3, H, W) float tensor for a branch expecting ``size`` = (H, W)."""
    h, w = size
    image = to_rgb(image)
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
    return array_to_tensor(np.asarray(image))


def array_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> normalised (3, H, W) float32."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:  # e.g. np.asarray(PIL image): torch wants writable memory
        rgb = rgb.copy()
    t = torch.from_numpy(rgb).permute(2, 0, 1).float()
    return t.div_(255.0).sub_(MEAN).div_(STD)


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`array_to_tensor`, for previews: (3, H, W) -> (H, W, 3) uint8."""
    arr = (t.detach().cpu().float() * STD + MEAN).clamp(0, 1).mul(255).round().byte()
    return arr.permute(1, 2, 0).numpy()
