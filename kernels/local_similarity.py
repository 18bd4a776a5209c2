"""GLoRIA's word-region similarity as fused Triton kernels (forward and backward).

For text t and image i (words x_w, w real; regions y_r):
    s_wr = x_w . y_r
    a_wr = softmax over real words w of s_wr           (per region r)
    b_wr = softmax over regions r of gamma1 * a_wr      (per word w)    [kernels/attention.py]
    c_w = sum_r b_wr y_r
    S[t, i] = log sum_{w real} exp(gamma2 * cos(x_w, c_w)),  cos = x.c / max(|x| |c|, eps)

One op, three kernels: the forward, the backward's word owner (dL/dwords) and region owner
(dL/dregions), each gradient row with one writer; launchers; one autograd Function. The design,
its figures and what is not done are explained once, in kernels/README.md ("Kernel design").
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from cmgl_dist.kernels.attention import region_gram
from cmgl_dist.kernels.inputs import (COSINE_EPS, KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2, check_local_inputs,
                                      word_bucket)
from cmgl_dist.kernels.local_similarity_tiles import (_attention_grad, _block_state, _cosine, _cosine_grad,
                                                       _mma, _mma_grad, _region_tile, _scores, _word_weights)

BLOCK_W = 16  # words per block: the N side of every product; the scratch is sized by it
# The region owner read-modify-writes its [R, D] gradient rows once per word block: 64-word blocks
# do that once per text of up to 64 words (a third of the traffic of 16 for GLoRIA's ~42 words,
# for a third more rows in its products; 255 registers, no spills on sm_90).
REGION_OWNER_BLOCK_W = 64
R_ALIGN = 128  # scratch rows per word block: R rounded up to this; every BLOCK_R divides it
# e, s, h = G b and P = dL/ds, each [R_STRIDE, BLOCK_W] fp32; a constexpr, so the kernels may read it
SCRATCH_ROWS = tl.constexpr(4)
FORWARD_PROGRAMS = 512  # forward programs to aim for (image x text group); bounds the scratch

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# CMGL_KERNEL_AUTOTUNE=1 tunes over AUTOTUNE_CONFIGS once per (W bucket, R, D, dtypes); the
# default is the pinned config of the GPU's architecture (no tuning in training).
_AUTOTUNE = os.environ.get("CMGL_KERNEL_AUTOTUNE", "0") == "1"
# By compute capability major; Ampere (8) reuses Hopper's (9) tiles. Why these tiles, and the
# compile figures for sm_90 and sm_80 (registers, spills, MMA kind): kernels/README.md, rows in
# benchmarks/results/kernel_compile_sm90.csv.
# AUTOTUNE_CONFIGS: only configs that compile without spills.
PINNED_CONFIGS = {
    9: dict(BLOCK_R=64, BLOCK_D=64, num_warps=8, num_stages=1),
    8: dict(BLOCK_R=64, BLOCK_D=64, num_warps=8, num_stages=1),
}
# The interpreter runs the GPU's pinned tiles, so tests there cover the tiling the GPU runs
# (the recipe-shape test: R 361 and D 768 in 6 x 12 tiles of 64). CMGL_KERNEL_INTERPRETER_TILES=small
# runs 16 x 16 tiles instead (more tile edges in small shapes; 16x the interpreted operations).
INTERPRETER_CONFIG = (dict(BLOCK_R=16, BLOCK_D=16, num_warps=4, num_stages=1)
                      if os.environ.get("CMGL_KERNEL_INTERPRETER_TILES") == "small" else dict(PINNED_CONFIGS[9]))
AUTOTUNE_CONFIGS = [dict(BLOCK_R=br, BLOCK_D=bd, num_warps=nw, num_stages=ns)
                    for br, bd, nw, ns in ((64, 64, 8, 1), (64, 32, 8, 1))]


def _as_config(params: dict) -> triton.Config:
    if R_ALIGN % params["BLOCK_R"]:  # the region tiles must end within the scratch rows
        raise ValueError(f"BLOCK_R={params['BLOCK_R']} must divide R_ALIGN={R_ALIGN}")
    meta = {k: v for k, v in params.items() if k.startswith("BLOCK_")}
    return triton.Config(meta, num_warps=params["num_warps"], num_stages=params["num_stages"])


def _arch_major() -> int:
    import torch.cuda

    return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9


def _configs() -> list[triton.Config]:
    if _INTERPRETED:  # the interpreter's timings mean nothing: one config
        return [_as_config(INTERPRETER_CONFIG)]
    if _AUTOTUNE:
        return [_as_config(c) for c in AUTOTUNE_CONFIGS]
    return [_as_config(PINNED_CONFIGS.get(_arch_major(), PINNED_CONFIGS[8]))]


@triton.jit
def _program_scratch(SCRATCH, slot, R_STRIDE, BLOCK_W: tl.constexpr):
    """The scratch of program `slot`: its SCRATCH_ROWS row sets, each [R_STRIDE, BLOCK_W] fp32."""
    return SCRATCH + slot * (SCRATCH_ROWS * R_STRIDE * BLOCK_W)


@triton.jit
def _forward_pair(X, MASK, NWORDS, Y, G, S, COLS, DELTA, scratch, t, i, I, W, R, D, R_STRIDE,
                  stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                  BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                  SAVE_DELTA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pair = tl.cast(t, tl.int64) * I + i
    n_words = tl.load(NWORDS + t)
    x_ptr = X + tl.cast(t, tl.int64) * stride_xt
    y_ptr = Y + tl.cast(i, tl.int64) * stride_yi
    g_ptr = G + tl.cast(i, tl.int64) * R * R

    # Pass 1: column log-sum-exp over real words, per region tile, online across word blocks.
    for r0 in range(0, R, BLOCK_R):
        offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
        col_max = tl.full([BLOCK_R], -1e30, dtype=tl.float32)
        col_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
        for w0 in range(0, n_words, BLOCK_W):
            offs_w = w0 + tl.arange(0, BLOCK_W)
            w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
            s, norm2 = _scores(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, D, stride_xw, stride_yr,
                               BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
            s = tl.where(w_ok[None, :], s, float("-inf"))
            new_max = tl.maximum(col_max, tl.max(s, axis=1))
            col_sum = col_sum * tl.exp(col_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
            col_max = new_max
        tl.store(COLS + pair * 2 * R + offs_r, col_max, mask=r_ok)
        tl.store(COLS + pair * 2 * R + R + offs_r, tl.log(col_sum), mask=r_ok)

    # Pass 2: each word's cosine; S = |gamma2| + log sum_w exp(gamma2 cos_w - |gamma2|). With
    # SAVE_DELTA (training) also delta_r for the word weights exp(gamma2 cos_w - |gamma2|).
    weights = tl.zeros([BLOCK_W], dtype=tl.float32)
    for w0 in range(0, n_words, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
        inv_z, xc, c2, norm2 = _block_state(x_ptr, y_ptr, g_ptr, COLS + pair * 2 * R, scratch, offs_w,
                                            w_ok, R, D, R_STRIDE, stride_xw, stride_yr, gamma1,
                                            BLOCK_W, BLOCK_R, BLOCK_D, SAVE_DELTA, DOT_PRECISION)
        cos, denom = _cosine(xc, c2, norm2, eps)
        weight = _word_weights(cos, w_ok, gamma2)
        weights += weight
        if SAVE_DELTA:
            alpha, beta, gamma, m = _cosine_grad(gamma2 * weight, cos, xc, c2, norm2, denom, eps)
            for r0 in range(0, R, BLOCK_R):
                offs_r, r_ok, tile, a, b, d_a = _attention_grad(
                    scratch, COLS + pair * 2 * R, r0, R, R_STRIDE, w_ok, inv_z, alpha, beta, m, gamma1,
                    BLOCK_W, BLOCK_R)
                kept = tl.load(DELTA + pair * R + offs_r, mask=r_ok & (w0 > 0), other=0.0)
                tl.store(DELTA + pair * R + offs_r, kept + tl.sum(a * d_a, axis=1), mask=r_ok)
    tl.store(S + pair, tl.abs(gamma2) + tl.log(tl.sum(weights, axis=0)))


@triton.autotune(configs=_configs(), key=["W", "R", "D"])
@triton.jit
def _forward_kernel(X, MASK, NWORDS, Y, G, S, COLS, DELTA, SCRATCH, T, I, W, R, D, R_STRIDE,
                    TEXT_GROUPS, stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                    gamma1, gamma2, eps,
                    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                    SAVE_DELTA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Grid (I, TEXT_GROUPS): image i against texts g, g + TEXT_GROUPS, ..."""
    i = tl.program_id(0)
    group = tl.program_id(1)
    slot = tl.cast(i, tl.int64) * TEXT_GROUPS + group
    scratch = _program_scratch(SCRATCH, slot, R_STRIDE, BLOCK_W)
    for t in range(group, T, TEXT_GROUPS):
        _forward_pair(X, MASK, NWORDS, Y, G, S, COLS, DELTA, scratch, t, i, I, W, R, D, R_STRIDE,
                      stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                      BLOCK_W, BLOCK_R, BLOCK_D, SAVE_DELTA, DOT_PRECISION)


@triton.jit
def _block_gradient(X, MASK, Y, G, S, COLS, DELTA, GS, scratch, t, i, w0, I, W, R, D, R_STRIDE,
                    stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """For the word block at w0 of pair (t, i): recompute the forward from the saved column
    statistics, write P = dL/ds (region-major, with the direct alpha b) to scratch row set 3 and
    return what the owners add: dL/dx = gamma x + P Y and dL/dy = P^T x + b^T diag(beta) c.
    Everything is first taken for the forward's word weights (the arithmetic that made delta,
    so that d_a - delta cancels exactly as there) and scaled to dL/dS at the end."""
    pair = tl.cast(t, tl.int64) * I + i
    scale = tl.load(GS + pair).to(tl.float32) * tl.exp(tl.abs(gamma2) - tl.load(S + pair))
    offs_w = w0 + tl.arange(0, BLOCK_W)
    w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
    x_ptr = X + tl.cast(t, tl.int64) * stride_xt
    y_ptr = Y + tl.cast(i, tl.int64) * stride_yi
    inv_z, xc, c2, norm2 = _block_state(x_ptr, y_ptr, G + tl.cast(i, tl.int64) * R * R, COLS + pair * 2 * R,
                                        scratch, offs_w, w_ok, R, D, R_STRIDE, stride_xw, stride_yr,
                                        gamma1, BLOCK_W, BLOCK_R, BLOCK_D, True, DOT_PRECISION)
    cos, denom = _cosine(xc, c2, norm2, eps)
    d_cos = gamma2 * _word_weights(cos, w_ok, gamma2)
    alpha, beta, gamma, m = _cosine_grad(d_cos, cos, xc, c2, norm2, denom, eps)
    for r0 in range(0, R, BLOCK_R):
        offs_r, r_ok, tile, a, b, d_a = _attention_grad(
            scratch, COLS + pair * 2 * R, r0, R, R_STRIDE, w_ok, inv_z, alpha, beta, m, gamma1, BLOCK_W, BLOCK_R)
        delta = tl.load(DELTA + pair * R + offs_r, mask=r_ok, other=0.0)
        d_s = scale * (alpha[None, :] * b + a * (d_a - delta[:, None]))
        tl.store(scratch + 3 * R_STRIDE * BLOCK_W + tile, d_s)
    tl.debug_barrier()
    return offs_w, w_ok, x_ptr, y_ptr, inv_z, scale * beta, scale * gamma


@triton.autotune(configs=_configs(), key=["W", "R", "D"], reset_to_zero=["GX"])
@triton.jit
def _backward_words_kernel(X, MASK, NWORDS, Y, G, S, COLS, DELTA, GS, GX, SCRATCH, T, I, W, R, D,
                           R_STRIDE, stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                           gamma1, gamma2, eps,
                           BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                           DOT_PRECISION: tl.constexpr, WIDE_GRADS: tl.constexpr):
    """Grid (T, cdiv(W, BLOCK_W)): the program owns dL/dx of text t's word block, over all images."""
    t = tl.program_id(0)
    w0 = tl.program_id(1) * BLOCK_W
    if w0 < tl.load(NWORDS + t):
        slot = tl.cast(t, tl.int64) * tl.num_programs(1) + tl.program_id(1)
        scratch = _program_scratch(SCRATCH, slot, R_STRIDE, BLOCK_W)
        gx_ptr = GX + tl.cast(t, tl.int64) * W * D  # GX is [T, W, D] fp32, contiguous
        for i in range(0, I):
            offs_w, w_ok, x_ptr, y_ptr, inv_z, beta, gamma = _block_gradient(
                X, MASK, Y, G, S, COLS, DELTA, GS, scratch, t, i, w0, I, W, R, D, R_STRIDE,
                stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
            for d0 in range(0, D, BLOCK_D):  # dL/dx^T [BLOCK_D, BLOCK_W] = gamma x^T + Y^T P
                offs_d = d0 + tl.arange(0, BLOCK_D)
                keep = w_ok[None, :] & (offs_d < D)[:, None]
                x_t = tl.load(x_ptr + offs_w[None, :] * stride_xw + offs_d[:, None], mask=keep, other=0.0)
                d_x = gamma[None, :] * x_t.to(tl.float32)
                for r0 in range(0, R, BLOCK_R):
                    offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
                    y_t = tl.load(y_ptr + offs_r[None, :] * stride_yr + offs_d[:, None],
                                  mask=r_ok[None, :] & (offs_d < D)[:, None], other=0.0)
                    p = tl.load(scratch + 3 * R_STRIDE * BLOCK_W + tile)
                    d_x = _mma_grad(y_t, p, d_x, y_t, DOT_PRECISION, WIDE_GRADS)
                owned = gx_ptr + offs_w[None, :] * D + offs_d[:, None]
                tl.store(owned, tl.load(owned, mask=keep, other=0.0) + d_x, mask=keep)


@triton.autotune(configs=_configs(), key=["W", "R", "D"], reset_to_zero=["GY"])
@triton.jit
def _backward_regions_kernel(X, MASK, NWORDS, Y, G, S, COLS, DELTA, GS, GY, SCRATCH, T, I, W, R, D,
                             R_STRIDE, stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                             gamma1, gamma2, eps,
                             BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                             DOT_PRECISION: tl.constexpr, WIDE_GRADS: tl.constexpr):
    """Grid (I,): the program owns dL/dy of image i, over all (text, word block)s."""
    i = tl.program_id(0)
    scratch = _program_scratch(SCRATCH, tl.cast(i, tl.int64), R_STRIDE, BLOCK_W)
    gy_ptr = GY + tl.cast(i, tl.int64) * R * D  # GY is [I, R, D] fp32, contiguous
    for t in range(0, T):
        for w0 in range(0, tl.load(NWORDS + t), BLOCK_W):
            offs_w, w_ok, x_ptr, y_ptr, inv_z, beta, gamma = _block_gradient(
                X, MASK, Y, G, S, COLS, DELTA, GS, scratch, t, i, w0, I, W, R, D, R_STRIDE,
                stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                d_ok = offs_d < D
                x = tl.load(x_ptr + offs_w[:, None] * stride_xw + offs_d[None, :],
                            mask=w_ok[:, None] & d_ok[None, :], other=0.0)
                c_t = tl.zeros([BLOCK_D, BLOCK_W], dtype=tl.float32)  # c^T = Y^T b^T, this D chunk
                for r0 in range(0, R, BLOCK_R):
                    offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
                    b = tl.load(scratch + tile) * inv_z[None, :]
                    y_t = tl.load(y_ptr + offs_r[None, :] * stride_yr + offs_d[:, None],
                                  mask=r_ok[None, :] & d_ok[:, None], other=0.0)
                    c_t = _mma(y_t, b.to(y_t.dtype), c_t, DOT_PRECISION)
                beta_c = tl.trans(beta[None, :] * c_t)
                for r0 in range(0, R, BLOCK_R):
                    offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
                    p = tl.load(scratch + 3 * R_STRIDE * BLOCK_W + tile)
                    b = tl.load(scratch + tile) * inv_z[None, :]
                    d_y = _mma_grad(b, beta_c, _mma_grad(p, x, None, x, DOT_PRECISION, WIDE_GRADS), x,
                                    DOT_PRECISION, WIDE_GRADS)
                    owned = gy_ptr + offs_r[:, None] * D + offs_d[None, :]
                    keep = r_ok[:, None] & d_ok[None, :]
                    tl.store(owned, tl.load(owned, mask=keep, other=0.0) + d_y, mask=keep)


def _check_inputs(words, word_mask, regions, gamma1, gamma2):
    check_local_inputs(words, word_mask, regions)
    if words.dtype != regions.dtype or words.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"words and regions must share one of fp32/bf16/fp16, got {words.dtype}, {regions.dtype}")
    if words.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError("local_similarity_triton needs CUDA tensors, or TRITON_INTERPRET=1 set "
                           "before cmgl_dist.kernels is imported")
    if not (abs(gamma1) <= KERNEL_MAX_GAMMA1 and abs(gamma2) <= KERNEL_MAX_GAMMA2):
        raise ValueError(f"the Triton kernel takes |gamma1| <= {KERNEL_MAX_GAMMA1} and |gamma2| <= {KERNEL_MAX_GAMMA2} "
                         f"(its softmaxes use fixed offsets), got gamma1={gamma1}, gamma2={gamma2}; "
                         "use loss.local_backend=reference for larger ones")


# CMGL_KERNEL_POISON=1 fills every buffer the kernels are meant to write (outputs, saved
# statistics, scratch) with NaN when it is allocated, whatever its size: a value a kernel fails
# to write then shows up. (Filling freed memory instead misses the caching allocator's small pool.)
POISON = os.environ.get("CMGL_KERNEL_POISON") == "1"


def _empty(*shape: int, device) -> torch.Tensor:
    """An fp32 buffer the kernels write in full before reading it (NaN-filled under POISON)."""
    out = torch.empty(*shape, device=device, dtype=torch.float32)
    return out.fill_(float("nan")) if POISON else out


def _on_device(device: torch.device):
    """Launches go to the current CUDA device: make it the tensors' one (cuda:1 while cuda:0 is
    current would run the kernel on the wrong device's pointers)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _scratch(R: int, device, *programs_and_block_w: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Per-program scratch ([programs, SCRATCH_ROWS, R_STRIDE, block_w] fp32, as large as the largest of the
    (programs, block_w) launches that share it) and R_STRIDE."""
    r_stride = -(-R // R_ALIGN) * R_ALIGN
    size = max(programs * SCRATCH_ROWS.value * r_stride * block_w for programs, block_w in programs_and_block_w)
    return _empty(size, device=device), r_stride


def _launch_args(words, word_mask, regions):
    """Contiguous inputs, the mask as uint8 padded to the word bucket (the W the kernels see, so
    the compiled kernels and autotune keys stay the same while W varies within a bucket), and
    each text's last real word + 1 (loop bound)."""
    words, regions = words.contiguous(), regions.contiguous()
    T, W, D = words.shape
    I, R, _ = regions.shape
    W = word_bucket(W)
    mask = F.pad(word_mask.to(torch.uint8), (0, W - word_mask.shape[1])).contiguous()
    positions = torch.arange(1, W + 1, device=mask.device, dtype=torch.int32)
    n_words = (mask.to(torch.int32) * positions).amax(dim=1).to(torch.int32)
    if words.dtype == torch.float32:
        precision = "ieee"  # tf32 would miss the 1e-4 fp32 tolerance
    else:
        precision = "upcast" if _INTERPRETED and words.dtype == torch.bfloat16 else "tf32"
    meta = dict(BLOCK_W=BLOCK_W, DOT_PRECISION=precision)
    strides = (words.stride(0), words.stride(1), mask.stride(0), regions.stride(0), regions.stride(1))
    return words, mask, n_words, regions, (T, I, W, R, D), strides, meta


def local_similarity_forward(words, word_mask, regions, gamma1, gamma2, save_delta):
    """S [T, I] fp32, the column statistics of the softmax over words [T, I, 2, R] fp32 (max and
    log-sum-exp relative to it) and, with save_delta, backward's column term for
    dL/dS = exp(S - |gamma2|) ([T, I, R] fp32, else None)."""
    words, mask, n_words, regions, sizes, strides, meta = _launch_args(words, word_mask, regions)
    T, I, W, R, D = sizes
    S = _empty(T, I, device=words.device)
    col_stats = _empty(T, I, 2, R, device=words.device)
    delta = _empty(T, I, R, device=words.device) if save_delta else None
    if T == 0 or I == 0:  # no pair: nothing to launch (and no program count to divide by)
        return S, col_stats, delta
    groups = min(T, -(-FORWARD_PROGRAMS // I))
    scratch, r_stride = _scratch(R, words.device, (I * groups, BLOCK_W))
    with _on_device(words.device):
        _forward_kernel[(I, groups)](words, mask, n_words, regions, region_gram(regions), S, col_stats,
                                     col_stats if delta is None else delta, scratch, *sizes, r_stride, groups,
                                     *strides, float(gamma1), float(gamma2), COSINE_EPS,
                                     SAVE_DELTA=save_delta, **meta)
    return S, col_stats, delta


def local_similarity_backward(grad_S, words, word_mask, regions, S, col_stats, delta, gamma1, gamma2):
    """dL/dwords and dL/dregions (input dtype), accumulated in fp32 by their owner programs."""
    n_slots = words.shape[1]
    words, mask, n_words, regions, sizes, strides, meta = _launch_args(words, word_mask, regions)
    T, I, W, R, D = sizes
    grad_words = torch.zeros(T, W, D, device=words.device, dtype=torch.float32)
    grad_regions = torch.zeros(I, R, D, device=words.device, dtype=torch.float32)
    if T and I:
        common = (words, mask, n_words, regions, region_gram(regions), S, col_stats, delta, grad_S.contiguous())
        hyper = (float(gamma1), float(gamma2), COSINE_EPS)
        word_blocks = triton.cdiv(W, BLOCK_W)
        scratch, r_stride = _scratch(R, words.device, (T * word_blocks, BLOCK_W), (I, REGION_OWNER_BLOCK_W))
        # fp16's range ends at 6e-8: P = dL/ds and beta c, cast to fp16 for the products, underflow
        # there, so with fp16 inputs those products take fp32 operands (tf32 on GPUs).
        meta = dict(meta, WIDE_GRADS=words.dtype == torch.float16)
        with _on_device(words.device):
            _backward_words_kernel[(T, word_blocks)](*common, grad_words, scratch, *sizes, r_stride, *strides,
                                                     *hyper, **meta)
            _backward_regions_kernel[(I,)](*common, grad_regions, scratch, *sizes, r_stride, *strides, *hyper,
                                           **dict(meta, BLOCK_W=REGION_OWNER_BLOCK_W))
    return grad_words[:, :n_slots].to(words.dtype), grad_regions.to(regions.dtype)


class LocalSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, words, word_mask, regions, gamma1, gamma2):
        _check_inputs(words, word_mask, regions, gamma1, gamma2)
        training = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
        S, col_stats, delta = local_similarity_forward(words, word_mask, regions, gamma1, gamma2, training)
        ctx.save_for_backward(words, word_mask, regions, S, col_stats, delta)
        ctx.gammas = (gamma1, gamma2)
        return S

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_S):
        words, word_mask, regions, S, col_stats, delta = ctx.saved_tensors
        grad_words, grad_regions = local_similarity_backward(
            grad_S, words, word_mask, regions, S, col_stats, delta, *ctx.gammas)
        return grad_words, None, grad_regions, None, None


def local_similarity_triton(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                            gamma1: float = 4.0, gamma2: float = 5.0) -> torch.Tensor:
    """S [T, I] float32 (whatever the input dtype) for texts `words [T, W, D]` (real words where
    `word_mask [T, W]` is True) against images `regions [I, R, D]`; differentiable in words and
    regions."""
    return LocalSimilarity.apply(words, word_mask, regions, gamma1, gamma2)
