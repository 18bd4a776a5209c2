"""Process-group set-up, in one place: NCCL on GPUs, gloo on CPU, the same code path otherwise.

Launchers (torchrun, the deepspeed launcher, srun + torchrun) export RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT; a plain `cmgl train` is a world of one. DeepSpeed 0.19 finds its CPU
accelerator by itself when CUDA is absent (with a warning); DS_ACCELERATOR=cpu states it up front,
and gloo is named explicitly because the CPU accelerator otherwise prefers oneCCL when installed.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


class JoinError(RuntimeError):
    """This rank could not join the process group (a peer unreachable or gone); one line says where."""


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


def advertised_address() -> str:
    """The address gloo tells its peers to connect to: the host name's, unless GLOO_SOCKET_IFNAME names an
    interface. A host name that resolves to an address peers cannot reach is the usual cause of a join
    that hangs, so it is logged before joining."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return f"interface {os.environ['GLOO_SOCKET_IFNAME']}"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as err:
        return f"unresolvable ({err})"


def init_distributed(timeout_s: float = 600) -> World:
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
    backend = "nccl" if cuda else "gloo"
    store = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    # Every rank says where it waits, before it waits: the other ranks log warnings only (logs.py), and
    # this line is what tells a hung join's address and port.
    log.log(logging.INFO if layout["rank"] == 0 else logging.WARNING,
            "rank %d of %d on %s joins the process group: store %s, %s, this rank advertises %s, timeout %gs",
            layout["rank"], layout["world_size"], socket.gethostname(), store, backend, advertised_address(), timeout_s)
    try:
        deepspeed.init_distributed(dist_backend=backend, timeout=dt.timedelta(seconds=timeout_s))
    except (RuntimeError, OSError, TimeoutError) as err:  # DistError and gloo's errors are RuntimeErrors
        reason = " ".join(str(err).split())[:300]
        raise JoinError(f"rank {layout['rank']} on {socket.gethostname()} ({advertised_address()}) could not join "
                        f"the process group of {layout['world_size']} at store {store} within {timeout_s:g}s: "
                        f"{reason}") from None
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
