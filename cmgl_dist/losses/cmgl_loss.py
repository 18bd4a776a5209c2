"""CMGLLoss: GLoRIA's global + local contrastive losses, with every rank's samples as negatives."""
from __future__ import annotations

import torch
from torch import nn

from cmgl_dist.config import LossConfig
from cmgl_dist.phases import phase

from .contrastive import global_logits, symmetric_cross_entropy
from .distributed import gather_sizes, gather_with_grad, gather_words, rank_and_world_size
from .similarity import local_similarity


class CMGLLoss(nn.Module):
    """`loss_cfg.global_weight * global + loss_cfg.local_weight * local` on a model's outputs.

    `out` holds img_global [B, D], regions [B, R, D], sentence [B, D], words [B, W, D] and
    word_mask [B, W] (bool). With `gather_negatives` and N ranks, each rank scores its B images
    and B texts against all N * B of the other modality; its loss is the mean over its own rows
    (see `distributed` for why averaging gradients over ranks then gives the global-batch gradient).

    The local S [texts, images] of the global batch is computed once, spread over ranks: each
    rank computes the columns of its own images against every rank's texts (words are smaller to
    gather than regions: W < R), then the [B, N * B] column blocks are gathered with gradient to
    give each rank the rows of its own texts.
    """

    def __init__(self, loss_cfg: LossConfig):
        super().__init__()
        self.cfg = loss_cfg

    def forward(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        img, regions, sentence = out["img_global"], out["regions"], out["sentence"]
        words, word_mask = out["words"], out["word_mask"]
        batch = img.shape[0]
        if not (regions.shape[0] == sentence.shape[0] == words.shape[0] == word_mask.shape[0] == batch):
            raise ValueError(f"batch sizes differ: img_global {batch}, regions {regions.shape[0]}, "
                             f"sentence {sentence.shape[0]}, words {words.shape[0]}, word_mask {word_mask.shape[0]}")
        rank, world_size = rank_and_world_size() if cfg.gather_negatives else (0, 1)
        if world_size > 1:
            with phase("feature_all_gather"):
                sizes = gather_sizes(batch, words.shape[1])  # host ints: no device read
                if any(size != batch for size, _ in sizes):
                    raise ValueError(f"every rank needs the same batch size to gather negatives, got "
                                     f"{[size for size, _ in sizes]}; the loader must yield equal batches on every rank")
                all_img, all_txt = gather_with_grad(img), gather_with_grad(sentence)
                all_words, all_mask = gather_words(words, word_mask, max(n_words for _, n_words in sizes))
        else:
            all_img, all_txt, all_words, all_mask = img, sentence, words, word_mask
        offset = rank * batch

        with phase("global_loss"):
            loss_global = symmetric_cross_entropy(
                global_logits(img, all_txt, cfg.global_temperature),
                global_logits(sentence, all_img, cfg.global_temperature),
                offset)

        if cfg.local_weight > 0:
            with phase("local_loss"):
                loss_local = self._local_loss(all_words, all_mask, regions, offset, batch, world_size)
        else:  # a global-only run does not pay for the local similarity
            loss_local = loss_global.new_zeros(())

        loss = cfg.global_weight * loss_global + cfg.local_weight * loss_local
        return {"loss": loss, "loss_global": loss_global, "loss_local": loss_local}

    def _local_loss(self, all_words, all_mask, regions, offset, batch, world_size):
        cfg = self.cfg
        total = all_words.shape[0]
        texts = None
        if cfg.local_negatives is not None:
            # A window of texts from this rank's own on (wrapping): rank r scores texts rB .. rB + k - 1,
            # so every text is scored by the images of the k/B ranks before it, positives included.
            texts = (offset + torch.arange(min(cfg.local_negatives, total), device=all_words.device)) % total
            all_words, all_mask = all_words[texts], all_mask[texts]
        image_rows = local_similarity(
            all_words, all_mask, regions, cfg.gamma1, cfg.gamma2, backend=cfg.local_backend).T
        if texts is not None:  # unscored pairs take no part in either softmax
            image_rows = image_rows.new_full((batch, total), float("-inf")).index_copy(1, texts, image_rows)
        with phase("feature_all_gather"):
            all_image_rows = gather_with_grad(image_rows) if world_size > 1 else image_rows
        text_rows = all_image_rows[:, offset:offset + batch].T
        return symmetric_cross_entropy(cfg.gamma3 * image_rows, cfg.gamma3 * text_rows, offset)
