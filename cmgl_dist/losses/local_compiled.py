"""The `compiled` backend: torch.compile of the plain PyTorch form (`local_reference.block_similarity`).

It runs over the reference's memory-bounded blocks of (text, image) pairs with the reference's
recomputing backward, so memory stays bounded at any T x I (T = I = 512 included), but each
block is one compiled graph (fused softmaxes, bf16 operands on tensor cores for 16-bit inputs)
instead of eager kernels. Word slots are padded up to a multiple of `WORD_BUCKET`, so batches
whose W differs within a bucket reuse the compiled graphs (`dynamic=False`: no recompile), and
the blocks of a call have one shape where T and I allow (`local_reference._block_side`): one
graph per word bucket and direction (forward; backward's recompute with gradients), within
GRAPH_LIMIT.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from cmgl_dist.kernels.inputs import check_local_inputs, word_bucket

from .local_reference import ChunkedLocalSimilarity, block_similarity

# Twice the reference's budget (fewer, larger blocks keep a GPU busy); a compiled block keeps
# fewer intermediates alive than the eager one, so peak memory stays within ~2 GB at any T x I.
COMPILED_BLOCK_ELEMENTS = 1 << 27


# Inductor generates Triton code on CUDA. On CPU it would build C++ for minutes per shape (200 s
# on a 2-core machine for a toy shape), and `auto` never picks this backend there, so CPU runs
# trace and differentiate through the same graph (dynamo + AOTAutograd) without code generation.
COMPILER = {"cuda": "inductor"}
CPU_COMPILER = "aot_eager"


# Graphs one compiled function may hold: one per word bucket (W up to 512 tokens: 32 buckets). Past
# dynamo's default of 8 per code object it would run the block uncompiled, silently.
GRAPH_LIMIT = 64


def _block_forward(words, word_mask, regions, gamma1: float, gamma2: float):
    return block_similarity(words, word_mask, regions, gamma1, gamma2)


def _block_recompute(words, word_mask, regions, gamma1: float, gamma2: float):
    return block_similarity(words, word_mask, regions, gamma1, gamma2)


@functools.cache
def _compiled(device_type: str) -> tuple:
    """(forward, backward's recompute): two code objects, so that the grad mode, which differs
    between them, is no guard that recompiles either."""
    backend = COMPILER.get(device_type, CPU_COMPILER)
    return tuple(torch.compile(fn, dynamic=False, backend=backend) for fn in (_block_forward, _block_recompute))


def compiled_block_similarity(device_type: str):
    """block_similarity compiled for `device_type`: one graph per word bucket and direction."""
    forward, recompute = _compiled(device_type)

    def run(*args):
        with torch._dynamo.config.patch(recompile_limit=GRAPH_LIMIT):
            return (recompute if torch.is_grad_enabled() else forward)(*args)

    return run


def pad_words(words: torch.Tensor, word_mask: torch.Tensor, n_slots: int):
    """words [T, n_slots, D] and word_mask [T, n_slots]: extra slots zero and masked out."""
    pad = n_slots - words.shape[1]
    return F.pad(words, (0, 0, 0, pad)), F.pad(word_mask, (0, pad), value=False)


def local_similarity_compiled(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                              gamma1: float = 4.0, gamma2: float = 5.0, *,
                              block_elements: int = COMPILED_BLOCK_ELEMENTS) -> torch.Tensor:
    """S [T, I] float32 (float64 for float64 inputs), as `local_similarity_reference`."""
    check_local_inputs(words, word_mask, regions)
    if words.dtype != regions.dtype:
        raise TypeError(f"words and regions must share one dtype, got {words.dtype}, {regions.dtype}")
    words, word_mask = pad_words(words, word_mask, word_bucket(words.shape[1]))
    return ChunkedLocalSimilarity.apply(words, word_mask, regions, float(gamma1), float(gamma2),
                                        block_elements, compiled_block_similarity(words.device.type))
