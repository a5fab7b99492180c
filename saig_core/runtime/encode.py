"""Encoding batches of images into descriptors: the one helper the index builder, ``locate``,
training evaluation and the benchmark share.

:class:`Encoder` puts an inference copy of a model on a device (BatchNorm folded into the stem
convolutions, channels-last on CPU: exact rewrites, descriptors unchanged within fp32 rounding) and
runs each batch without autograd and at the chosen precision (see
:mod:`saig_core.runtime.device`). Descriptors always come back as L2-normalised float32 CPU tensors.

    encoder = Encoder(load_checkpoint(path), device="auto", precision="fast")
    for desc in encoder.encode_batches("aerial", batches):   # each batch (B, 3, H, W)
        ...
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn

from saig_core.model.saig_model import SAIGModel
from saig_core.runtime.device import autocast, resolve_device, resolve_precision

BRANCHES = ("ground", "aerial")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@torch.no_grad()
def fold_batchnorm(model: ModuleT) -> ModuleT:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in a Sequential into that conv.

    Works in place and returns ``model``. The folded network computes the same function as the
    original in eval mode (BN with running statistics is an affine map per channel).
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            conv, bn = seq[i - 1], seq[i]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue  # BN without running statistics uses batch statistics: not foldable
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.affine:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.affine:
                shift = shift + bn.bias.double()
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
            weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
            conv.weight.copy_(weight.to(conv.weight.dtype))
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.empty_like(shift, dtype=conv.weight.dtype))
            conv.bias.copy_((bias * scale + shift).to(conv.bias.dtype))
            seq[i] = nn.Identity()
    return model


def optimize_for_inference(model: SAIGModel, device: str | torch.device = "cpu") -> SAIGModel:
    """An eval-mode inference copy of ``model`` on ``device`` with exact rewrites only.

    BatchNorm is folded into the stem convolutions, and on CPU the weights use the channels-last
    layout (oneDNN's fast path for convolutions). The copy's state dict differs from the original
    (no BN keys), so fingerprints must be taken from the original model.
    """
    device = resolve_device(device)
    fast = fold_batchnorm(copy.deepcopy(model).eval())
    fast.to(device)
    if device.type == "cpu":
        # torch documents Module.to(memory_format=...) but its typing overloads leave the keyword out
        fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


class Encoder:
    """Encodes batches for one model on one device at one precision (see the module docstring).

    With ``optimize=False`` the model itself is used (switched to eval mode and moved to the
    device) instead of an optimised copy; the benchmark uses it as the unoptimised baseline.
    """

    def __init__(
        self,
        model: SAIGModel,
        device: str | torch.device = "auto",
        precision: str = "auto",
        optimize: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.device, precision)
        self.cfg = model.cfg
        self.model = optimize_for_inference(model, self.device) if optimize else model.eval().to(self.device)

    @property
    def descriptor_dim(self) -> int:
        """Length D of the descriptors this encoder returns."""
        return self.cfg.descriptor_dim

    def input_size(self, branch: str) -> tuple[int, int]:
        """(H, W) the branch expects."""
        return self.cfg.ground_size if _check_branch(branch) == "ground" else self.cfg.aerial_size

    def encode(self, branch: str, batch: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 descriptors (B, D) on the CPU for one batch (B, 3, H, W)."""
        fn = self.model.encode_ground if _check_branch(branch) == "ground" else self.model.encode_aerial
        with torch.no_grad(), autocast(self.device, self.precision):  # plain tensors out, usable anywhere
            out = fn(batch.to(self.device))
        return out.float().cpu()

    def encode_batches(self, branch: str, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Descriptors for each batch of ``batches``, lazily (the caller controls memory)."""
        _check_branch(branch)
        for batch in batches:
            yield self.encode(branch, batch)


def encode_batches(
    model: SAIGModel,
    branch: str,
    batches: Iterable[torch.Tensor],
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> Iterator[torch.Tensor]:
    """Shorthand for ``Encoder(model, device, precision).encode_batches(branch, batches)``."""
    return Encoder(model, device=device, precision=precision).encode_batches(branch, batches)


def _check_branch(branch: str) -> str:
    if branch not in BRANCHES:
        raise ValueError(f"branch must be 'ground' or 'aerial', got {branch!r}")
    return branch
