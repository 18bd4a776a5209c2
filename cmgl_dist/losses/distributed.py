"""Gathering features from every rank with gradient, so each rank's loss sees the global batch.

Why the gradients come out right: rank k's loss L_k is the mean over its own rows. The backward
of a gather sums, over ranks, the gradients that reach this rank's slice, so rank j's parameters
receive d(sum_k L_k)/d(theta_j). DDP / DeepSpeed then average gradients over the N ranks, which
gives d((1/N) sum_k L_k)/d(theta): the gradient of the mean of the per-rank means. With equal
per-rank batches, that mean is the loss of one process on the concatenated batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cmgl_dist.host_reads import host_values
from cmgl_dist.phases import phase


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.rank, world_size = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        with phase("feature_all_gather"):  # its backward: the gathered gradients summed over ranks
            dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[ctx.rank]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [B, ...] from every rank along dim 0 -> [N * B, ...], differentiable.

    Every rank must pass the same shape. The backward all-reduces (sums) the incoming gradient
    and returns this rank's slice. Identity without an initialised process group.
    """
    if rank_and_world_size()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


_host_groups: dict = {}


def _host_group():
    """A gloo group for host ints: the default group where it is gloo, else one made once."""
    if dist.get_backend() == "gloo":
        return None
    if "gloo" not in _host_groups:  # first call: every rank is here together (it is a collective)
        _host_groups["gloo"] = dist.new_group(backend="gloo")
    return _host_groups["gloo"]


def gather_sizes(*sizes: int) -> list[tuple[int, ...]]:
    """The given host integers from every rank, as host integers: exchanged over gloo as CPU
    tensors, so reading them waits on no device."""
    mine = torch.tensor(sizes, dtype=torch.long)
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [tuple(sizes)]
    every = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(every, mine, group=_host_group())
    return [tuple(host_values(row)) for row in every]


def gather_words(words: torch.Tensor, word_mask: torch.Tensor, n_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's words [B, W, D] and mask [B, W], padded to n_words (>= every rank's W)."""
    pad = n_words - words.shape[1]
    words = F.pad(words, (0, 0, 0, pad))
    word_mask = F.pad(word_mask, (0, pad), value=False)
    # uint8 because not every backend (gloo) all-gathers bool tensors.
    return gather_with_grad(words), gather_with_grad(word_mask.to(torch.uint8)).bool()
