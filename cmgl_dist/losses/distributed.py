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

from cmgl_dist.phases import phase

from . import comm


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return comm.all_gather(x)

    @staticmethod
    def backward(ctx, grad):
        with phase("feature_all_gather"):  # its backward: this rank's slice of the gradients summed over ranks
            return comm.reduce_scatter(grad)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [B, ...] from every rank along dim 0 -> [N * B, ...], differentiable.

    Every rank must pass the same shape. The backward reduce-scatters the incoming gradient
    (each rank receives the sum over ranks of its own slice: half the bytes of all-reducing the
    whole gathered gradient). Identity without an initialised process group.
    """
    if rank_and_world_size()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_features(*features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`gather_with_grad` of several [B, D_i] tensors as one collective (one latency, not one each):
    concatenated along dim 1, gathered, split again."""
    if len(features) == 1 or rank_and_world_size()[1] == 1:
        return tuple(gather_with_grad(f) for f in features)
    joined = gather_with_grad(torch.cat(features, dim=1))
    return tuple(part.to(f.dtype) for part, f in zip(joined.split([f.shape[1] for f in features], dim=1), features))


def gather_words(words: torch.Tensor, word_mask: torch.Tensor, n_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's words [B, W, D] and mask [B, W] (bool, or uint8 word roles), padded to n_words
    (>= every rank's W) with empty slots."""
    pad = n_words - words.shape[1]
    words = F.pad(words, (0, 0, 0, pad))
    word_mask = F.pad(word_mask, (0, pad), value=0)
    # uint8 because not every backend (gloo) all-gathers bool tensors; the mask needs no gradient.
    return gather_with_grad(words), comm.all_gather(word_mask.to(torch.uint8)).to(word_mask.dtype)
