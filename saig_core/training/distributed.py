"""Distributed training helpers for ``torchrun``: process groups, global-batch contrastive losses, sync BN.

Contrastive losses need the whole global batch: each rank gathers every rank's descriptors and
computes the same loss over all of them, with gradients flowing into its own descriptors only.
Scaling that loss by the world size before backward makes DDP's gradient average equal the
single-process gradient of the global batch. Batch-norm statistics are synchronised across ranks
too (``torch.nn.SyncBatchNorm`` on CUDA, :class:`CpuSyncBatchNorm2d` on CPU with gloo), so a run on
W processes equals a run on one process with the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from saig_core.runtime.device import resolve_device


@dataclass
class DistContext:
    """This process's place in the run: rank, world size, local rank, device, and the CPU sync-BN group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    bn_group: dist.ProcessGroup | None = None  # gloo group for CpuSyncBatchNorm2d (None on CUDA / one process)

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the run has more than one process."""
        return self.world > 1


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    bn_group = dist.new_group(backend="gloo") if device.type != "cuda" else None
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, bn_group)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group, if one was joined."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's (B, D) rows concatenated in rank order; only this rank's rows carry gradients."""
    if not ctx.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[ctx.rank] = x
    return torch.cat(parts)


def gather_rows(x: torch.Tensor, total: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble rows sharded round-robin (row i on rank i % world) into all ``total`` rows."""
    if not ctx.enabled:
        return x
    per_rank = (total + ctx.world - 1) // ctx.world
    padded = torch.zeros(per_rank, x.shape[1], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    out = torch.empty(total, x.shape[1], dtype=x.dtype, device=x.device)
    for r, part in enumerate(parts):
        n = len(range(r, total, ctx.world))
        out[r::ctx.world] = part[:n]
    return out


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (no-op on one process)."""
    if ctx.enabled:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch (any backend, gradients included)."""

    group: dist.ProcessGroup | None = None  # None: the default (WORLD) group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with global-batch statistics in distributed training, else like ``BatchNorm2d``."""
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / c, dtype=torch.float32, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]),
                                    self.group or dist.group.WORLD)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp(min=0.0)
        if self.track_running_stats:
            running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
            # track_running_stats=True makes BatchNorm register all three buffers
            assert running_mean is not None and running_var is not None and tracked is not None
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                running_mean.mul_(1 - m).add_(m * mean.detach())
                running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
                tracked.add_(1)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Make every BatchNorm2d of ``model`` use global-batch statistics (no-op on one process)."""
    if not ctx.enabled:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = CpuSyncBatchNorm2d  # same parameters and buffers, synchronised forward
            cast(CpuSyncBatchNorm2d, module).group = ctx.bn_group
    return model
