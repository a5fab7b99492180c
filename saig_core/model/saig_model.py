"""The two-branch SAIG retrieval model: separate ground and aerial backbones, each with its own head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saig_core.errors import SaigError
from saig_core.model.backbone import SAIGBackbone
from saig_core.model.config import ModelConfig, preset_config
from saig_core.model.orientation import SectorPool, canvas_coverage
from saig_core.model.pooling import build_pool


class InputError(SaigError, ValueError):
    """An input tensor the model cannot encode faithfully."""


class Branch(nn.Module):
    """Backbone + pooling head for one view; returns unnormalised descriptors."""

    def __init__(self, cfg: ModelConfig, size: tuple[int, int], grid: tuple[int, int], name: str) -> None:
        super().__init__()
        self.name = name
        h, w = size
        self.size = (h, w)
        self.backbone = SAIGBackbone(cfg.backbone, grid)
        self.head = SectorPool(grid, cfg.sectors) if cfg.pool == "sector" else build_pool(cfg.pool, grid[0] * grid[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> unnormalised descriptors (B, D); inputs are not checked here.

        A ground branch with a sector head masks its sectors by the canvas coverage of ``x``.
        """
        tokens = self.backbone(x)
        if isinstance(self.head, SectorPool):
            coverage = canvas_coverage(x, self.head.sectors) if self.name == "ground" else None
            return self.head(tokens, coverage)
        return self.head(tokens)


class SAIGModel(nn.Module):
    """Ground and aerial branches with unshared weights.

    Inputs are float images (B, 3, H, W) normalised with mean = std = 0.5 (values in [-1, 1]) at the
    configured sizes. A single-channel (grey) input is repeated to three channels; anything else
    that cannot be encoded faithfully (wrong size, RGBA, integer dtype, NaN/Inf) raises
    :class:`InputError`. Descriptors are L2-normalised float32 (B, D).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ground = Branch(cfg, cfg.ground_size, cfg.ground_grid, "ground")
        self.aerial = Branch(cfg, cfg.aerial_size, cfg.aerial_grid, "aerial")

    @property
    def descriptor_dim(self) -> int:
        """Length D of one descriptor."""
        return self.cfg.descriptor_dim

    def encode_ground(self, x: torch.Tensor) -> torch.Tensor:
        """Check and encode ground images (B, 3, H, W) into L2-normalised float32 descriptors (B, D)."""
        return self._encode(self.ground, x)

    def encode_aerial(self, x: torch.Tensor) -> torch.Tensor:
        """Check and encode aerial images (B, 3, H, W) into L2-normalised float32 descriptors (B, D)."""
        return self._encode(self.aerial, x)

    def forward(self, ground: torch.Tensor, aerial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of ground and a batch of aerial images: (ground descriptors, aerial descriptors)."""
        return self.encode_ground(ground), self.encode_aerial(aerial)

    def _encode(self, branch: Branch, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, branch.size, branch.name)
        return F.normalize(branch(x).float(), dim=1)


def check_input(x: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """Validate (and, for grey images, convert) a batch for a branch expecting ``size`` (H, W)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} input must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name} input must be (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(
            f"{name} input has dtype {x.dtype}; expected float values normalised with mean = std = 0.5 "
            "(see saig_core.data.preprocess)"
        )
    channels, h, w = x.shape[1:]
    if (h, w) != tuple(size):
        raise InputError(f"{name} input is {h}x{w}; this model expects {size[0]}x{size[1]} (H x W)")
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels != 3:
        hint = " (RGBA: drop or composite the alpha channel first)" if channels == 4 else ""
        raise InputError(f"{name} input has {channels} channels; expected 3 (RGB) or 1 (grey){hint}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} input contains NaN or Inf values")
    return x


def build_model(
    preset: str,
    pool: str = "gap",
    ground_size: tuple[int, int] = (128, 512),
    aerial_size: tuple[int, int] = (256, 256),
) -> SAIGModel:
    """A freshly initialised two-branch model from a named preset (``saig_s``, ``saig_d``, ...)."""
    return SAIGModel(preset_config(preset, pool=pool, ground_size=ground_size, aerial_size=aerial_size))


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements in ``model``."""
    return sum(p.numel() for p in model.parameters())
