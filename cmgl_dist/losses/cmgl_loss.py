"""CMGLLoss: GLoRIA's global + local contrastive losses, with every rank's samples as negatives."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from cmgl_dist.config import LossConfig
from cmgl_dist.phases import phase

from .contrastive import global_logits, symmetric_cross_entropy
from . import comm
from cmgl_dist.kernels.inputs import WORD_BUCKET, word_bucket

from .backend_choice import agree_backends
from .distributed import gather_features, gather_with_grad, gather_words, rank_and_world_size
from .local_ring import RingPlan, ring_local_loss
from .similarity import RUN, auto_candidates, common_dtype, local_similarity, resolve_backend


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
    word counts and batch sizes come from shapes, sent over the host group (`comm`): the ring asks
    only the ranks whose blocks it will hold, the gather every rank.

    With `local_backend=auto` and several candidates, every rank runs one backend per word bucket,
    from a table agreed before the first exchange for every bucket up to `max_words` (the run's
    `data.max_length`): `backend_choice.agree_backends`.
    """

    def __init__(self, loss_cfg: LossConfig, max_words: Optional[int] = None):
        super().__init__()
        self.cfg = loss_cfg
        self.max_words = max_words

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
        ring = world_size > 1 and cfg.local_exchange == "ring"
        plan = RingPlan.make(rank, world_size, batch, cfg.local_negatives) if ring else None
        words_of = {rank: words.shape[1]}
        if world_size > 1:
            with phase("feature_all_gather"):
                words_of = self._word_slots(batch, words.shape[1], rank, world_size, plan)
                all_img, all_txt = gather_features(img, sentence)
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
                texts = batch if ring else min(cfg.local_negatives or world_size * batch, world_size * batch)
                score = self._scorer(words, word_mask != 0, regions, texts)
                if word_mask.dtype != torch.bool:  # word roles (denied_words=absent)
                    score = absence_score(score, cfg.gamma2)
                if ring:
                    loss_local = ring_local_loss(words, word_mask, regions, plan.with_words(words_of), score, cfg.gamma3)
                else:
                    loss_local = self._local_loss_gathered(words, word_mask, regions, offset, words_of, score)
        else:  # a global-only run does not pay for the local similarity
            loss_local = loss_global.new_zeros(())

        loss = cfg.global_weight * loss_global + cfg.local_weight * loss_local
        return {"loss": loss, "loss_global": loss_global, "loss_local": loss_local}

    def _word_slots(self, batch: int, n_words: int, rank: int, world_size: int,
                    plan: Optional[RingPlan]) -> dict[int, int]:
        """{rank: word slots} of every rank whose words this rank will hold, after checking that
        their batches equal this rank's: the ring asks the ranks it visits (at least its right
        neighbour, whose batch it checks), the gather every rank."""
        if plan is not None or self.cfg.local_weight == 0:
            hops = max(1, plan.blocks - 1) if plan is not None else 1
            sizes = comm.neighbour_ints((batch, n_words), [(rank + k) % world_size for k in range(1, hops + 1)],
                                        [(rank - k) % world_size for k in range(1, hops + 1)])
        else:
            sizes = dict(enumerate(comm.host_ints(batch, n_words)))
        if any(b != batch for b, _ in sizes.values()):
            raise ValueError(f"every rank needs the same batch size to gather negatives: rank {rank} has {batch}, "
                             f"ranks {sorted(sizes)} have {[sizes[r][0] for r in sorted(sizes)]}; the loader must "
                             "yield equal batches on every rank")
        return {rank: n_words, **{r: w for r, (_, w) in sizes.items()}}

    def _scorer(self, words, word_mask, regions, texts: int) -> Callable[..., torch.Tensor]:
        """score(words, mask, regions, gamma2=loss.gamma2) -> S [texts, images] by the configured
        backend; for `auto` with several candidates, by the backend every rank agreed for the
        words' bucket."""
        cfg = self.cfg
        gammas = (cfg.gamma1, cfg.gamma2)
        words, regions = common_dtype(words, regions)
        name = resolve_backend(cfg.local_backend, words.device, words.dtype, cfg.auto_candidates)
        if name != "auto":
            return lambda w, m, r, gamma2=cfg.gamma2: local_similarity(w, m, r, cfg.gamma1, gamma2, backend=name)
        if self.max_words is None and rank_and_world_size()[1] > 1:
            raise ValueError("loss.local_backend=auto with several candidates over ranks needs CMGLLoss(max_words=) "
                             "(data.max_length), so that every rank agrees one backend per word bucket up front")
        # every rank's table must be the same: from the run's limit, never from this rank's batch
        top = word_bucket(self.max_words if self.max_words is not None else words.shape[1])
        with_grad = torch.is_grad_enabled() and (words.requires_grad or regions.requires_grad)
        candidates = {key: RUN[key] for key in auto_candidates(words.device, words.dtype, cfg.auto_candidates)}
        table = agree_backends(candidates, "reference", words, word_mask, regions, gammas, texts,
                               range(WORD_BUCKET, top + 1, WORD_BUCKET), with_grad)

        def score(w, m, r, gamma2=cfg.gamma2):
            slots = word_bucket(w.shape[1])
            if slots not in table:
                raise ValueError(f"texts of {w.shape[1]} word slots exceed the backend table's {top} "
                                 f"(CMGLLoss max_words={self.max_words}): raise data.max_length's share of it")
            return local_similarity(w, m, r, cfg.gamma1, gamma2, backend=table[slots])
        return score

    def _local_loss_gathered(self, words, word_mask, regions, offset, words_of, score):
        cfg = self.cfg
        batch, world_size = words.shape[0], len(words_of)
        if world_size > 1:
            with phase("feature_all_gather"):
                all_words, all_mask = gather_words(words, word_mask, max(words_of.values()))
        else:
            all_words, all_mask = words, word_mask
        total = all_words.shape[0]
        texts = None
        if cfg.local_negatives is not None:
            # A window of texts from this rank's own on (wrapping): rank r scores texts rB .. rB + k - 1,
            # so every text is scored by the images of the k/B ranks before it, positives included.
            texts = (offset + torch.arange(min(cfg.local_negatives, total), device=all_words.device)) % total
            all_words, all_mask = all_words[texts], all_mask[texts]
        image_rows = score(all_words, all_mask, regions).T
        if texts is not None:  # unscored pairs take no part in either softmax
            image_rows = image_rows.new_full((batch, total), float("-inf")).index_copy(1, texts, image_rows)
        with phase("feature_all_gather"):
            all_image_rows = gather_with_grad(image_rows) if world_size > 1 else image_rows
        text_rows = all_image_rows[:, offset:offset + batch].T
        return symmetric_cross_entropy(cfg.gamma3 * image_rows, cfg.gamma3 * text_rows, offset)


# Word roles, the mask the local loss carries with denied_words=absent: uint8 [B, W].
PAD, AFFIRMED, DENIED = 0, 1, 2


def local_word_mask(word_mask: torch.Tensor, word_denied, denied_words: str) -> torch.Tensor:
    """What the local loss knows of each word slot [B, W], by `loss.denied_words`:
    keep    the word mask (GLoRIA: every word is aligned with its image's regions);
    drop    the words outside a negation scope (a text whose words would all be denied keeps them
            all: a text without words has S = -inf; trigger words such as "No" are never denied);
    absent  word roles (PAD, AFFIRMED, DENIED) for `absence_score`.
    A denied word's attention would otherwise be trained on images without its finding ("No
    pleural effusion"): most IU-RR mentions of effusion and consolidation are denied.
    Tensor ops only (no host read in a micro step)."""
    if denied_words == "keep" or word_denied is None:
        return word_mask
    denied = word_mask & word_denied
    if denied_words == "absent":
        return word_mask.to(torch.uint8) + denied.to(torch.uint8)
    if denied_words != "drop":
        raise ValueError(f"loss.denied_words={denied_words!r} is not keep, drop or absent")
    kept = word_mask & ~denied
    return torch.where(kept.any(dim=1, keepdim=True), kept, word_mask)


def absence_score(score: Callable[..., torch.Tensor], gamma2: float) -> Callable[..., torch.Tensor]:
    """score(words, roles, regions) -> S [texts, images] where a denied word is evidence of its
    finding's absence: S = log( sum_affirmed exp(gamma2 cos_w) + sum_denied exp(-gamma2 cos_w) ),
    so "No [effusion]" matches an image best where the word's context is least like it, and the
    images with an effusion are its negatives. Each group attends over the regions by itself (its
    own softmax over words): one call of `score` per group, the denied one with -gamma2 (every
    backend takes a negative gamma2). A text without denied (or without affirmed) words keeps its
    other group's score alone, through `torch.where`, so the empty group's -inf never meets a
    gradient. Tensor ops only."""
    def scored(words, roles, regions):
        real, affirmed, denied = roles != PAD, roles == AFFIRMED, roles == DENIED
        has_affirmed, has_denied = affirmed.any(dim=1, keepdim=True), denied.any(dim=1, keepdim=True)
        s_affirmed = score(words, torch.where(has_affirmed, affirmed, real), regions, gamma2)
        s_denied = score(words, torch.where(has_denied, denied, real), regions, -gamma2)
        both = torch.logaddexp(s_affirmed, s_denied)
        return torch.where(has_denied, torch.where(has_affirmed, both, s_denied), s_affirmed)
    return scored
