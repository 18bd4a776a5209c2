"""The DeepSpeed JSON, derived from a CMGLConfig: the numbers live in the YAML only.

The learning-rate schedule is not part of this JSON: `schedule.py` builds it from the same config
and hands it to `deepspeed.initialize`, which steps it and saves it in every checkpoint.
"""
from __future__ import annotations

from cmgl_dist.config import CMGLConfig

# DeepSpeed prints its own step line every `steps_per_print` steps; telemetry.py logs instead.
_NEVER = 2**31 - 1
_AUTOCAST_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


def deepspeed_config(cfg: CMGLConfig, *, world_size: int, cuda: bool) -> dict:
    train, zero = cfg.train, cfg.zero
    ds = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.samples_per_step(world_size),
        "gradient_clipping": train.grad_clip,
        "steps_per_print": _NEVER,
        "zero_optimization": _zero_section(zero.stage, zero.offload_optimizer, zero.offload_params, cuda),
    }
    if train.precision != "fp32":
        # Mixed precision through torch.autocast: weights, optimizer and batch-norm statistics stay
        # fp32, matmuls and convolutions run in 16 bits (GLoRIA's AMP). DeepSpeed's "bf16"/"fp16"
        # modes instead cast the whole module, which breaks batch norm in the image backbones.
        ds["torch_autocast"] = {"enabled": True, "dtype": _AUTOCAST_DTYPE[train.precision]}
    if cfg.optimizer.name in ("adamw", "adam"):
        opt = cfg.optimizer
        ds["optimizer"] = {"type": "AdamW" if opt.name == "adamw" else "Adam", "params": {
            "lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps, "weight_decay": opt.weight_decay,
            # torch.optim.AdamW / Adam instead of DeepSpeed's JIT-built FusedAdam (its build fails on
            # some CUDA setups); torch's own fused kernel on CUDA, the foreach path on CPU.
            "torch_adam": True, "fused": cuda,
        }}
        if opt.name == "adam":  # torch.optim.Adam: weight decay added to the gradient (coupled L2), as GLoRIA
            ds["optimizer"]["params"]["adam_w_mode"] = False
    else:
        # apex's optimizers are built in optim.py and handed to deepspeed.initialize.
        ds["zero_allow_untested_optimizer"] = True
    return ds


def _zero_section(stage: int, offload_optimizer: bool, offload_params: bool, cuda: bool) -> dict:
    section = {"stage": stage}
    if stage >= 1:
        section.update(overlap_comm=cuda, contiguous_gradients=True)
    if offload_optimizer:
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if offload_params:
        section["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    return section
