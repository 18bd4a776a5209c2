"""Learning-rate schedule: linear warmup, then cosine decay to a floor (or constant).

Built from the config and handed to `deepspeed.initialize`, which steps it once per optimizer step
and keeps its state in every checkpoint.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cmgl_dist.config import ScheduleConfig


class WarmupCosine:
    """lr multiplier for the optimizer step with 0-based index `step`.

    Warmup rises linearly so that step 0 already trains (1/warmup of lr) and step warmup-1 reaches
    lr; the cosine then falls from lr towards min_lr_ratio * lr at `total_steps`.
    """

    def __init__(self, cfg: ScheduleConfig, total_steps: int):
        self.name = cfg.name
        self.warmup = cfg.warmup_steps
        self.floor = cfg.min_lr_ratio
        self.total = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler_factory(cfg: ScheduleConfig, total_steps: int):
    """What `deepspeed.initialize(lr_scheduler=...)` takes: optimizer -> scheduler."""
    schedule = WarmupCosine(cfg, total_steps)

    def build(optimizer: Optimizer) -> LambdaLR:
        # A plain function, not the object: LambdaLR then checkpoints no schedule parameters, so a
        # resumed run follows its own config (e.g. a raised train.steps) rather than the old one.
        return LambdaLR(optimizer, lambda step: schedule(step))
    return build


def apply_current_schedule(scheduler: LambdaLR) -> None:
    """Set every param group's lr from the scheduler's own lambda at its restored step.

    A resume restores the optimizer's lr from the checkpoint, i.e. from the schedule the run had
    then; the scheduler only recomputes it at its next step, so without this the first step after
    a `train.steps` change would run at the old schedule's lr.
    """
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
