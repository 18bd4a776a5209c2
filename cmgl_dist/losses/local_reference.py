"""PyTorch reference of GLoRIA's local (word-region) similarity, chunked so memory stays bounded.

For text t and image i (words w, regions r), as GLoRIA's public `local_loss`/`attention_fn`:

    a[w, r]   = softmax over the text's real words of  word_w . region_r
    b[w, r]   = softmax over regions of  gamma1 * a[w, r]
    ctx_w     = sum_r b[w, r] region_r
    S[t, i]   = log sum_{real w} exp(gamma2 * cos(word_w, ctx_w))

Padded words (word_mask False) take no part in the softmax over words nor in the sum.
`word_pooling="max"` replaces the log-sum-exp by gamma2 * max over real words of the cosine:
GLoRIA's zero-shot score (`get_local_similarities`: log of the max of exp(gamma2 * cos)),
offered for evaluation; the loss always uses the log-sum-exp.
The cosine is GLoRIA's: `(x . y) / max(|x| |y|, 1e-8)` (the eps clamps the product of the norms,
not each norm as `torch.nn.functional.cosine_similarity` does).

Memory: the pairs (texts x images) are processed in blocks whose [t, i, W, R] tensors fit a
fixed element budget; no [t, i, W, D] context tensor exists at all (see `block_similarity`).
Chunking alone does not bound memory under autograd (every block's intermediates would be kept
for backward), so a custom autograd function saves only the inputs and recomputes each block in
backward.

Autocast is off: the two products take the inputs' dtype, everything else runs in float32 (float64
for float64 inputs), and S comes back in that accumulation dtype: float32 for 16-bit inputs.
"""
from __future__ import annotations

from functools import partial

import torch
from torch.autograd.function import once_differentiable

from cmgl_dist.kernels.attention import region_gram, word_region_attention
from cmgl_dist.kernels.inputs import COSINE_EPS, check_local_inputs
# Elements of one block's [t, i, W, 3R] working set; backward keeps ~3x this alive at once
# (about 0.8 GB in float32 at the default).
DEFAULT_BLOCK_ELEMENTS = 1 << 26
WORD_POOLINGS = ("logsumexp", "max")


def block_similarity(words, word_mask, regions, gamma1: float, gamma2: float,
                     word_pooling: str = "logsumexp") -> torch.Tensor:
    """S [t, i] (float32, or float64 for float64 inputs) for every pair of a block of texts
    [t, W, D] and images [i, R, D].

    The context vectors ctx_w = sum_r b[w, r] region_r are never formed (a [t, i, W, D] tensor):
    the cosine needs only word_w . ctx_w = sum_r b[w, r] s[w, r] (the scores again) and
    |ctx_w|^2 = b_w^T G b_w with each image's region Gram matrix G = Y Y^T [R, R]. Both come from
    [t, i, W, R] tensors, so the work per pair is W R (D + R) instead of 2 W R D, and autograd's
    backward is large matrix products only (the per-word dot products x_w . ctx_w were batched
    products of one row by one column, and made the backward 10x the forward on a CPU).
    The two products (scores, b G) take the inputs' dtype (bf16 operands on tensor cores for
    16-bit inputs); G, softmaxes, norms and the log-sum-exp run in float32."""
    acc = torch.promote_types(words.dtype, torch.float32)
    with torch.autocast(device_type=words.device.type, enabled=False):
        scores = torch.einsum("twd,ird->tiwr", words, regions).to(acc)
        attention = word_region_attention(scores, word_mask[:, None, :], gamma1)
        gram = region_gram(regions)
        dot = (attention * scores).sum(dim=-1)
        attention_gram = torch.einsum("tiwr,irq->tiwq", attention.to(regions.dtype), gram.to(regions.dtype))
        context_sq = (attention_gram.to(acc) * attention).sum(dim=-1).clamp(min=0)
        norms = words.to(acc).norm(dim=-1)[:, None, :] * context_sq.sqrt()
        # Clamped to [-1, 1]: |ctx|^2 from 16-bit products can round (near) to 0 while the dot does
        # not, which would make a "cosine" of any size (the kernel clamps the same way).
        cosine = (dot / norms.clamp(min=COSINE_EPS)).clamp(-1.0, 1.0)
        scores = (gamma2 * cosine).masked_fill(~word_mask[:, None, :], float("-inf"))
        return scores.amax(dim=2) if word_pooling == "max" else scores.logsumexp(dim=2)


def _block_side(n: int, at_most: int) -> int:
    """A block side for n items within max(1, at_most): the largest divisor of n when it is at
    least half the bound (blocks of one shape), else the bound (a last, smaller block; at most
    twice the blocks a prime n would need otherwise)."""
    bound = min(n, max(1, at_most))
    divisor = next(d for d in range(bound, 0, -1) if n % d == 0)
    return divisor if 2 * divisor >= bound else bound


def _blocks(words: torch.Tensor, regions: torch.Tensor, block_elements: int):
    """(text slice, image slice) pairs covering [T, I], each within the element budget
    (a pair's working set is [W, R] scores, attention and attention x Gram)."""
    n_texts, n_words, _ = words.shape
    n_images, n_regions, _ = regions.shape
    pairs = max(1, block_elements // (n_words * 3 * n_regions))
    # texts first: an image's Gram matrix is then built once per text block, and few text blocks.
    # Block sides divide T and I where they can, so blocks have one shape (one compiled graph,
    # `local_compiled`).
    texts_per_block = _block_side(n_texts, pairs)
    images_per_block = _block_side(n_images, pairs // texts_per_block)
    for t0 in range(0, n_texts, texts_per_block):
        for i0 in range(0, n_images, images_per_block):
            yield slice(t0, t0 + texts_per_block), slice(i0, i0 + images_per_block)


class ChunkedLocalSimilarity(torch.autograd.Function):
    """S [T, I] from `block_fn` over blocks of pairs; backward recomputes each block, so only
    the inputs are saved. Gradients are summed over blocks in float32."""

    @staticmethod
    def forward(ctx, words, word_mask, regions, gamma1, gamma2, block_elements, block_fn):
        ctx.save_for_backward(words, word_mask, regions)
        ctx.hyper = (gamma1, gamma2, block_elements, block_fn)
        acc = torch.promote_types(words.dtype, torch.float32)
        similarity = words.new_empty(words.shape[0], regions.shape[0], dtype=acc)
        for texts, images in _blocks(words, regions, block_elements):
            similarity[texts, images] = block_fn(
                words[texts], word_mask[texts], regions[images], gamma1, gamma2)
        return similarity

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_similarity):
        words, word_mask, regions = ctx.saved_tensors
        gamma1, gamma2, block_elements, block_fn = ctx.hyper
        need_words, _, need_regions = ctx.needs_input_grad[:3]
        acc = torch.promote_types(words.dtype, torch.float32)
        grad_words = torch.zeros_like(words, dtype=acc) if need_words else None
        grad_regions = torch.zeros_like(regions, dtype=acc) if need_regions else None
        for texts, images in _blocks(words, regions, block_elements):
            with torch.enable_grad():
                block_words = words[texts].detach().requires_grad_(need_words)
                block_regions = regions[images].detach().requires_grad_(need_regions)
                block = block_fn(block_words, word_mask[texts], block_regions, gamma1, gamma2)
                wanted = [x for x in (block_words, block_regions) if x.requires_grad]
                grads = list(torch.autograd.grad(block, wanted, grad_similarity[texts, images]))
            if need_words:
                grad_words[texts] += grads.pop(0)
            if need_regions:
                grad_regions[images] += grads.pop(0)
        return (None if grad_words is None else grad_words.to(words.dtype), None,
                None if grad_regions is None else grad_regions.to(regions.dtype), None, None, None, None)


def local_similarity_reference(
    words: torch.Tensor,
    word_mask: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    *,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    word_pooling: str = "logsumexp",
) -> torch.Tensor:
    """S [T, I] from words [T, W, D], word_mask [T, W] (bool), regions [I, R, D]; see module doc."""
    check_local_inputs(words, word_mask, regions)
    if block_elements < 1:
        raise ValueError(f"block_elements must be >= 1, got {block_elements}")
    if word_pooling not in WORD_POOLINGS:
        raise ValueError(f"word_pooling={word_pooling!r} is not one of {WORD_POOLINGS}")
    block_fn = block_similarity if word_pooling == "logsumexp" else partial(block_similarity, word_pooling=word_pooling)
    dtype = torch.promote_types(torch.promote_types(words.dtype, regions.dtype), torch.float32)
    return ChunkedLocalSimilarity.apply(words.to(dtype), word_mask, regions.to(dtype), float(gamma1),
                                        float(gamma2), block_elements, block_fn)
