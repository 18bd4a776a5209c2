"""Image-text similarity for evaluation (GLoRIA's global + local score) and word->region attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cmgl_dist.losses import local_similarity


@torch.inference_mode()
def image_text_similarity(image_global: torch.Tensor, regions: torch.Tensor, sentence: torch.Tensor,
                          words: torch.Tensor, word_mask: torch.Tensor, *, gamma1: float,
                          gamma2: float, word_pooling: str = "logsumexp") -> torch.Tensor:
    """[N_images, N_texts]: (global cosine + local similarity) / 2, as GLoRIA's `get_similarities`.

    The local similarity pools the words with the training log-sum-exp, or with GLoRIA's
    zero-shot max (`word_pooling="max"`, `eval.word_pooling`)."""
    device = words.device
    global_sim = F.normalize(image_global.to(device).float(), dim=-1) @ F.normalize(sentence.float(), dim=-1).T
    # local_similarity works in memory-bounded blocks of (texts x images) itself
    local = local_similarity(words.float(), word_mask.bool(), regions.to(device).float(),
                             gamma1=gamma1, gamma2=gamma2, word_pooling=word_pooling)  # [T, I]
    return (global_sim + local.T) / 2


def word_region_attention(words: torch.Tensor, regions: torch.Tensor, gamma1: float) -> torch.Tensor:
    """GLoRIA's attention of each word over the regions of one image.

    words [W, D] (the real words of one text), regions [R, D] -> [W, R], rows summing to 1:
    softmax over regions of gamma1 * (softmax over words of words . regions), the `a`/`b` of
    `cmgl_dist.losses.local_reference`. Computed directly: a few (image, text) pairs for figures
    and localisation.
    """
    scores = words.float() @ regions.float().T            # [W, R]
    per_region = torch.softmax(scores, dim=0)             # which word each region attends to
    return torch.softmax(gamma1 * per_region, dim=1)      # where each word looks
