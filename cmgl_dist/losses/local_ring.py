"""The local contrastive loss over a ring of ranks: regions stay home, word blocks travel.

Rank r holds its B images' regions and B texts' words. At ring step k it scores its images
against the word block of rank r + k (S_k [texts, images], by any `local_similarity` backend)
while the block of rank r + k + 1 is already on its way from rank r + 1 (point-to-point,
`batch_isend_irecv`), as SigLIP's chunked loss (Zhai et al. 2023) and ring attention pass blocks.

  image side  each image's log-sum-exp over texts is kept online over the visiting blocks
  text side   each visiting text's log-sum-exp over this rank's images is added (logaddexp) to a
              [B] partial sum that travels with its block; after its last holder the sum goes
              home (one send of B numbers), where the texts' cross-entropy is taken
  backward    the mirror pass: the blocks travel the other way round, each with its owner's
              text log-sum-exps and loss gradient, and the gradient of its words accumulates on
              the way and arrives home with the block's last visit (its owner). Each step posts
              its exchange before it recomputes the block's S, so the transfer overlaps all of
              it; the travelling gradient is carried in float32 (at least), rounded to the
              words' dtype once, at home (`carry`): rounding it to bf16 at every hop would
              compound to ~3e-2 relative error over hundreds of hops.
  memory      without a cap, the forward keeps only the [B] sums and the backward recomputes
              each block's S (one more forward of the similarity per block), so memory does not
              grow with N. With a cap the visited blocks are at most ceil(K / B) whatever N, so
              the forward keeps their graphs (the backend saves its inputs: the blocks) and the
              backward neither recomputes S nor sends the words again, only their gradients.

With `local_negatives` = K, rank r's images score texts rB .. rB + K - 1 (wrapping), as the
gathered form does: ceil(K / B) blocks visit, the last one in part (its other texts are left out
of both softmaxes). The loss of rank r is the mean over its own rows, as `CMGLLoss`'s gathered
form: the same value and the same gradients, exactly (tests/test_local_ring.py).

Word counts differ per rank; a block's shape is known on the host (`RingPlan.words`, sent by the
ranks it visits, `comm.neighbour_ints`), so nothing is read from the device. Blocks are sent in
the dtype the words arrive in.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from cmgl_dist.host_reads import words_checked_on_host
from cmgl_dist.phases import phase

from . import comm

WORDS, MASK, SUMS, GRAD = range(4)  # the tag of each kind of message


@dataclass(frozen=True)
class RingPlan:
    """Host-side facts of one ring pass."""
    rank: int
    world: int
    batch: int
    blocks: int              # blocks visited (own included)
    last_texts: int          # texts of the last block inside the window
    keep: bool               # keep the visited blocks' graphs for backward (bounded by the cap)
    words: Optional[dict] = field(default=None, compare=False)  # {owner: word slots} of the blocks visited

    @classmethod
    def make(cls, rank: int, world: int, batch: int, local_negatives: int | None):
        texts = world * batch if local_negatives is None else min(local_negatives, world * batch)
        blocks = -(-texts // batch)
        return cls(rank, world, batch, blocks, texts - (blocks - 1) * batch, local_negatives is not None)

    def with_words(self, words: dict[int, int]) -> "RingPlan":
        missing = [self.owner(step) for step in range(self.blocks) if self.owner(step) not in words]
        if missing:
            raise ValueError(f"the ring's plan lacks the word slots of ranks {missing}")
        return replace(self, words=dict(words))

    def owner(self, step: int) -> int:
        """The rank whose block rank `rank` scores at forward step `step`."""
        return (self.rank + step) % self.world

    def peer(self, shift: int) -> int:
        return (self.rank + shift) % self.world


def _block_buffers(plan: RingPlan, owner: int, like: torch.Tensor, like_mask: torch.Tensor):
    shape = (plan.batch, plan.words[owner], like.shape[2])
    return like.new_empty(shape), like_mask.new_empty(shape[:2], dtype=torch.uint8)


def _window(logits: torch.Tensor, plan: RingPlan, step: int) -> torch.Tensor:
    """The logits of forward step `step` with the texts outside the window at -inf (a copy)."""
    if step == plan.blocks - 1 and plan.last_texts < plan.batch:
        logits = logits.clone()
        logits[plan.last_texts:] = float("-inf")
    return logits


class RingLocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, words, regions, word_mask, plan: RingPlan, score, gamma3: float):
        blk_words, blk_mask = words, word_mask
        image_lse = positives = sums = None
        kept = []
        for step in range(plan.blocks):
            sends, recvs, nxt = [], [], None
            if step < plan.blocks - 1:  # the next block, from the right neighbour
                nxt = _block_buffers(plan, plan.owner(step + 1), words, word_mask)
                sends += [(blk_words, plan.peer(-1), WORDS), (blk_mask.view(torch.uint8), plan.peer(-1), MASK)]
                recvs += [(nxt[0], plan.peer(1), WORDS), (nxt[1], plan.peer(1), MASK)]
            if step > 0:  # the previous block's text sums go on; this block's arrive
                sums_in = sums.new_empty(plan.batch)
                sends.append((sums, plan.peer(-1), SUMS))
                recvs.append((sums_in, plan.peer(1), SUMS))
            with phase("local_exchange"):
                works = comm.exchange(sends, recvs)
            if plan.keep:
                kept.append(_graph(score, blk_words, blk_mask, regions, gamma3))
                logits = _window(kept[-1][0].detach(), plan, step)
            else:
                logits = _window(gamma3 * score(blk_words, blk_mask, regions), plan, step)
            lse = logits.logsumexp(dim=0)
            image_lse = lse if step == 0 else torch.logaddexp(image_lse, lse)
            text_part = logits.logsumexp(dim=1)
            if step == 0:
                positives = logits.diagonal()
            with phase("local_exchange"):
                comm.wait(works)
            sums = text_part if step == 0 else torch.logaddexp(sums_in, text_part)
            if nxt is not None:
                blk_words, blk_mask = nxt[0], nxt[1].view(word_mask.dtype)
        text_lse = _send_home(sums, plan)
        ctx.save_for_backward(words, regions, word_mask, blk_words, blk_mask, image_lse, text_lse)
        ctx.plan, ctx.score, ctx.gamma3, ctx.kept = plan, score, gamma3, kept
        return (image_lse - positives).mean() + (text_lse - positives).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        words, regions, word_mask, blk_words, blk_mask, image_lse, text_lse = ctx.saved_tensors
        plan, score, gamma3, kept = ctx.plan, ctx.score, ctx.gamma3, ctx.kept
        ctx.kept = None
        grad_regions = torch.zeros_like(regions, dtype=image_lse.dtype)
        stats = _stats_of_last_block(torch.cat([text_lse, grad_loss.to(text_lse.dtype).reshape(1)]), plan)
        grad_words = None
        carried = carry_dtype(words.dtype)
        for back_step in range(plan.blocks):
            step = plan.blocks - 1 - back_step  # the forward step of the block held now
            sends, recvs, nxt = [], [], None
            if step > 0:  # the next block's owner's sums (and, unless kept, its words) from the left
                nxt = (stats.new_empty(stats.shape),)
                sends.append((stats, plan.peer(1), SUMS))
                recvs.append((nxt[0], plan.peer(-1), SUMS))
                if not plan.keep:
                    nxt += _block_buffers(plan, plan.owner(step - 1), words, word_mask)
                    sends += [(blk_words, plan.peer(1), WORDS), (blk_mask.view(torch.uint8), plan.peer(1), MASK)]
                    recvs += [(nxt[1], plan.peer(-1), WORDS), (nxt[2], plan.peer(-1), MASK)]
            grad_in = None
            if back_step > 0:  # the previous block's gradient goes on; this block's arrives
                grad_in = words.new_empty((plan.batch, plan.words[plan.owner(step)], words.shape[2]), dtype=carried)
                sends.append((grad_words, plan.peer(1), GRAD))
                recvs.append((grad_in, plan.peer(-1), GRAD))
            with phase("local_exchange"):
                works = comm.exchange(sends, recvs)  # posted before the recompute: the transfer overlaps it
            # The forward scored (and checked) these very blocks: no word check again.
            with words_checked_on_host():
                graph = kept[step] if plan.keep else _graph(score, blk_words, blk_mask, regions, gamma3)
                mine = _block_grads(graph, plan, step, grad_loss, image_lse, stats)
            grad_regions += mine[1]
            with phase("local_exchange"):
                comm.wait(works)
            grad_words = carry(grad_in, mine[0])
            if nxt is not None:
                stats = nxt[0]
                if not plan.keep:
                    blk_words, blk_mask = nxt[1], nxt[2].view(word_mask.dtype)
        return grad_words.to(words.dtype), grad_regions.to(regions.dtype), None, None, None, None


def carry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the words' gradient travels in: float32, or the words' own if wider."""
    return torch.promote_types(dtype, torch.float32)


def carry(arrived: Optional[torch.Tensor], mine: torch.Tensor) -> torch.Tensor:
    """The travelling gradient of a block's words after this rank adds its part, in `carry_dtype`."""
    mine = mine.to(carry_dtype(mine.dtype))
    return mine if arrived is None else arrived + mine


def _graph(score, words, mask, regions, gamma3):
    """(gamma3 * S with its autograd graph, the words and regions leaves it was computed from)."""
    with torch.enable_grad():
        words = words.detach().requires_grad_()
        regions = regions.detach().requires_grad_()
        return gamma3 * score(words, mask, regions), words, regions


def _block_grads(graph, plan, step, grad_loss, image_lse, stats):
    """d(this rank's image-side loss + the block owner's text-side loss) / d(words, regions)."""
    logits_graph, words, regions = graph
    batch = plan.batch
    with torch.no_grad():
        logits = _window(logits_graph.detach(), plan, step)
        text_lse, owner_grad = stats[:batch], stats[batch]
        d_logits = (grad_loss / batch) * (logits - image_lse[None, :]).exp()
        d_logits += (owner_grad / batch) * (logits - text_lse[:, None]).exp()
        if step == 0:  # the block is this rank's own: the positives of both sides
            d_logits.diagonal().sub_((grad_loss + owner_grad) / batch)
    return torch.autograd.grad(logits_graph, (words, regions), d_logits)


def _send_home(sums: torch.Tensor, plan: RingPlan) -> torch.Tensor:
    """The last holder's text sums go to their owner; this rank's own come back."""
    if plan.blocks == 1:
        return sums
    home = torch.empty_like(sums)
    with phase("local_exchange"):
        comm.wait(comm.exchange([(sums, plan.peer(plan.blocks - 1), SUMS)],
                                [(home, plan.peer(1 - plan.blocks), SUMS)]))
    return home


def _stats_of_last_block(own: torch.Tensor, plan: RingPlan) -> torch.Tensor:
    """The mirror of `_send_home`: the owner of the block this rank held last sends its text
    log-sum-exps and loss gradient [B + 1] here, where the backward starts with that block."""
    if plan.blocks == 1:
        return own
    theirs = torch.empty_like(own)
    with phase("local_exchange"):
        comm.wait(comm.exchange([(own, plan.peer(1 - plan.blocks), SUMS)],
                                [(theirs, plan.peer(plan.blocks - 1), SUMS)]))
    return theirs


def ring_local_loss(words, word_mask, regions, plan: RingPlan, score, gamma3: float) -> torch.Tensor:
    """This rank's local loss (CE over its image rows + CE over its text rows), exchanging
    word blocks around the ring; `score(words, mask, regions)` is S [texts, images]."""
    return RingLocalLoss.apply(words, regions, word_mask, plan, score, gamma3)
