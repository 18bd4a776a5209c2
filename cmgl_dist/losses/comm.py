"""Every collective the losses run, through one layer that counts the bytes each rank sends.

Counted per kind, as this rank's payload under the ring algorithms NCCL runs (what
`bench.scaling_model.exchange_bytes` predicts, byte for byte):
  all_gather      (N - 1) x this rank's part               (features forward)
  reduce_scatter  (N - 1) x this rank's part of the result (their backward)
  p2p             the bytes of every tensor sent           (the ring's blocks, partial sums)
  host            the host-side ints sent over the CPU group (not on the accelerators' links)
`take_counts()` returns the counts since the last call and clears them (`cmgl bench step` reads
them once per step). The counts are host-side sums of tensor sizes: no device is read.

Word counts differ per rank and per batch, and a receiver must know a block's shape before it
arrives. Reading them from a device tensor would stall the host on the device every step, so the
shapes (host ints already) go over a CPU (gloo) group, created once per process group, and no
batch is padded to a worst case. The ring asks only the ranks whose blocks it will hold
(`neighbour_ints`: one round of point-to-point messages, whatever the world size); the gathered
form needs every rank's (`host_ints`: an all-gather, (N - 1) hops of the host network per step).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.distributed as dist

from cmgl_dist.host_reads import host_values

KINDS = ("all_gather", "reduce_scatter", "p2p", "host")
HOST_TAG = 7  # host ints' point-to-point messages; the ring's own tags are below it
# torch >= 2.14 names the tensor forms *_single (the *_tensor names warn as deprecated)
_ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
_counts: Counter = Counter()
_host_groups: dict = {}


def take_counts() -> dict[str, int]:
    """Bytes this rank sent per kind since the last call; clears them."""
    counts = {kind: _counts[kind] for kind in KINDS}
    _counts.clear()
    return counts


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """[N * B, ...] from every rank's x [B, ...] (same shape on every rank)."""
    world = dist.get_world_size()
    x = x.contiguous()
    out = x.new_empty((world * x.shape[0], *x.shape[1:]))
    _counts["all_gather"] += (world - 1) * _nbytes(x)
    _ALL_GATHER(out, x)
    return out


def reduce_scatter(x: torch.Tensor) -> torch.Tensor:
    """This rank's 1/N slice (dim 0) of the sum over ranks of x [N * B, ...]."""
    world = dist.get_world_size()
    x = x.contiguous()
    out = x.new_empty((x.shape[0] // world, *x.shape[1:]))
    _counts["reduce_scatter"] += (world - 1) * _nbytes(out)
    _REDUCE_SCATTER(out, x)
    return out


def exchange(sends: list[tuple[torch.Tensor, int, int]], recvs: list[tuple[torch.Tensor, int, int]]):
    """Start point-to-point sends and receives ((tensor, peer rank, tag)) as one batch; returns
    what `wait` takes. Each tensor kind has its own tag, so order within a batch never matters.
    The ops (and the contiguous copies they send) live until `wait`: a buffer freed while in
    flight would be sent (or received into) after its memory was reused."""
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer, tag=tag) for t, peer, tag in sends]
    ops += [dist.P2POp(dist.irecv, t, peer, tag=tag) for t, peer, tag in recvs]
    _counts["p2p"] += sum(_nbytes(t) for t, _, _ in sends)
    return (dist.batch_isend_irecv(ops) if ops else []), ops


def wait(pending) -> None:
    works, _ops = pending
    for work in works:
        work.wait()


def _host_group():
    """The group host ints travel in: the default one if it is gloo, else a gloo group made once."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _host_groups:
        _host_groups[key] = dist.new_group(backend="gloo")
    return _host_groups[key]


def host_ints(*values: int) -> list[tuple[int, ...]]:
    """The given host ints from every rank, in rank order (over the CPU group: no device read)."""
    world = dist.get_world_size()
    mine = torch.tensor(values, dtype=torch.long)
    every = [torch.empty_like(mine) for _ in range(world)]
    _counts["host"] += (world - 1) * _nbytes(mine)
    dist.all_gather(every, mine, group=_host_group())
    return [tuple(host_values(t)) for t in every]  # CPU tensors: reading them waits on no device


def neighbour_ints(values: tuple[int, ...], sources: Sequence[int], destinations: Sequence[int]) -> dict[int, tuple]:
    """The host ints of each rank in `sources`, {rank: values}; this rank's `values` go to each rank
    in `destinations` (point to point over the CPU group, one round: no device read, no hop count
    that grows with the world)."""
    group = _host_group()
    mine = torch.tensor(values, dtype=torch.long)
    theirs = {source: torch.empty_like(mine) for source in sources}
    ops = [dist.P2POp(dist.isend, mine, peer, group=group, tag=HOST_TAG) for peer in destinations]
    ops += [dist.P2POp(dist.irecv, buffer, peer, group=group, tag=HOST_TAG) for peer, buffer in theirs.items()]
    _counts["host"] += len(destinations) * _nbytes(mine)
    for work in dist.batch_isend_irecv(ops) if ops else []:
        work.wait()
    return {source: tuple(host_values(buffer)) for source, buffer in theirs.items()}
