"""Model configuration: small dataclasses and the named presets.

A backbone is fully described by :class:`BackboneConfig`; a two-branch retrieval model by
:class:`ModelConfig` (one backbone config shared by both branches' shapes, a pooling head and the
input size of each branch). Both round-trip through plain dicts so they can live inside a
``weights_only`` checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

PATCH_STRIDE = 16
POOLS = ("gap", "smd", "sector")
#: Azimuth sectors of the orientation-aware ``sector`` head (one descriptor per sector, see orientation.py).
DEFAULT_SECTORS = 8
SMD_OUTPUT_TOKENS = 8
SMD_EXPANSION = 4


@dataclass(frozen=True)
class BackboneConfig:
    """One SAIG branch: convolutional stem (total stride 16) + attention-only blocks."""

    depth: int = 11
    dim: int = 384
    heads: int = 12
    stem_channels: tuple[int, ...] = (64, 128, 128, 256, 256, 512)
    stem_strides: tuple[int, ...] = (2, 2, 1, 2, 1, 2)
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem_channels", tuple(int(c) for c in self.stem_channels))
        object.__setattr__(self, "stem_strides", tuple(int(s) for s in self.stem_strides))
        if len(self.stem_channels) != len(self.stem_strides) or not self.stem_channels:
            raise ValueError("stem_channels and stem_strides must be non-empty and of equal length")
        stride = 1
        for s in self.stem_strides:
            stride *= s
        if stride != PATCH_STRIDE:
            raise ValueError(f"stem strides multiply to {stride}; SAIG needs a total stride of {PATCH_STRIDE}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.depth < 1:
            raise ValueError("depth must be at least 1")


@dataclass(frozen=True)
class ModelConfig:
    """A two-branch (ground, aerial) SAIG model; sizes are (height, width) in pixels."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pool: str = "gap"
    ground_size: tuple[int, int] = (128, 512)
    aerial_size: tuple[int, int] = (256, 256)
    preset: str = "custom"
    sectors: int = DEFAULT_SECTORS  # only used by pool "sector"

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))
        object.__setattr__(self, "ground_size", _check_size("ground_size", self.ground_size))
        object.__setattr__(self, "aerial_size", _check_size("aerial_size", self.aerial_size))
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool == "sector":
            cols = (self.ground_grid[1], self.aerial_grid[1])
            if self.sectors < 1 or any(c % self.sectors for c in cols):
                raise ValueError(f"sectors {self.sectors} must divide the token columns of both branches {cols}")

    @property
    def ground_grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) of the ground branch at ``ground_size``."""
        return token_grid(self.ground_size)

    @property
    def aerial_grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) of the aerial branch at ``aerial_size``."""
        return token_grid(self.aerial_size)

    @property
    def descriptor_dim(self) -> int:
        """Length of one descriptor: ``dim`` for GAP, ``8 * dim`` for SMD, ``sectors * dim`` for sector."""
        if self.pool == "sector":
            return self.backbone.dim * self.sectors
        return self.backbone.dim * (SMD_OUTPUT_TOKENS if self.pool == "smd" else 1)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (tuples as lists) that can be stored in a ``weights_only`` checkpoint."""
        d = asdict(self)
        d["backbone"]["stem_channels"] = list(self.backbone.stem_channels)
        d["backbone"]["stem_strides"] = list(self.backbone.stem_strides)
        d["ground_size"] = list(self.ground_size)
        d["aerial_size"] = list(self.aerial_size)
        if self.pool != "sector":
            del d["sectors"]  # models without the sector head keep the config (and fingerprint) they had
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output."""
        d = dict(d)
        d["backbone"] = BackboneConfig(**d["backbone"])
        return cls(**d)

    def with_sizes(self, ground_size=None, aerial_size=None) -> ModelConfig:
        """A copy with new input sizes (H, W); ``None`` keeps the current size of that branch."""
        return replace(
            self,
            ground_size=tuple(ground_size) if ground_size is not None else self.ground_size,
            aerial_size=tuple(aerial_size) if aerial_size is not None else self.aerial_size,
        )


def _check_size(name: str, size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {size!r}") from None
    if h <= 0 or w <= 0 or h % PATCH_STRIDE or w % PATCH_STRIDE:
        raise ValueError(f"{name} {h}x{w}: both sides must be positive multiples of {PATCH_STRIDE}")
    return (h, w)


def token_grid(size: tuple[int, int]) -> tuple[int, int]:
    """Token grid (rows, cols) of an input of ``size`` (height, width): one token per 16x16 pixels."""
    h, w = _check_size("size", size)
    return (h // PATCH_STRIDE, w // PATCH_STRIDE)


# Named backbone presets. saig_s / saig_d are the published models; the small ones exist for tests,
# the demo and CPU training (a cheaper stem with the same total stride of 16).
BACKBONE_PRESETS: dict[str, BackboneConfig] = {
    "saig_s": BackboneConfig(depth=11),
    "saig_d": BackboneConfig(depth=22),
    "saig_tiny": BackboneConfig(
        depth=4, dim=192, heads=6, stem_channels=(32, 64, 128, 192), stem_strides=(2, 2, 2, 2)
    ),
    "saig_micro": BackboneConfig(
        depth=2, dim=64, heads=4, stem_channels=(16, 32, 64), stem_strides=(4, 2, 2)
    ),
}


def preset_config(
    preset: str,
    pool: str = "gap",
    ground_size: tuple[int, int] = (128, 512),
    aerial_size: tuple[int, int] = (256, 256),
) -> ModelConfig:
    """The :class:`ModelConfig` of a named preset (see :data:`BACKBONE_PRESETS`)."""
    try:
        backbone = BACKBONE_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(BACKBONE_PRESETS)}") from None
    return ModelConfig(backbone=backbone, pool=pool, ground_size=ground_size, aerial_size=aerial_size, preset=preset)
