"""Process-group set-up, in one place: NCCL on GPUs, gloo on CPU, the same code path otherwise.

Launchers (torchrun, the deepspeed launcher, srun + torchrun) export RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT; a plain `cmgl train` is a world of one. DeepSpeed 0.19 finds its CPU
accelerator by itself when CUDA is absent (with a warning); DS_ACCELERATOR=cpu states it up front,
and gloo is named explicitly because the CPU accelerator otherwise prefers oneCCL when installed.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def launch_env() -> dict[str, int]:
    """Rank layout as the launcher exported it (a world of one without a launcher)."""
    get = lambda key, default: int(os.environ.get(key, default))  # noqa: E731
    world_size = get("WORLD_SIZE", 1)
    return {"rank": get("RANK", 0), "world_size": world_size, "local_rank": get("LOCAL_RANK", 0),
            "local_world_size": get("LOCAL_WORLD_SIZE", world_size)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_minutes: int = 30) -> World:
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    layout = launch_env()
    if cuda:
        torch.cuda.set_device(layout["local_rank"])
        device = torch.device("cuda", layout["local_rank"])
    else:
        device = torch.device("cpu")
    import deepspeed

    if not cuda:
        _skip_shm_allreduce_build()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                               timeout=dt.timedelta(minutes=timeout_minutes))
    return World(device=device, **layout)


def _skip_shm_allreduce_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce on CPU machines.

    DeepSpeed's TorchBackend builds `deepspeed_shm_comm` (C++, -O2) whenever its compatibility
    table says it can: minutes on a small CPU machine, once per fresh machine. The op serves only
    `inference_all_reduce`; training collectives go through gloo either way. DeepSpeed keeps that
    table as a module-level dict precisely so that such edits persist.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
