"""GLoRIA's word-region similarity as fused Triton kernels (forward and backward).

For text t and image i (words x_w, w real; regions y_r):
    s_wr = x_w . y_r
    a_wr = softmax over real words w of s_wr           (per region r)
    b_wr = softmax over regions r of gamma1 * a_wr      (per word w)    [kernels/attention.py]
    ctx_w = sum_r b_wr y_r
    S[t, i] = log sum_{w real} exp(gamma2 * cos(x_w, ctx_w)),  cos = x.ctx / max(|x| |ctx|, eps)

Design (kernels/README.md has the why and the compile evidence):
- Tiles. A word block is BLOCK_W words by the whole region axis (BLOCK_R, a power of two >= R:
  a Triton register tile's extent must be one), so the softmax over regions is exact without
  online rescaling; D is walked in BLOCK_D chunks. Every product is a tl.dot on the input dtype
  (bf16 operands on tensor cores) into fp32 accumulators; softmaxes, norms and log-sum-exps are
  fp32. Products contracting over regions are taken transposed (ctx^T = Y^T b^T) so that the
  in-register [BLOCK_W, BLOCK_R] operand is the B side (as the A side ptxas spills).
- Forward: one program per (image, block of TEXTS_PER_PROGRAM texts): it keeps reusing one
  image's regions (hot in L1/L2) across its texts. Per pair, pass 1 builds the column
  log-sum-exp `lse[r]` over word blocks online (saved for backward, [T, I, R] fp32), pass 2 the
  cosines; x.ctx = sum_r b s comes from the score tile and |ctx|^2 from ctx = b @ Y built
  D-chunk by D-chunk. When training it also gathers backward's column term
  delta_r = sum_w a_wr dL/da_wr for dL/dS = 1 ([T, I, R] fp32). Nothing [T, I, W, *] reaches
  global memory.
- Backward, split as FlashAttention-2 splits dK/dV from dQ, so that every gradient has one
  owner program and no atomics are needed: `_backward_words_kernel` owns a (text, word block)
  and walks every image, adding its dL/dx rows; `_backward_regions_kernel` owns an image and
  walks every (text, word block), adding its dL/dy rows. Each recomputes the pair's scores,
  attention and context from `lse` (what FlashAttention-2 also pays: recompute instead of
  storing [T, I, W, R]). Owned rows are read-modified-written in fp32 buffers, plain loads
  and stores.
- Shapes that vary per batch are bucketed: W enters as a multiple of WORD_BUCKET (the mask is
  padded), so the compiled kernel and the autotune key (W bucket, R, D) stay the same across
  batches; by default the config is pinned per GPU architecture (CMGL_KERNEL_AUTOTUNE=1
  tunes over a few configs per bucket, once).

Work per pair in W R D multiply-adds: forward 3 (scores twice, context; 4 with h = ctx . y_r
when training); backward 5 for the word owner (scores, context, h, context again, dS @ Y) and 6
for the region owner (scores, context, h, context again, b^T dctx, dS^T X), against the 6 of
the nominal 3 x 4 W R D flops.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from cmgl_dist.kernels.inputs import COSINE_EPS, check_local_inputs, word_bucket

MAX_REGIONS = 1024  # one program holds [BLOCK_W, next_pow2(R)] score tiles in registers
TEXTS_PER_PROGRAM = 4  # forward: texts one program scores against its image

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# CMGL_KERNEL_AUTOTUNE=1 tunes over AUTOTUNE_CONFIGS once per (W bucket, R, D, dtypes); the
# default is the pinned config of the GPU's architecture (no tuning in training).
_AUTOTUNE = os.environ.get("CMGL_KERNEL_AUTOTUNE", "0") == "1"
# By compute capability major. sm_90 (benchmarks/results/kernel_compile_sm90.csv, from
# benchmarks/kernel_compile_sm90.py): BLOCK_D 16 at 8 warps spills least (0-276 bytes per thread
# by kernel; BLOCK_D 32 spills 280-2064, 16 warps cap registers at 128 and spill more).
# Ampere (sm_80, 164 KB of shared memory) runs the same tiles; no evidence recorded for it yet.
PINNED_CONFIGS = {
    9: dict(BLOCK_W=16, BLOCK_D=16, num_warps=8, num_stages=1),
    8: dict(BLOCK_W=16, BLOCK_D=16, num_warps=8, num_stages=1),
}
INTERPRETER_CONFIG = dict(BLOCK_W=16, BLOCK_D=16, num_warps=4, num_stages=1)
AUTOTUNE_CONFIGS = [dict(BLOCK_W=bw, BLOCK_D=bd, num_warps=nw, num_stages=1)
                    for bw, bd, nw in ((16, 16, 8), (16, 32, 8), (16, 16, 16), (32, 16, 8))]


def _as_config(params: dict) -> triton.Config:
    meta = {k: v for k, v in params.items() if k.startswith("BLOCK_")}
    return triton.Config(meta, num_warps=params["num_warps"], num_stages=params["num_stages"])


def _arch_major() -> int:
    import torch.cuda

    return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9


def _configs() -> list[triton.Config]:
    if _INTERPRETED:  # the interpreter's timings mean nothing: one small config
        return [_as_config(INTERPRETER_CONFIG)]
    if _AUTOTUNE:
        return [_as_config(c) for c in AUTOTUNE_CONFIGS]
    return [_as_config(PINNED_CONFIGS.get(_arch_major(), PINNED_CONFIGS[8]))]


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b in fp32. "upcast" is for the interpreter, whose bf16 dot is wrong."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _scores(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, D, stride_xw, stride_yr,
            BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    """s = x[offs_w] @ y[offs_r]^T and the squared word norms, fp32, D walked in chunks."""
    s = tl.zeros([BLOCK_W, BLOCK_R], dtype=tl.float32)
    norm2 = tl.zeros([BLOCK_W], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        x = tl.load(x_ptr + offs_w[:, None] * stride_xw + offs_d[None, :],
                    mask=w_ok[:, None] & d_ok[None, :], other=0.0)
        y_t = tl.load(y_ptr + offs_r[None, :] * stride_yr + offs_d[:, None],
                      mask=r_ok[None, :] & d_ok[:, None], other=0.0)
        s = _mma(x, y_t, s, DOT_PRECISION)
        xf = x.to(tl.float32)
        norm2 += tl.sum(xf * xf, axis=1)
    return s, norm2


@triton.jit
def _attention(s, lse, w_ok, r_ok, gamma1):
    """a (softmax over words, from the saved column lse) and b (softmax over regions)."""
    a = tl.where(w_ok[:, None] & r_ok[None, :], tl.exp(s - lse[None, :]), 0.0)
    z = tl.where(r_ok[None, :], gamma1 * a, float("-inf"))
    e = tl.exp(z - tl.max(z, axis=1)[:, None])
    b = e / tl.sum(e, axis=1)[:, None]
    return a, b


@triton.jit
def _context_stats(b, y_ptr, offs_r, r_ok, D, stride_yr,
                   BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                   WITH_H: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """|ctx_w|^2 and (WITH_H) h_wr = ctx_w . y_r, with ctx = b @ Y built D-chunk by D-chunk.

    Products contracting over regions are taken transposed (ctx^T = Y^T b^T) so that the
    in-register [BLOCK_W, BLOCK_R] operand is the B side: as the A side every warp would
    need all of it in registers (ptxas then spills)."""
    q = tl.zeros([BLOCK_W], dtype=tl.float32)
    h = tl.zeros([BLOCK_W, BLOCK_R], dtype=tl.float32)
    b_t = tl.trans(b.to(y_ptr.dtype.element_ty))
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        y_t = tl.load(y_ptr + offs_r[None, :] * stride_yr + offs_d[:, None],
                      mask=r_ok[None, :] & (offs_d < D)[:, None], other=0.0)
        ctx_t = _mma(y_t, b_t, None, DOT_PRECISION)
        q += tl.sum(ctx_t * ctx_t, axis=0)
        if WITH_H:
            h = _mma(tl.trans(ctx_t.to(y_t.dtype)), y_t, h, DOT_PRECISION)
    return q, h


@triton.jit
def _word_block(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, lse, D, stride_xw, stride_yr, gamma1, eps,
                BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                WITH_H: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Scores, both softmaxes and each word's cosine with its context, for one word block."""
    s, norm2 = _scores(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, D, stride_xw, stride_yr,
                       BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
    a, b = _attention(s, lse, w_ok, r_ok, gamma1)
    dot_ctx = tl.sum(b * s, axis=1)
    ctx2, h = _context_stats(b, y_ptr, offs_r, r_ok, D, stride_yr,
                             BLOCK_W, BLOCK_R, BLOCK_D, WITH_H, DOT_PRECISION)
    denom = tl.sqrt(norm2) * tl.sqrt(ctx2)
    cos = dot_ctx / tl.maximum(denom, eps)
    return s, a, b, h, norm2, ctx2, denom, cos


@triton.jit
def _grad_coefficients(s, b, h, norm2, ctx2, denom, cos, d_cos, gamma1, eps):
    """From dL/dcos (0 on padded words): dL/da and the per-word coefficients of
    dL/dctx = alpha x + beta ctx and of dL/dx (direct) = alpha ctx + gamma x."""
    clamped = denom < eps  # the clamp cuts the gradient through the norms
    alpha = d_cos / tl.maximum(denom, eps)
    beta = tl.where(clamped, 0.0, -d_cos * cos / tl.where(clamped, 1.0, ctx2))
    gamma = tl.where(clamped, 0.0, -d_cos * cos / tl.where(clamped, 1.0, norm2))
    d_b = alpha[:, None] * s + beta[:, None] * h
    d_a = gamma1 * b * (d_b - tl.sum(b * d_b, axis=1)[:, None])
    return d_a, alpha, beta, gamma


@triton.jit
def _forward_pair(X, MASK, NWORDS, Y, S, LSE, DELTA, t, i, I, W, R, D,
                  stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                  BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                  SAVE_DELTA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pair = tl.cast(t, tl.int64) * I + i
    n_words = tl.load(NWORDS + t)
    x_ptr = X + tl.cast(t, tl.int64) * stride_xt
    y_ptr = Y + tl.cast(i, tl.int64) * stride_yi
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R

    # Pass 1: column log-sum-exp over real words, online across word blocks.
    col_max = tl.full([BLOCK_R], -1e30, dtype=tl.float32)
    col_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    for w0 in range(0, n_words, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
        s, _ = _scores(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, D, stride_xw, stride_yr,
                       BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
        s = tl.where(w_ok[:, None], s, float("-inf"))
        new_max = tl.maximum(col_max, tl.max(s, axis=0))
        col_sum = col_sum * tl.exp(col_max - new_max) + tl.sum(tl.exp(s - new_max[None, :]), axis=0)
        col_max = new_max
    lse = col_max + tl.log(col_sum)
    tl.store(LSE + pair * R + offs_r, lse, mask=r_ok)

    # Pass 2: cosine of each word with its context, then log-sum-exp over words, kept per
    # lane of the word block and folded at the end. With SAVE_DELTA (training) it also gathers
    # backward's column term delta_r = sum_w a_wr dL/da_wr for dL/dS = 1: dL/dcos_w =
    # gamma2 exp(v_w - S) is weighted by exp(v_w - running max) and rescaled once S is known.
    lane_max = tl.full([BLOCK_W], -1e30, dtype=tl.float32)
    lane_sum = tl.zeros([BLOCK_W], dtype=tl.float32)
    delta = tl.zeros([BLOCK_R], dtype=tl.float32)
    for w0 in range(0, n_words, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
        s, a, b, h, norm2, ctx2, denom, cos = _word_block(
            x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, lse, D, stride_xw, stride_yr, gamma1, eps,
            BLOCK_W, BLOCK_R, BLOCK_D, SAVE_DELTA, DOT_PRECISION)
        v = tl.where(w_ok, gamma2 * cos, float("-inf"))
        old_max = tl.max(lane_max, axis=0)
        new_max = tl.maximum(lane_max, v)
        lane_sum = lane_sum * tl.exp(lane_max - new_max) + tl.exp(v - new_max)
        lane_max = new_max
        if SAVE_DELTA:
            run_max = tl.max(lane_max, axis=0)
            d_a, _, _, _ = _grad_coefficients(s, b, h, norm2, ctx2, denom, cos,
                                              gamma2 * tl.exp(v - run_max), gamma1, eps)
            delta = delta * tl.exp(old_max - run_max) + tl.sum(a * d_a, axis=0)
    row_max = tl.max(lane_max, axis=0)
    S_ti = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), axis=0))
    tl.store(S + pair, S_ti)
    if SAVE_DELTA:
        tl.store(DELTA + pair * R + offs_r, delta * tl.exp(row_max - S_ti), mask=r_ok)


@triton.autotune(configs=_configs(), key=["W", "R", "D"])
@triton.jit
def _forward_kernel(X, MASK, NWORDS, Y, S, LSE, DELTA, T, I, W, R, D,
                    stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                    gamma1, gamma2, eps,
                    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                    TEXTS_PER_PROGRAM: tl.constexpr, SAVE_DELTA: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Grid (I, cdiv(T, TEXTS_PER_PROGRAM)): image i against a block of texts."""
    i = tl.program_id(0)
    t0 = tl.program_id(1) * TEXTS_PER_PROGRAM
    for t in range(t0, tl.minimum(t0 + TEXTS_PER_PROGRAM, T)):
        _forward_pair(X, MASK, NWORDS, Y, S, LSE, DELTA, t, i, I, W, R, D,
                      stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                      BLOCK_W, BLOCK_R, BLOCK_D, SAVE_DELTA, DOT_PRECISION)


@triton.jit
def _block_gradient(X, MASK, Y, S, LSE, DELTA, GS, t, i, w0, I, W, R, D,
                    stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """For the word block at w0 of pair (t, i): recompute the forward from the saved lse and
    return dL/ds (as the B operand, transposed, input dtype), b (the same) and the per-word
    coefficients of dL/dx = alpha ctx + gamma x + dS Y and dL/dctx = alpha x + beta ctx."""
    pair = tl.cast(t, tl.int64) * I + i
    s_ti = tl.load(S + pair)
    g_ti = tl.load(GS + pair).to(tl.float32)
    offs_w = w0 + tl.arange(0, BLOCK_W)
    w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    lse = tl.load(LSE + pair * R + offs_r, mask=r_ok, other=0.0)
    delta = g_ti * tl.load(DELTA + pair * R + offs_r, mask=r_ok, other=0.0)
    x_ptr = X + tl.cast(t, tl.int64) * stride_xt
    y_ptr = Y + tl.cast(i, tl.int64) * stride_yi
    s, a, b, h, norm2, ctx2, denom, cos = _word_block(
        x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, lse, D, stride_xw, stride_yr, gamma1, eps,
        BLOCK_W, BLOCK_R, BLOCK_D, True, DOT_PRECISION)
    d_cos = tl.where(w_ok, g_ti * gamma2 * tl.exp(gamma2 * cos - s_ti), 0.0)
    d_a, alpha, beta, gamma = _grad_coefficients(s, b, h, norm2, ctx2, denom, cos, d_cos, gamma1, eps)
    d_s = a * (d_a - delta[None, :])
    b_t = tl.trans(b.to(Y.dtype.element_ty))
    d_s_t = tl.trans(d_s.to(Y.dtype.element_ty))
    return offs_w, w_ok, offs_r, r_ok, x_ptr, y_ptr, b_t, d_s_t, alpha, beta, gamma


@triton.jit
def _feature_chunk(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, b_t, d0, D, stride_xw, stride_yr,
                   BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The D-chunk at d0: its offsets and mask, x^T [BLOCK_D, BLOCK_W], y^T [BLOCK_D, BLOCK_R]
    and the context ctx^T = y^T b^T (fp32)."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    x_t = tl.load(x_ptr + offs_w[None, :] * stride_xw + offs_d[:, None],
                  mask=w_ok[None, :] & d_ok[:, None], other=0.0)
    y_t = tl.load(y_ptr + offs_r[None, :] * stride_yr + offs_d[:, None],
                  mask=r_ok[None, :] & d_ok[:, None], other=0.0)
    return offs_d, d_ok, x_t, y_t, _mma(y_t, b_t, None, DOT_PRECISION)


@triton.autotune(configs=_configs(), key=["W", "R", "D"], reset_to_zero=["GX"])
@triton.jit
def _backward_words_kernel(X, MASK, NWORDS, Y, S, LSE, DELTA, GS, GX, T, I, W, R, D,
                           stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                           gamma1, gamma2, eps,
                           BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                           DOT_PRECISION: tl.constexpr):
    """Grid (T, cdiv(W, BLOCK_W)): the program owns dL/dx of text t's word block, over all images."""
    t = tl.program_id(0)
    w0 = tl.program_id(1) * BLOCK_W
    if w0 < tl.load(NWORDS + t):
        gx_ptr = GX + tl.cast(t, tl.int64) * W * D  # GX is [T, W, D] fp32, contiguous
        for i in range(0, I):
            offs_w, w_ok, offs_r, r_ok, x_ptr, y_ptr, b_t, d_s_t, alpha, beta, gamma = _block_gradient(
                X, MASK, Y, S, LSE, DELTA, GS, t, i, w0, I, W, R, D,
                stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
            for d0 in range(0, D, BLOCK_D):
                offs_d, d_ok, x_t, y_t, ctx_t = _feature_chunk(
                    x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, b_t, d0, D, stride_xw, stride_yr,
                    BLOCK_D, DOT_PRECISION)
                d_x_t = alpha[None, :] * ctx_t + gamma[None, :] * x_t.to(tl.float32)
                d_x_t = _mma(y_t, d_s_t, d_x_t, DOT_PRECISION)
                owned = gx_ptr + offs_w[None, :] * D + offs_d[:, None]
                keep = w_ok[None, :] & d_ok[:, None]
                tl.store(owned, tl.load(owned, mask=keep, other=0.0) + d_x_t, mask=keep)


@triton.autotune(configs=_configs(), key=["W", "R", "D"], reset_to_zero=["GY"])
@triton.jit
def _backward_regions_kernel(X, MASK, NWORDS, Y, S, LSE, DELTA, GS, GY, T, I, W, R, D,
                             stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                             gamma1, gamma2, eps,
                             BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                             DOT_PRECISION: tl.constexpr):
    """Grid (I,): the program owns dL/dy of image i, over all (text, word block)s."""
    i = tl.program_id(0)
    gy_ptr = GY + tl.cast(i, tl.int64) * R * D  # GY is [I, R, D] fp32, contiguous
    for t in range(0, T):
        for w0 in range(0, tl.load(NWORDS + t), BLOCK_W):
            offs_w, w_ok, offs_r, r_ok, x_ptr, y_ptr, b_t, d_s_t, alpha, beta, gamma = _block_gradient(
                X, MASK, Y, S, LSE, DELTA, GS, t, i, w0, I, W, R, D,
                stride_xt, stride_xw, stride_mt, stride_yi, stride_yr, gamma1, gamma2, eps,
                BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
            for d0 in range(0, D, BLOCK_D):
                offs_d, d_ok, x_t, y_t, ctx_t = _feature_chunk(
                    x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, b_t, d0, D, stride_xw, stride_yr,
                    BLOCK_D, DOT_PRECISION)
                d_ctx = tl.trans((alpha[None, :] * x_t.to(tl.float32) + beta[None, :] * ctx_t).to(x_t.dtype))
                d_y = _mma(b_t, d_ctx, None, DOT_PRECISION)
                d_y = _mma(d_s_t, tl.trans(x_t), d_y, DOT_PRECISION)
                owned = gy_ptr + offs_r[:, None] * D + offs_d[None, :]
                keep = r_ok[:, None] & d_ok[None, :]
                tl.store(owned, tl.load(owned, mask=keep, other=0.0) + d_y, mask=keep)


def _check_inputs(words, word_mask, regions):
    check_local_inputs(words, word_mask, regions)
    if words.dtype != regions.dtype or words.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"words and regions must share one of fp32/bf16/fp16, got {words.dtype}, {regions.dtype}")
    if words.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError("local_similarity_triton needs CUDA tensors, or TRITON_INTERPRET=1 set "
                           "before cmgl_dist.kernels is imported")
    if regions.shape[1] > MAX_REGIONS:
        raise ValueError(f"at most {MAX_REGIONS} regions per image, got {regions.shape[1]}")


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
    meta = dict(BLOCK_R=max(16, triton.next_power_of_2(R)), DOT_PRECISION=precision)
    args = (T, I, W, R, D, words.stride(0), words.stride(1), mask.stride(0), regions.stride(0),
            regions.stride(1))
    return words, mask, n_words, regions, args, meta


def local_similarity_forward(words, word_mask, regions, gamma1, gamma2, save_delta):
    """S [T, I] fp32, the column log-sum-exp [T, I, R] fp32 and, with save_delta, backward's
    column term for dL/dS = 1 ([T, I, R] fp32, else None)."""
    words, mask, n_words, regions, args, meta = _launch_args(words, word_mask, regions)
    T, I, R = args[0], args[1], args[3]
    S = torch.empty(T, I, device=words.device, dtype=torch.float32)
    lse = torch.empty(T, I, R, device=words.device, dtype=torch.float32)
    delta = torch.empty_like(lse) if save_delta else None
    grid = (I, triton.cdiv(T, TEXTS_PER_PROGRAM))
    _forward_kernel[grid](words, mask, n_words, regions, S, lse, lse if delta is None else delta, *args,
                          float(gamma1), float(gamma2), COSINE_EPS, TEXTS_PER_PROGRAM=TEXTS_PER_PROGRAM,
                          SAVE_DELTA=save_delta, **meta)
    return S, lse, delta


def local_similarity_backward(grad_S, words, word_mask, regions, S, lse, delta, gamma1, gamma2):
    """dL/dwords and dL/dregions (input dtype), accumulated in fp32 by their owner programs."""
    n_slots = words.shape[1]
    words, mask, n_words, regions, args, meta = _launch_args(words, word_mask, regions)
    T, I, W, R, D = args[:5]
    grad_S = grad_S.contiguous()
    grad_words = torch.zeros(T, W, D, device=words.device, dtype=torch.float32)
    grad_regions = torch.zeros(I, R, D, device=words.device, dtype=torch.float32)
    common = (words, mask, n_words, regions, S, lse, delta, grad_S)
    hyper = (float(gamma1), float(gamma2), COSINE_EPS)
    _backward_words_kernel[lambda m: (T, triton.cdiv(W, m["BLOCK_W"]))](
        *common, grad_words, *args, *hyper, **meta)
    _backward_regions_kernel[(I,)](*common, grad_regions, *args, *hyper, **meta)
    return grad_words[:, :n_slots].to(words.dtype), grad_regions.to(regions.dtype)


class LocalSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, words, word_mask, regions, gamma1, gamma2):
        _check_inputs(words, word_mask, regions)
        training = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
        S, lse, delta = local_similarity_forward(words, word_mask, regions, gamma1, gamma2, training)
        ctx.save_for_backward(words, word_mask, regions, S, lse, delta)
        ctx.gammas = (gamma1, gamma2)
        return S

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_S):
        words, word_mask, regions, S, lse, delta = ctx.saved_tensors
        grad_words, grad_regions = local_similarity_backward(
            grad_S, words, word_mask, regions, S, lse, delta, *ctx.gammas)
        return grad_words, None, grad_regions, None, None


def local_similarity_triton(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                            gamma1: float = 4.0, gamma2: float = 5.0) -> torch.Tensor:
    """S [T, I] float32 (whatever the input dtype) for texts `words [T, W, D]` (real words where
    `word_mask [T, W]` is True) against images `regions [I, R, D]`; differentiable in words and
    regions."""
    return LocalSimilarity.apply(words, word_mask, regions, gamma1, gamma2)
