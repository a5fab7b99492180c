"""Pooling heads that turn a token map (B, N, C) into one descriptor per image (before L2 norm)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saig_core.model.config import SMD_EXPANSION, SMD_OUTPUT_TOKENS


class GlobalAveragePool(nn.Module):
    """GAP: the mean over tokens, (B, N, C) -> (B, C)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) -> their mean (B, C)."""
        return tokens.mean(dim=1)


class SpatialMixingHead(nn.Module):
    """SMD: mix information across the N tokens (weights shared by all channels), then project to 8.

    (B, N, C) -> transpose (B, C, N) -> Linear(N, 4N) -> GELU -> Linear(4N, N) -> Linear(N, 8)
    -> transpose (B, 8, C) -> flatten (B, 8C). No residual, no normalisation.
    """

    def __init__(self, num_tokens: int, out_tokens: int = SMD_OUTPUT_TOKENS, expansion: int = SMD_EXPANSION) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.linear1 = nn.Linear(num_tokens, expansion * num_tokens)
        self.linear2 = nn.Linear(expansion * num_tokens, num_tokens)
        self.linear3 = nn.Linear(num_tokens, out_tokens)
        for m in (self.linear1, self.linear2, self.linear3):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) -> descriptor (B, 8C), output-token major."""
        x = tokens.transpose(1, 2)  # (B, C, N)
        x = self.linear2(F.gelu(self.linear1(x)))
        x = self.linear3(x)  # (B, C, 8)
        return x.transpose(1, 2).flatten(1)  # (B, 8*C), output-token major


def build_pool(pool: str, num_tokens: int) -> nn.Module:
    """The pooling head named ``pool`` (``gap`` or ``smd``) for a branch of ``num_tokens`` tokens."""
    if pool == "gap":
        return GlobalAveragePool()
    if pool == "smd":
        return SpatialMixingHead(num_tokens)
    raise ValueError(f"unknown pool {pool!r}; expected 'gap' or 'smd'")
