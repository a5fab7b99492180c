"""An independent rendering of the authors' SAIG, written from ../shared/docs/saig-reference.md only.

Nothing here imports saig_core: the key names come from the documented checkpoint layout and the
forward pass is spelled out with plain tensor operations in float64, so a test comparing it with
saig_core checks our model against the documented behaviour, not against itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STEM = [(3, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
DIM, HEADS = 384, 12
BN_EPS = 1e-5  # torch.nn.BatchNorm2d default, used by the authors' stem
LN_EPS = 1e-6


def branch_shapes(depth: int, num_tokens: int, smd: bool, dim: int = DIM) -> dict[str, tuple[int, ...]]:
    """The documented keys of one branch (without the model_grd./model_sat. prefix) and their shapes."""
    shapes: dict[str, tuple[int, ...]] = {"backbone.pos_embed": (1, num_tokens, dim)}
    stem = "backbone.patch_embed.conv_stem"
    for i, (cin, cout, _) in enumerate(STEM):
        conv, bn = 3 * i, 3 * i + 1  # Sequential indices: conv, BN, (ReLU has no weights)
        shapes[f"{stem}.{conv}.weight"] = (cout, cin, 3, 3)
        shapes[f"{stem}.{conv}.bias"] = (cout,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{stem}.{bn}.{name}"] = (cout,)
        shapes[f"{stem}.{bn}.num_batches_tracked"] = ()
    shapes[f"{stem}.18.weight"] = (dim, 512, 1, 1)
    shapes[f"{stem}.18.bias"] = (dim,)
    for b in range(depth):
        p = f"backbone.blocks.{b}"
        shapes.update({
            f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
            f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
            f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
        })
    shapes["backbone.norm.weight"] = (dim,)
    shapes["backbone.norm.bias"] = (dim,)
    if smd:
        n = num_tokens
        shapes.update({
            "linear1.weight": (4 * n, n), "linear1.bias": (4 * n,),
            "linear2.weight": (n, 4 * n), "linear2.bias": (n,),
            "linear3.weight": (8, n), "linear3.bias": (8,),
        })
    return shapes


def random_branch(depth: int, num_tokens: int, smd: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Non-trivial random weights for one branch: BN statistics, LN affine, peaked attention."""
    out = {}
    for key, shape in branch_shapes(depth, num_tokens, smd).items():
        randn = torch.randn(shape, generator=generator) if shape else None
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=generator) * 1.5
        elif key.endswith("running_mean"):
            out[key] = 0.2 * randn
        elif ".conv_stem." in key and key.endswith("weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = randn * math.sqrt(2.0 / fan_in)
        elif ("norm" in key or ".conv_stem." in key) and key.endswith("weight"):
            out[key] = 1.0 + 0.2 * randn  # LayerNorm / BatchNorm scale
        elif key.endswith("bias"):
            out[key] = 0.1 * randn
        elif key.endswith("pos_embed"):
            out[key] = 0.5 * randn
        else:  # Linear weights: large enough for peaked softmaxes
            out[key] = randn * (1.5 / math.sqrt(shape[1]))
    return out


def authors_state_dict(depth: int, ground_tokens: int, aerial_tokens: int, smd: bool, seed: int = 0) -> dict:
    """A full two-branch state dict in the authors' layout (model_grd.* then model_sat.*)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, n in (("model_grd.", ground_tokens), ("model_sat.", aerial_tokens)):
        state.update({prefix + k: v for k, v in random_branch(depth, n, smd, g).items()})
    return state


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance
    return (x - mean) / torch.sqrt(var + LN_EPS) * weight + bias


def reference_descriptor(state: dict[str, torch.Tensor], prefix: str, image: torch.Tensor, smd: bool) -> torch.Tensor:
    """The documented forward pass of one branch, in float64; returns L2-normalised (B, D)."""
    w = {k[len(prefix):]: v.double() for k, v in state.items() if k.startswith(prefix)}
    x = image.double()
    stem = "backbone.patch_embed.conv_stem"
    for i, (_, _, stride) in enumerate(STEM):
        conv, bn = 3 * i, 3 * i + 1
        x = F.conv2d(x, w[f"{stem}.{conv}.weight"], w[f"{stem}.{conv}.bias"], stride=stride, padding=1)
        mean, var = w[f"{stem}.{bn}.running_mean"], w[f"{stem}.{bn}.running_var"]
        scale, shift = w[f"{stem}.{bn}.weight"], w[f"{stem}.{bn}.bias"]
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + BN_EPS)
        x = x * scale[:, None, None] + shift[:, None, None]
        x = torch.clamp(x, min=0.0)
    x = F.conv2d(x, w[f"{stem}.18.weight"], w[f"{stem}.18.bias"])
    b, c, h, wd = x.shape
    tokens = x.reshape(b, c, h * wd).permute(0, 2, 1)  # row-major: token index = row * W + col
    tokens = tokens + w["backbone.pos_embed"]
    depth = len({k.split(".")[2] for k in w if k.startswith("backbone.blocks.")})
    hd = c // HEADS
    for i in range(depth):
        p = f"backbone.blocks.{i}"
        y = _layer_norm(tokens, w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"])
        qkv = y @ w[f"{p}.attn.qkv.weight"].T + w[f"{p}.attn.qkv.bias"]
        qkv = qkv.reshape(b, h * wd, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-2, -1)) * hd**-0.5
        attn = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
        attn = attn / attn.sum(dim=-1, keepdim=True)
        y = (attn @ v).transpose(1, 2).reshape(b, h * wd, c)
        tokens = tokens + (y @ w[f"{p}.attn.proj.weight"].T + w[f"{p}.attn.proj.bias"])
    tokens = _layer_norm(tokens, w["backbone.norm.weight"], w["backbone.norm.bias"])
    if smd:
        y = tokens.transpose(1, 2)  # (B, C, N)
        y = y @ w["linear1.weight"].T + w["linear1.bias"]
        y = 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))  # exact GELU
        y = y @ w["linear2.weight"].T + w["linear2.bias"]
        y = y @ w["linear3.weight"].T + w["linear3.bias"]  # (B, C, 8)
        desc = y.transpose(1, 2).reshape(b, -1)  # (B, 8, C) flattened
    else:
        desc = tokens.mean(dim=1)
    return desc / torch.clamp(desc.norm(dim=1, keepdim=True), min=1e-12)
