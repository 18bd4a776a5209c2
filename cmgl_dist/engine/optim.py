"""Optimizer choice: torch AdamW or Adam through DeepSpeed's config, or apex's FusedAdam / FusedLAMB.

`adamw` and `adam` are built by DeepSpeed from the derived JSON (see deepspeed_config.py). The apex optimizers
are built here and handed to `deepspeed.initialize`; asking for one without apex fails up front.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from cmgl_dist.config import ConfigError, OptimizerConfig

DEEPSPEED_BUILT = ("adamw", "adam")  # torch's optimizers, named in DeepSpeed's JSON


def require_apex(cfg: OptimizerConfig) -> None:
    """Fail before any work when the config names an apex optimizer that cannot be imported."""
    if cfg.name in DEEPSPEED_BUILT:
        return
    try:
        import apex.optimizers  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"optimizer.name={cfg.name} needs NVIDIA apex built with --cuda_ext ({err}); install it "
            "(https://github.com/NVIDIA/apex#installation) or set optimizer.name=adamw") from None
    if not torch.cuda.is_available():
        raise ConfigError(f"optimizer.name={cfg.name} runs on CUDA only: set optimizer.name=adamw on CPU")


def build_client_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter]) -> Optional[torch.optim.Optimizer]:
    """The apex optimizer for `deepspeed.initialize(optimizer=...)`, or None when DeepSpeed builds it."""
    if cfg.name in DEEPSPEED_BUILT:
        return None
    from apex.optimizers import FusedAdam, FusedLAMB

    common = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "fused_adam":
        return FusedAdam(params, adam_w_mode=True, **common)
    return FusedLAMB(params, **common)
