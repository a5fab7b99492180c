"""Sharpness-aware minimisation: SAM and its adaptive form ASAM, wrapping any torch optimizer.

One step: gradient at ``w``; move to the worst nearby point ``w + e_w`` with

* ASAM (``adaptive=True``): ``e_w = rho * w^2 * g / || |w| * g ||_2``,
* SAM: ``e_w = rho * g / ||g||_2``,

(norms over all parameters together); gradient again there; restore ``w`` and let the base
optimizer step with that second gradient. The perturbation is invariant to a common scale of
the gradients, so it may be taken from gradients still multiplied by an AMP loss scale.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NoReturn, overload

import torch
from torch.optim import Optimizer

__all__ = ["SAM"]


class SAM(Optimizer):
    """(A)SAM around ``base_optimizer_cls(params, **base_kwargs)``; param groups are shared with it."""

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer_cls: type[Optimizer],
        rho: float = 2.0,
        adaptive: bool = True,
        eps: float = 1e-12,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.eps = eps
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: schedulers see both

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Move every parameter to ``w + e_w`` (remembering ``e_w``); a non-finite gradient moves nothing."""
        grads = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad.float()
                    grads.append((p.detach().float().abs() * g) if group["adaptive"] else g)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        if norm is None or not bool(torch.isfinite(norm)):  # e.g. an fp16 overflow: the scaler skips this step
            if zero_grad:
                self.zero_grad()
            return
        for group in self.param_groups:
            scale = group["rho"] / (norm + self.eps)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad.float() * scale
                if group["adaptive"]:
                    e_w = e_w * p.detach().float().pow(2)
                e_w = e_w.to(p.dtype)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Undo :meth:`first_step`: every parameter back to ``w`` (gradients are kept)."""
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Restore ``w`` and take the base optimizer's step with the gradient from the perturbed point."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    # Overloads compatible with Optimizer.step's; SAM cannot step without a closure (NoReturn: it raises).
    @overload
    def step(self, closure: None = None) -> NoReturn: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @overload
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor: ...

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Full SAM step; ``closure`` does forward + backward (gradients zeroed beforehand) and returns the loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss and its gradients")
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step(zero_grad=False)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (moments, step counts) and the shared groups (rho, adaptive, lr...)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`state_dict` output into the base optimizer and share its groups again."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
