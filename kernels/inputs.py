"""What every local-similarity implementation shares: its input checks and the cosine epsilon.

Below both the kernels and cmgl_dist.losses (which dispatches to them), so imports run one way.
"""
from __future__ import annotations

import torch

from cmgl_dist.kernel_limits import KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2  # noqa: F401 - one copy, torch-free
from cmgl_dist.host_reads import check_texts_have_words, words_were_checked

# GLoRIA's cosine_similarity clamps the product of the norms (not each norm) at this eps.
COSINE_EPS = 1e-8


def check_local_inputs(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor) -> None:
    """Shapes, dtypes and devices every local-similarity backend expects; raises ValueError."""
    if words.dim() != 3 or regions.dim() != 3 or word_mask.dim() != 2:
        raise ValueError(
            f"expected words [T, W, D], word_mask [T, W], regions [I, R, D]; got words "
            f"{tuple(words.shape)}, word_mask {tuple(word_mask.shape)}, regions {tuple(regions.shape)}")
    if word_mask.shape != words.shape[:2]:
        raise ValueError(f"word_mask {tuple(word_mask.shape)} does not match words {tuple(words.shape)}[:2]")
    if words.shape[2] != regions.shape[2]:
        raise ValueError(f"feature sizes differ: words D={words.shape[2]}, regions D={regions.shape[2]}")
    if word_mask.dtype != torch.bool:
        raise ValueError(f"word_mask must be bool, got {word_mask.dtype}")
    if not (words.device == word_mask.device == regions.device):
        raise ValueError(
            f"tensors on different devices: words {words.device}, word_mask {word_mask.device}, "
            f"regions {regions.device}")
    if not words.is_floating_point() or not regions.is_floating_point():
        raise ValueError(f"words and regions must be floating point, got {words.dtype}, {regions.dtype}")
    if not words_were_checked():  # a training step checks the collated batch on the host instead
        check_texts_have_words(word_mask)


# Word slots vary with every batch; rounded up to this multiple they form the shape bucket that
# compiled graphs, autotune keys and the `auto` backend choice are keyed by.
WORD_BUCKET = 16


def word_bucket(n_words: int) -> int:
    """n_words rounded up to a multiple of WORD_BUCKET."""
    return -(-n_words // WORD_BUCKET) * WORD_BUCKET
