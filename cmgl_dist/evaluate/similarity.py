"""Image-text similarity for evaluation (GLoRIA's global + local score) and one pair's attention map."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cmgl_dist.kernels import local_attention_maps
from cmgl_dist.losses import local_similarity


@torch.inference_mode()
def image_text_similarity(image_global: torch.Tensor, regions: torch.Tensor, sentence: torch.Tensor,
                          words: torch.Tensor, word_mask: torch.Tensor, *, gamma1: float,
                          gamma2: float, word_pooling: str = "logsumexp") -> torch.Tensor:
    """[N_images, N_texts]: (global cosine + local similarity) / 2, as GLoRIA's `get_similarities`.

    The local similarity pools the words with the training log-sum-exp, or with GLoRIA's
    zero-shot max (`word_pooling="max"`, `eval.zero_shot_word_pooling`)."""
    device = words.device
    global_sim = F.normalize(at_least_float32(image_global.to(device)), dim=-1) @ F.normalize(
        at_least_float32(sentence), dim=-1).T
    # local_similarity works in memory-bounded blocks of (texts x images) itself
    local = local_similarity(at_least_float32(words), word_mask.bool(), at_least_float32(regions.to(device)),
                             gamma1=gamma1, gamma2=gamma2, word_pooling=word_pooling)  # [T, I]
    return (global_sim + local.T) / 2


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half precision up to float32; float64 (the checks against GLoRIA's code) kept as it is."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def pair_attention_map(words: torch.Tensor, regions: torch.Tensor, gamma1: float) -> torch.Tensor:
    """GLoRIA's attention of each word over the regions of one image: words [W, D] (the real
    words of one text), regions [R, D] -> [W, R] float32, rows summing to 1. A one-pair call of
    `cmgl_dist.kernels.local_attention_maps`, whose formula is `kernels.attention.word_region_attention`."""
    word_mask = torch.ones(1, words.shape[0], dtype=torch.bool, device=words.device)
    pair = torch.zeros(1, 2, dtype=torch.long, device=words.device)
    return local_attention_maps(words[None].float(), word_mask, regions[None].float().to(words.device),
                                pair, gamma1)[0]
