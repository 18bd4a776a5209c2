"""Word-to-region attention maps b [P, W, R] for chosen (text, image) pairs, for visualisation.

PyTorch on purpose: a figure needs a handful of pairs, so the work (P x W x R x D) is
negligible and the [P, W, R] result is the output itself; the fused kernel never materialises b
(it is recomputed in registers), so exposing it there would only add a store path to the hot loop.
The formula is `attention.word_region_attention`, the one definition; the tests check that
these maps reproduce the kernel's S. Evaluation's figures and localisation call this function.
"""
from __future__ import annotations

import torch

from cmgl_dist.kernels.attention import word_region_attention
from cmgl_dist.kernels.inputs import check_local_inputs


def local_attention_maps(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                         pairs: torch.Tensor, gamma1: float = 4.0) -> torch.Tensor:
    """b [P, W, R] (float32, or float64 for float64 inputs) for `pairs [P, 2]` = (text, image)
    rows; b[p, w] is the softmax over regions of gamma1 * (softmax over real words of the
    scores), and rows of padded words are 0."""
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.dtype != torch.long:
        raise ValueError(f"pairs must be a long tensor [P, 2] of (text, image), got "
                         f"{pairs.dtype} {tuple(pairs.shape)}")
    check_local_inputs(words, word_mask, regions)
    texts, images = pairs[:, 0], pairs[:, 1]
    if pairs.numel() and (texts.min() < 0 or texts.max() >= words.shape[0]
                          or images.min() < 0 or images.max() >= regions.shape[0]):
        raise IndexError(f"pairs index texts < {words.shape[0]} and images < {regions.shape[0]}")
    dtype = torch.promote_types(words.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(device_type=words.device.type, enabled=False):
        mask = word_mask[texts]
        scores = torch.einsum("pwd,prd->pwr", words[texts].to(dtype), regions[images].to(dtype))
        return word_region_attention(scores, mask, gamma1) * mask[:, :, None]
