"""Contrastive (InfoNCE) losses over similarity rows, as GLoRIA.

As in GLoRIA, a loss is the SUM of its two directions (image->text and text->image), not their
mean as in open_clip, so GLoRIA's loss weights and learning rates carry over.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_cross_entropy(image_rows: torch.Tensor, text_rows: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """CE over texts for each image row + CE over images for each text row.

    image_rows [B, N]: logits of B images against N texts; text_rows [B, N]: B texts against N
    images. Row k's positive is column k + offset (offset = rank * B when the columns are the
    whole global batch).
    """
    if image_rows.shape != text_rows.shape or image_rows.dim() != 2:
        raise ValueError(f"expected two [B, N] logit matrices, got {tuple(image_rows.shape)} "
                         f"and {tuple(text_rows.shape)}")
    if offset + image_rows.shape[0] > image_rows.shape[1]:
        raise ValueError(f"rows {offset}..{offset + image_rows.shape[0]} have no positive among "
                         f"{image_rows.shape[1]} columns")
    labels = torch.arange(image_rows.shape[0], device=image_rows.device) + offset
    return F.cross_entropy(image_rows, labels) + F.cross_entropy(text_rows, labels)


def global_logits(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of every query [B, D] with every key [N, D], divided by temperature; in
    float32 whatever the inputs' dtype (the [B, D] vectors are small: upcast, not autocast)."""
    acc = torch.promote_types(queries.dtype, torch.float32)
    return F.normalize(queries.to(acc), dim=-1) @ F.normalize(keys.to(acc), dim=-1).T / temperature


def global_contrastive_loss(img: torch.Tensor, txt: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of paired image and sentence vectors [B, D] (GLoRIA: cosine x 10)."""
    logits = global_logits(img, txt, temperature)
    return symmetric_cross_entropy(logits, logits.T)


def local_contrastive_loss(similarity: torch.Tensor, gamma3: float = 10.0) -> torch.Tensor:
    """Symmetric InfoNCE of gamma3 * S for a square S [texts, images] of paired samples."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"expected a square S [B, B], got {tuple(similarity.shape)}")
    return symmetric_cross_entropy(gamma3 * similarity.T, gamma3 * similarity)
