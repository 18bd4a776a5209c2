"""CMGLLoss: GLoRIA's global + local contrastive losses, with every rank's samples as negatives."""
from __future__ import annotations

import torch
from torch import nn

from cmgl_dist.config import LossConfig
from cmgl_dist.phases import phase

from .contrastive import global_logits, symmetric_cross_entropy
from . import comm
from .distributed import gather_with_grad, gather_words, rank_and_world_size
from .local_ring import RingPlan, ring_local_loss
from .similarity import local_similarity


class CMGLLoss(nn.Module):
    """`loss_cfg.global_weight * global + loss_cfg.local_weight * local` on a model's outputs.

    `out` holds img_global [B, D], regions [B, R, D], sentence [B, D], words [B, W, D] and
    word_mask [B, W] (bool). With `gather_negatives` and N ranks, each rank scores its B images
    and B texts against all N * B of the other modality; its loss is the mean over its own rows
    (see `distributed` for why averaging gradients over ranks then gives the global-batch gradient).

    The local S [texts, images] of the global batch is computed once, spread over ranks: each
    rank computes the columns of its own images against every rank's texts (words are smaller to
    move than regions: W < R). `loss.local_exchange` says how the words reach them:
      ring    word blocks pass from rank to rank while the previous block is scored; the text
              rows' sums return to their owners (`local_ring`); memory does not grow with N
      gather  every rank's words are all-gathered, then the [B, N * B] column blocks are
              gathered with gradient to give each rank the rows of its own texts (the reference)
    Both give the same loss and gradients. Nothing in forward or backward reads a device value:
    word counts and batch sizes come from shapes, agreed over the host group (`comm.host_ints`).
    """

    def __init__(self, loss_cfg: LossConfig):
        super().__init__()
        self.cfg = loss_cfg

    def forward(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        img, regions, sentence = out["img_global"], out["regions"], out["sentence"]
        words = out["words"]
        word_mask = local_word_mask(out["word_mask"], out.get("word_denied"), cfg.denied_words)
        batch = img.shape[0]
        if not (regions.shape[0] == sentence.shape[0] == words.shape[0] == word_mask.shape[0] == batch):
            raise ValueError(f"batch sizes differ: img_global {batch}, regions {regions.shape[0]}, "
                             f"sentence {sentence.shape[0]}, words {words.shape[0]}, word_mask {word_mask.shape[0]}")
        if cfg.local_negatives is not None and cfg.local_negatives < batch:
            raise ValueError(f"loss.local_negatives={cfg.local_negatives} is below the batch of {batch}: each image "
                             "must at least be scored against its own rank's texts (set it >= the micro batch)")
        rank, world_size = rank_and_world_size() if cfg.gather_negatives else (0, 1)
        words_per_rank = (words.shape[1],)
        if world_size > 1:
            with phase("feature_all_gather"):
                sizes = comm.host_ints(batch, words.shape[1])
                if any(b != batch for b, _ in sizes):
                    raise ValueError(f"every rank needs the same batch size to gather negatives, got "
                                     f"{[b for b, _ in sizes]}; the loader must yield equal batches on every rank")
                words_per_rank = tuple(w for _, w in sizes)
                all_img, all_txt = gather_with_grad(img), gather_with_grad(sentence)
        else:
            all_img, all_txt = img, sentence
        offset = rank * batch

        with phase("global_loss"):
            loss_global = symmetric_cross_entropy(
                global_logits(img, all_txt, cfg.global_temperature),
                global_logits(sentence, all_img, cfg.global_temperature),
                offset)

        if cfg.local_weight > 0:
            with phase("local_loss"):
                if world_size > 1 and cfg.local_exchange == "ring":
                    plan = RingPlan.make(rank, world_size, batch, words_per_rank, cfg.local_negatives)
                    loss_local = ring_local_loss(words, word_mask, regions, plan, self._score, cfg.gamma3)
                else:
                    loss_local = self._local_loss_gathered(words, word_mask, regions, offset, words_per_rank)
        else:  # a global-only run does not pay for the local similarity
            loss_local = loss_global.new_zeros(())

        loss = cfg.global_weight * loss_global + cfg.local_weight * loss_local
        return {"loss": loss, "loss_global": loss_global, "loss_local": loss_local}

    def _score(self, words, word_mask, regions):
        """S [texts, images] by the configured backend."""
        cfg = self.cfg
        return local_similarity(words, word_mask, regions, cfg.gamma1, cfg.gamma2, backend=cfg.local_backend)

    def _local_loss_gathered(self, words, word_mask, regions, offset, words_per_rank):
        cfg = self.cfg
        batch, world_size = words.shape[0], len(words_per_rank)
        if world_size > 1:
            with phase("feature_all_gather"):
                all_words, all_mask = gather_words(words, word_mask, max(words_per_rank))
        else:
            all_words, all_mask = words, word_mask
        total = all_words.shape[0]
        texts = None
        if cfg.local_negatives is not None:
            # A window of texts from this rank's own on (wrapping): rank r scores texts rB .. rB + k - 1,
            # so every text is scored by the images of the k/B ranks before it, positives included.
            texts = (offset + torch.arange(min(cfg.local_negatives, total), device=all_words.device)) % total
            all_words, all_mask = all_words[texts], all_mask[texts]
        image_rows = self._score(all_words, all_mask, regions).T
        if texts is not None:  # unscored pairs take no part in either softmax
            image_rows = image_rows.new_full((batch, total), float("-inf")).index_copy(1, texts, image_rows)
        with phase("feature_all_gather"):
            all_image_rows = gather_with_grad(image_rows) if world_size > 1 else image_rows
        text_rows = all_image_rows[:, offset:offset + batch].T
        return symmetric_cross_entropy(cfg.gamma3 * image_rows, cfg.gamma3 * text_rows, offset)


def local_word_mask(word_mask: torch.Tensor, word_denied, denied_words: str) -> torch.Tensor:
    """The words the local loss aligns with regions [B, W]: all of them (`keep`, GLoRIA), or
    (`drop`) those outside a negation scope. A denied word's attention would otherwise be trained
    on images without its finding ("No pleural effusion"): most IU-RR mentions of effusion and
    consolidation are denied. A text whose words would all be denied keeps them all: a text without
    words has S = -inf (a safeguard: trigger words such as "No" are never denied themselves).
    Tensor ops only (no host read in a micro step)."""
    if denied_words == "keep" or word_denied is None:
        return word_mask
    if denied_words != "drop":
        raise ValueError(f"loss.denied_words={denied_words!r} is not keep or drop")
    kept = word_mask & ~word_denied
    return torch.where(kept.any(dim=1, keepdim=True), kept, word_mask)
