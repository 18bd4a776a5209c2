"""GLoRIA's word -> region attention and the region Gram matrix, written once (PyTorch).

For the scores s_wr = word_w . region_r of one (text, image) pair:
    a_wr = softmax over the text's real words of s_wr        (per region r)
    b_wr = softmax over regions of gamma1 * a_wr             (per word w)
`cmgl_dist.losses.local_reference`, `attention_maps.local_attention_maps` (and through it the
evaluation's figures and localisation) call this function; the Triton kernels recompute it
tile by tile (`_over_words` and `_block_state` in local_similarity_tiles.py) and are tested
against it. `region_gram` gives the reference and the kernels |c_w|^2 without the context.
"""
from __future__ import annotations

import torch


def word_region_attention(scores: torch.Tensor, word_mask: torch.Tensor, gamma1: float) -> torch.Tensor:
    """b [..., W, R] from scores [..., W, R] and word_mask [..., W] (bool, broadcastable).

    Rows of padded words come out uniform (GLoRIA's softmax of a zero row); callers mask them."""
    over_words = scores.masked_fill(~word_mask[..., :, None], float("-inf")).softmax(dim=-2)
    return (gamma1 * over_words).softmax(dim=-1)


def region_gram(regions: torch.Tensor, images_per_chunk: int = 64) -> torch.Tensor:
    """G [I, R, R] = Y Y^T per image of regions [I, R, D], in float32 (float64 for float64
    inputs), built from chunks of images so that the upcast copy stays small. With it the cosine
    needs no context vector: |c_w|^2 = b_w^T G b_w for c_w = sum_r b_wr y_r."""
    acc = torch.promote_types(regions.dtype, torch.float32)
    with torch.autocast(device_type=regions.device.type, enabled=False):  # autocast would round G to 16 bits
        return torch.cat([torch.bmm(chunk.to(acc), chunk.to(acc).transpose(1, 2))
                          for chunk in regions.split(images_per_chunk)])
