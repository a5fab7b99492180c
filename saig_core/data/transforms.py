"""Image transforms for cross-view training and for turning photos into model input.

Conventions (shared by training and ``saig locate``; keep them in one place):

* A **360° panorama** is equirectangular, column 0 facing north, azimuth increasing to the right
  (clockwise seen from above). It is resized to the ground input size.
* A **limited field-of-view photo** (``fov_deg`` wide, facing ``heading_deg``) becomes model input
  by :func:`limited_fov_to_input`, in one of two placements recorded in every checkpoint's
  metadata (``ground_input``):

  - ``resize``: the photo is resized to the full ground input size (H x W), stretched as needed;
  - ``canvas``: the photo is resized to H rows x ``round(W * fov_deg / 360)`` columns (the width it
    spans in a panorama of the input size) and pasted into a canvas of the ground input size that
    is 0 elsewhere (mid-grey after normalisation), centred on the column of its heading
    (``heading / 360 * W``, wrapping around) when the heading is known, else on the middle column.

  Training makes such inputs from panoramas with :func:`fov_crop` (all rows, ``fov_deg / 360`` of
  the columns around a heading) followed by the same :func:`limited_fov_to_input`.
* A **random circular shift** rolls the panorama by a random number of columns; a polar aerial image
  (:func:`polar_transform`) is rolled by the same fraction of its width, so the pair stays aligned.
* **Photometric jitter** scales brightness, contrast and saturation by random factors in
  ``[1 - s, 1 + s]``, independently for ground and aerial; the empty columns of a canvas stay exactly 0
  (an orientation-aware model reads its field of view from them, see ``saig_core.model.orientation``).
* A **field-of-view curriculum** (``fov_curriculum``: ``[[first_epoch, [fov, ...]], ...]``) changes the
  widths drawn as training goes on (e.g. 360 -> 180 -> 90 -> 60); a width of 360 is the whole panorama.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from saig_core.data.preprocess import MEAN, STD, image_to_tensor, to_rgb

PLACEMENTS = ("resize", "canvas")


def fov_crop(panorama: Image.Image, fov_deg: float, heading_deg: float) -> Image.Image:
    """The ``fov_deg``-wide view of a 360° panorama centred on ``heading_deg`` (all rows, wrapping)."""
    if not 0 < fov_deg <= 360:
        raise ValueError(f"fov_deg must be in (0, 360], got {fov_deg}")
    arr = np.asarray(to_rgb(panorama))
    w = arr.shape[1]
    width = max(1, round(w * fov_deg / 360.0))
    centre = (heading_deg % 360.0) / 360.0 * w
    start = int(math.floor(centre - width / 2.0 + 0.5))
    cols = np.arange(start, start + width) % w
    return Image.fromarray(np.ascontiguousarray(arr[:, cols]))


def fov_columns(ground_size: tuple[int, int], fov_deg: float) -> int:
    """Columns a ``fov_deg`` view spans in a panorama of ``ground_size`` (H, W)."""
    return max(1, min(ground_size[1], round(ground_size[1] * fov_deg / 360.0)))


def limited_fov_to_input(
    photo: Image.Image,
    ground_size: tuple[int, int],
    fov_deg: float,
    placement: str = "resize",
    heading_deg: float | None = None,
) -> torch.Tensor:
    """A limited field-of-view photo as a normalised (3, H, W) ground input (see the module docstring)."""
    if placement == "resize":
        return image_to_tensor(photo, ground_size)
    if placement != "canvas":
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    h, w = ground_size
    width = fov_columns(ground_size, fov_deg)
    view = image_to_tensor(photo, (h, width))
    canvas = torch.zeros(3, h, w)
    centre = w / 2.0 if heading_deg is None else (heading_deg % 360.0) / 360.0 * w
    start = int(math.floor(centre - width / 2.0 + 0.5))
    canvas[:, :, torch.arange(start, start + width) % w] = view
    return canvas


def circular_shift(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Roll a (…, H, W) image right by ``round(fraction * W)`` columns (wrapping around)."""
    return torch.roll(x, shifts=int(round(fraction * x.shape[-1])) % x.shape[-1], dims=-1)


def polar_transform(aerial: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """SAFA-style polar resampling of a square north-up aerial image (3, S, S) to (3, Hp, Wp), or of a batch
    (B, 3, S, S) to (B, 3, Hp, Wp) in one call (the same sampling grid for every image).

    Column ``j`` looks along azimuth ``360 j / Wp`` degrees clockwise from north (like a panorama);
    the top row is the image's inscribed circle, the bottom row its centre. Bilinear sampling.
    """
    hp, wp = out_size
    batched = aerial.dim() == 4
    images = aerial if batched else aerial[None]
    theta = torch.arange(wp, dtype=torch.float64) * (2 * math.pi / wp)
    radius = (1.0 - (torch.arange(hp, dtype=torch.float64) + 0.5) / hp)  # fraction of the half side
    x = radius[:, None] * torch.sin(theta)[None, :]  # normalised [-1, 1], +x = east (right)
    y = -radius[:, None] * torch.cos(theta)[None, :]  # +y = south (down)
    grid = torch.stack([x, y], dim=-1).float()[None].expand(images.shape[0], -1, -1, -1)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out if batched else out[0]


def photometric_jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation in ``[1 - strength, 1 + strength]`` on a normalised image."""
    if strength <= 0:
        return x
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    b, c, s = (float(v) for v in rng.uniform(lo, hi, size=3))
    img = x * STD + MEAN  # [0, 1]
    img = img * b
    img = (img - img.mean()) * c + img.mean()
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (grey + (img - grey) * s).clamp(0.0, 1.0)
    return (img - MEAN) / STD


def rotate_aerial(image: Image.Image, heading_deg: float) -> Image.Image:
    """Rotate a north-up aerial image so that ``heading_deg`` points up (corners filled black)."""
    return to_rgb(image).rotate(heading_deg, resample=Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation and the limited-FoV input convention (see the module docstring)."""

    shift: bool = False  # random circular shift of 360° panoramas (training only)
    shift_aerial: str = "none"  # non-polar aerial under a shift: "none" (learn heading invariance) or "rotate"
    fov_deg: tuple[float, ...] = ()  # limited-FoV crop widths to draw from; empty = whole panoramas
    fov_prob: float = 1.0  # chance of a crop per training sample; evaluation crops only when 1.0
    fov_placement: str = "resize"  # "resize" or "canvas"
    fov_heading_known: bool = False  # canvas: at the heading's column (True) or centred (False)
    jitter: float = 0.0  # photometric jitter strength (training only)
    polar: bool = False  # SAFA-style polar transform of the aerial image to the aerial input size
    fov_curriculum: tuple = ()  # ((first_epoch, (fov, ...)), ...): widths by epoch, replacing fov_deg

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov_deg", tuple(float(v) for v in self.fov_deg))
        try:
            stages = tuple(sorted((int(e), tuple(float(v) for v in f)) for e, f in self.fov_curriculum))
        except (TypeError, ValueError):
            raise ValueError("fov_curriculum must be a list of [first_epoch, [fov, ...]] pairs") from None
        object.__setattr__(self, "fov_curriculum", stages)
        if any(not f or not all(0 < v <= 360 for v in f) for _, f in stages):
            raise ValueError(f"fov_curriculum widths must be non-empty lists in (0, 360], got {self.fov_curriculum}")
        if self.shift_aerial not in ("none", "rotate"):
            raise ValueError(f"shift_aerial must be 'none' or 'rotate', got {self.shift_aerial!r}")
        if self.fov_placement not in PLACEMENTS:
            raise ValueError(f"fov_placement must be one of {PLACEMENTS}, got {self.fov_placement!r}")
        if any(not 0 < f <= 360 for f in self.fov_deg):
            raise ValueError(f"fov_deg values must be in (0, 360], got {self.fov_deg}")
        if not 0.0 <= self.fov_prob <= 1.0:
            raise ValueError(f"fov_prob must be in [0, 1], got {self.fov_prob}")
        if self.jitter < 0:
            raise ValueError("jitter must be non-negative")

    def ground_input(self) -> dict:
        """How ground images become model input, for checkpoint metadata (read by ``saig locate``)."""
        return {"panorama": "equirectangular, column 0 = north, resized to the ground input size",
                "fov_deg": list(self.fov_deg), "fov_placement": self.fov_placement,
                "fov_heading_known": self.fov_heading_known, "polar_aerial": self.polar,
                "fov_curriculum": [[e, list(f)] for e, f in self.fov_curriculum]}

    def fovs_at(self, epoch: int) -> tuple[float, ...]:
        """The crop widths drawn in ``epoch`` (the curriculum stage reached, else ``fov_deg``)."""
        current = self.fov_deg
        for first, widths in self.fov_curriculum:
            if epoch >= first:
                current = widths
        return current


class PairTransform:
    """Turns one (ground, aerial) image pair into model inputs, randomly in training, fixed in evaluation."""

    def __init__(self, ground_size: tuple[int, int], aerial_size: tuple[int, int], augment: AugmentConfig) -> None:
        (gh, gw), (ah, aw) = ground_size, aerial_size
        self.ground_size, self.aerial_size, self.augment = (gh, gw), (ah, aw), augment
        self.fovs = augment.fovs_at(0)

    def set_epoch(self, epoch: int) -> None:
        """Move to the curriculum stage of ``epoch``."""
        self.fovs = self.augment.fovs_at(epoch)

    def ground(self, image: Image.Image, rng: np.random.Generator, train: bool) -> tuple[torch.Tensor, float | None]:
        """Ground input and the shift fraction applied (None when a FoV crop replaced the panorama)."""
        aug = self.augment
        fovs = self.fovs if train else aug.fov_deg
        crop = bool(fovs) and (rng.random() < aug.fov_prob if train else aug.fov_prob >= 1.0)
        fov = float(fovs[int(rng.integers(len(fovs)))]) if crop else 360.0
        if crop and fov < 360.0:
            heading = float(rng.uniform(0.0, 360.0))
            view = fov_crop(image, fov, heading)
            known = heading if aug.fov_heading_known else None
            return limited_fov_to_input(view, self.ground_size, fov, aug.fov_placement, known), None
        x = image_to_tensor(image, self.ground_size)
        if train and aug.shift:
            fraction = float(rng.uniform(0.0, 1.0))
            return circular_shift(x, fraction), fraction
        return x, 0.0

    def aerial(self, image: Image.Image, shift: float | None) -> torch.Tensor:
        """Aerial input, kept aligned with a ground image shifted by ``shift``.

        Polar images are rolled by the same fraction; north-up ones rotated when ``shift_aerial="rotate"``.
        """
        aug = self.augment
        if aug.polar:
            side = 2 * self.aerial_size[0]
            x = polar_transform(image_to_tensor(image, (side, side)), self.aerial_size)
            return circular_shift(x, shift) if shift else x
        if shift and aug.shift_aerial == "rotate":
            # the rolled panorama's column 0 now looks along azimuth -360 * shift
            image = rotate_aerial(image, (-360.0 * shift) % 360.0)
        return image_to_tensor(image, self.aerial_size)

    def __call__(self, ground: Image.Image, aerial: Image.Image, rng: np.random.Generator,
                 train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(ground input, aerial input) of one pair, augmented with ``rng`` when ``train``."""
        g, shift = self.ground(ground, rng, train)
        a = self.aerial(aerial, shift)
        if train and self.augment.jitter > 0:
            blank = (g == 0).all(dim=0).all(dim=0)  # canvas columns with no view stay empty
            g = photometric_jitter(g, self.augment.jitter, rng)
            g[:, :, blank] = 0.0
            a = photometric_jitter(a, self.augment.jitter, rng)
        return g, a
