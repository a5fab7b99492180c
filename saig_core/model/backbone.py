"""The SAIG backbone: a convolutional stem, learnable positions, attention-only blocks.

One branch maps an image (B, 3, H, W) to a token map (B, N, dim) with N = (H/16)(W/16) tokens in
row-major order. Module names follow the authors' checkpoint layout so their weights load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saig_core.model.config import BackboneConfig


class ConvStem(nn.Module):
    """3x3 conv -> BatchNorm -> ReLU for each stem stage, then a 1x1 projection to ``dim``.

    Kept as one ``nn.Sequential`` named ``conv_stem`` so the parameter indices (convs 0, 3, 6, ...,
    the projection last) match the published checkpoints.
    """

    def __init__(self, cfg: BackboneConfig, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for channels, stride in zip(cfg.stem_channels, cfg.stem_strides, strict=True):
            layers += [
                nn.Conv2d(prev, channels, kernel_size=3, stride=stride, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            prev = channels
        layers.append(nn.Conv2d(prev, cfg.dim, kernel_size=1))
        self.conv_stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> row-major tokens (B, N, dim), one per 16x16 pixels."""
        x = self.conv_stem(x)  # (B, dim, H/16, W/16)
        return x.flatten(2).transpose(1, 2)  # (B, N, dim), row-major tokens


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (scale head_dim^-0.5)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over the tokens of ``x`` (B, N, C); returns the projected output (B, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm attention with a residual; SAIG blocks have no FFN."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + attn(norm1(x))`` on tokens (B, N, C)."""
        return x + self.attn(self.norm1(x))


class SAIGBackbone(nn.Module):
    """One branch: stem -> + positional embedding -> blocks -> LayerNorm. Returns (B, N, dim)."""

    def __init__(self, cfg: BackboneConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.cfg = cfg
        rows, cols = grid
        self.grid = (rows, cols)
        self.patch_embed = ConvStem(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.layer_norm_eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        """Tokens per image: rows x cols of the token grid."""
        return self.grid[0] * self.grid[1]

    def reset_parameters(self) -> None:
        """Published init: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0), pos_embed trunc-normal(0.02)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) at the configured size -> normalised tokens (B, N, dim)."""
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a (1, N, C) positional embedding from ``old_grid`` to ``new_grid`` (rows, cols)."""
    old, new = tuple(old_grid), tuple(new_grid)  # a list grid must compare equal to the same tuple grid
    if pos_embed.shape[1] != old[0] * old[1]:
        raise ValueError(f"pos_embed has {pos_embed.shape[1]} tokens, not a {old[0]}x{old[1]} grid")
    if old == new:
        return pos_embed
    c = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old[0], old[1], c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], c).to(pos_embed.dtype)
