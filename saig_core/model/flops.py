"""Multiply-accumulate counts of one branch, for efficiency figures (achieved FLOP/s = 2 x MACs / time).

Counted: every convolution, every Linear and the two attention matmuls (Q K^T and A V); not counted:
normalisation, activations, softmax, biases and additions (memory-bound, a few percent of the time).
"""
from __future__ import annotations

from saig_core.model.config import SMD_EXPANSION, SMD_OUTPUT_TOKENS, BackboneConfig


def stem_macs(cfg: BackboneConfig, size: tuple[int, int]) -> int:
    """3x3 convs (padding 1) of the stem plus its 1x1 projection to ``dim``."""
    h, w = size
    prev, total = 3, 0
    for channels, stride in zip(cfg.stem_channels, cfg.stem_strides, strict=True):
        h, w = -(-h // stride), -(-w // stride)  # ceil: padding 1 with a 3x3 kernel
        total += h * w * channels * prev * 9
        prev = channels
    return total + h * w * prev * cfg.dim


def block_macs(cfg: BackboneConfig, num_tokens: int) -> int:
    """One attention block: qkv and output projections, Q K^T and A V over all heads."""
    n, c = num_tokens, cfg.dim
    return n * c * 3 * c + n * c * c + 2 * n * n * c


def head_macs(pool: str, num_tokens: int, dim: int) -> int:
    """The pooling head: 0 for GAP; the three token-mixing Linears for SMD."""
    if pool == "gap":
        return 0
    n = num_tokens
    return dim * (n * SMD_EXPANSION * n * 2 + n * SMD_OUTPUT_TOKENS)


def branch_macs(cfg: BackboneConfig, size: tuple[int, int], pool: str = "gap") -> int:
    """MACs to encode one image of ``size`` (H, W) with one branch."""
    n = (size[0] // 16) * (size[1] // 16)
    return stem_macs(cfg, size) + cfg.depth * block_macs(cfg, n) + head_macs(pool, n, cfg.dim)
