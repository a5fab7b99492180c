"""Per-iteration learning-rate schedule: optional linear warm-up, then cosine decay, floored."""
from __future__ import annotations

import math

from torch.optim import Optimizer


class CosineSchedule:
    """Sets every group's ``lr`` to ``initial_lr * factor(step)`` after each optimizer step.

    ``factor`` rises linearly over ``warmup_steps`` (``(step + 1) / warmup_steps``), then follows
    ``0.5 (1 + cos(pi * progress))`` to the end of ``total_steps``; it never drops below
    ``min_factor`` (the authors' 1e-6).
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 1e-6) -> None:
        if total_steps < 1:
            raise ValueError("total_steps must be at least 1")
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps, self.min_factor = int(total_steps), int(warmup_steps), float(min_factor)
        self.step_count = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def factor(self, step: int) -> float:
        """The learning-rate multiplier after ``step`` optimizer steps."""
        if step < self.warmup_steps:
            f = (step + 1) / self.warmup_steps
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            f = 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(f, self.min_factor)

    def step(self) -> None:
        """Advance one optimizer step and set the groups' learning rates for the next one."""
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        """The step count and schedule shape, for resuming."""
        return {"step_count": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_factor": self.min_factor}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved step count (the shape comes from the constructor) and set the learning rates."""
        self.step_count = int(state["step_count"])
        self._apply()
