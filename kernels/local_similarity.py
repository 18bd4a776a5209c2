"""GLoRIA's word-region similarity as fused Triton kernels (forward and backward).

For text t and image i (words x_w, w real; regions y_r):
    s_wr = x_w . y_r
    a_wr = softmax over real words w of s_wr           (per region r)
    b_wr = softmax over regions r of gamma1 * a_wr      (per word w)
    ctx_w = sum_r b_wr y_r
    S[t, i] = log sum_{w real} exp(gamma2 * cos(x_w, ctx_w)),  cos = x.ctx / max(|x| |ctx|, eps)

One program per (t, i) pair walks the text's words in blocks of BLOCK_W; each block holds the
whole region axis (BLOCK_R = next power of two >= R) so the softmax over regions is exact
without online rescaling. The softmax over words is per region column and needs every word,
so the forward makes two passes over the word blocks: the first builds the column
log-sum-exp `lse[r]` online (kept in registers and saved for backward, [T, I, R] floats), the
second the cosines. x.ctx = sum_r b_wr s_wr comes from the score tile; |ctx|^2 is taken as
ctx = b @ Y in D-chunks (a [BLOCK_W, BLOCK_D] tile at a time) rather than the Gram form
b G b^T. The Gram form is cheaper in flops (W R^2 against W R D per pair, 0.47x at R = 361,
D = 768, plus a one-off I R^2 D for G), but it needs b[:, r-tile] beside b @ G[:, r-tile], a
register tile cannot be sliced in Triton, and re-deriving b per tile of G means recomputing the
scores (W R D each time). Nothing [T, I, W, *] ever reaches global memory.

Backward needs the column term delta_r = sum_w a_wr dL/da_wr of dL/ds, a sum over all words;
every gradient scales with dL/dS[t, i], so the forward gathers it for dL/dS = 1 while it has
each block's attention at hand ([T, I, R] floats, only when an input needs grad), and backward
is one pass over the word blocks: recompute s, b and ctx from `lse`, form dL/ds, and add each
pair's share into fp32 gradient buffers with atomics (a pair's words belong to one text and its
regions to one image, both shared with other programs).

Work per pair, in W R D multiply-adds: forward 3 (scores twice, context; 4 with h = ctx . y_r
when training), backward 7 (scores, context, h, the context again, dS @ Y, b^T dctx, dS^T X),
against the 6 of the nominal 3 x 4 W R D flops; the region axis is padded to a power of two
(361 -> 512).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from cmgl_dist.kernels.inputs import COSINE_EPS, check_local_inputs

MAX_REGIONS = 1024  # one program holds [BLOCK_W, next_pow2(R)] score tiles in registers

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# CMGL_KERNEL_AUTOTUNE=0 pins one config: tests on many small shapes then compile once per shape.
_AUTOTUNE = os.environ.get("CMGL_KERNEL_AUTOTUNE", "1") != "0"


def _configs() -> list[triton.Config]:
    if _INTERPRETED:  # the interpreter's timings mean nothing: one small config
        return [triton.Config({"BLOCK_W": 16, "BLOCK_D": 16}, num_warps=4, num_stages=1)]
    if not _AUTOTUNE:
        return [triton.Config({"BLOCK_W": 16, "BLOCK_D": 32}, num_warps=8, num_stages=2)]
    # [BLOCK_W, BLOCK_R] fp32 tiles (BLOCK_R = 512 for 361 regions) fill the registers. Compiled
    # for sm_90 (bf16, ptxas -v): 8 or 16 warps spill 0.4-1.2 KB per thread in the training
    # forward and 1-1.7 KB in backward, 4 warps several KB, BLOCK_D = 64 about twice as much;
    # BLOCK_W = 64 needs more than 228 KB of shared memory.
    return [
        triton.Config({"BLOCK_W": bw, "BLOCK_D": 32}, num_warps=nw, num_stages=2)
        for bw, nw in ((16, 8), (32, 8), (16, 16), (32, 16))
    ]


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
def _pair(pid, T, I):
    """Image-major order: the programs running at once share one or two images, whose regions
    (R x D, re-read for every word block) then come from L2; at T = 128 all texts' words
    (19 MB in bf16) fit the H100's 50 MB L2 as well."""
    i = pid // T
    t = pid % T
    return t, i, t.to(tl.int64) * I + i


@triton.autotune(configs=_configs(), key=["W", "R", "D"])
@triton.jit
def _forward_kernel(X, MASK, NWORDS, Y, S, LSE, DELTA, T, I, W, R, D,
                    stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                    gamma1, gamma2, eps,
                    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                    SAVE_DELTA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    t, i, pair = _pair(tl.program_id(0), T, I)
    n_words = tl.load(NWORDS + t)
    x_ptr = X + t.to(tl.int64) * stride_xt
    y_ptr = Y + i.to(tl.int64) * stride_yi
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


@triton.autotune(configs=_configs(), key=["W", "R", "D"], reset_to_zero=["GX", "GY"])
@triton.jit
def _backward_kernel(X, MASK, NWORDS, Y, S, LSE, DELTA, GS, GX, GY, T, I, W, R, D,
                     stride_xt, stride_xw, stride_mt, stride_yi, stride_yr,
                     gamma1, gamma2, eps,
                     BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
    t, i, pair = _pair(tl.program_id(0), T, I)
    n_words = tl.load(NWORDS + t)
    s_ti = tl.load(S + pair)
    g_ti = tl.load(GS + pair).to(tl.float32)
    x_ptr = X + t.to(tl.int64) * stride_xt
    y_ptr = Y + i.to(tl.int64) * stride_yi
    # GX is [T, W, D] and GY is [I, R, D], contiguous fp32.
    gx_ptr = GX + t.to(tl.int64) * W * D
    gy_ptr = GY + i.to(tl.int64) * R * D
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    lse = tl.load(LSE + pair * R + offs_r, mask=r_ok, other=0.0)

    delta = g_ti * tl.load(DELTA + pair * R + offs_r, mask=r_ok, other=0.0)

    # One pass: dL/ds, then dL/dx and dL/dy chunk by chunk of D.
    for w0 in range(0, n_words, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        w_ok = tl.load(MASK + t * stride_mt + offs_w, mask=offs_w < W, other=0) != 0
        s, a, b, h, norm2, ctx2, denom, cos = _word_block(
            x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, lse, D, stride_xw, stride_yr, gamma1, eps,
            BLOCK_W, BLOCK_R, BLOCK_D, True, DOT_PRECISION)
        d_cos = tl.where(w_ok, g_ti * gamma2 * tl.exp(gamma2 * cos - s_ti), 0.0)
        d_a, alpha, beta, gamma = _grad_coefficients(s, b, h, norm2, ctx2, denom, cos, d_cos,
                                                     gamma1, eps)
        d_s = a * (d_a - delta[None, :])
        b_t = tl.trans(b.to(Y.dtype.element_ty))
        d_s_t = tl.trans(d_s.to(Y.dtype.element_ty))
        for d0 in range(0, D, BLOCK_D):  # transposed products as in _context_stats
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            x_t = tl.load(x_ptr + offs_w[None, :] * stride_xw + offs_d[:, None],
                          mask=w_ok[None, :] & d_ok[:, None], other=0.0)
            y_t = tl.load(y_ptr + offs_r[None, :] * stride_yr + offs_d[:, None],
                          mask=r_ok[None, :] & d_ok[:, None], other=0.0)
            ctx_t = _mma(y_t, b_t, None, DOT_PRECISION)
            xf_t = x_t.to(tl.float32)
            d_x_t = alpha[None, :] * ctx_t + gamma[None, :] * xf_t
            d_x_t = _mma(y_t, d_s_t, d_x_t, DOT_PRECISION)
            tl.atomic_add(gx_ptr + offs_w[None, :] * D + offs_d[:, None], d_x_t,
                          mask=w_ok[None, :] & d_ok[:, None], sem="relaxed")
            d_ctx = tl.trans((alpha[None, :] * xf_t + beta[None, :] * ctx_t).to(x_t.dtype))
            d_y = _mma(b_t, d_ctx, None, DOT_PRECISION)
            d_y = _mma(d_s_t, tl.trans(x_t), d_y, DOT_PRECISION)
            tl.atomic_add(gy_ptr + offs_r[:, None] * D + offs_d[None, :], d_y,
                          mask=r_ok[:, None] & d_ok[None, :], sem="relaxed")


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
    """Contiguous inputs, the mask as uint8 and each text's last real word + 1 (loop bound)."""
    words, regions = words.contiguous(), regions.contiguous()
    mask = word_mask.to(torch.uint8).contiguous()
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.int32)
    n_words = (mask.to(torch.int32) * positions).amax(dim=1).to(torch.int32)
    T, W, D = words.shape
    I, R, _ = regions.shape
    if words.dtype == torch.float32:
        precision = "ieee"  # tf32 would miss the 1e-4 fp32 tolerance
    else:
        precision = "upcast" if _INTERPRETED and words.dtype == torch.bfloat16 else "tf32"
    meta = dict(BLOCK_R=max(16, triton.next_power_of_2(R)), DOT_PRECISION=precision)
    return words, mask, n_words, regions, (T, W, D, I, R), meta


def local_similarity_forward(words, word_mask, regions, gamma1, gamma2, save_delta):
    """S [T, I] fp32, the column log-sum-exp [T, I, R] fp32 and, with save_delta, backward's
    column term for dL/dS = 1 ([T, I, R] fp32, else None)."""
    words, mask, n_words, regions, (T, W, D, I, R), meta = _launch_args(words, word_mask, regions)
    S = torch.empty(T, I, device=words.device, dtype=torch.float32)
    lse = torch.empty(T, I, R, device=words.device, dtype=torch.float32)
    delta = torch.empty_like(lse) if save_delta else None
    _forward_kernel[(T * I,)](
        words, mask, n_words, regions, S, lse, lse if delta is None else delta, T, I, W, R, D,
        words.stride(0), words.stride(1), mask.stride(0), regions.stride(0), regions.stride(1),
        float(gamma1), float(gamma2), COSINE_EPS, SAVE_DELTA=save_delta, **meta)
    return S, lse, delta


def local_similarity_backward(grad_S, words, word_mask, regions, S, lse, delta, gamma1, gamma2):
    """dL/dwords and dL/dregions (input dtype), accumulated in fp32."""
    words, mask, n_words, regions, (T, W, D, I, R), meta = _launch_args(words, word_mask, regions)
    grad_S = grad_S.contiguous()
    grad_words = torch.zeros(T, W, D, device=words.device, dtype=torch.float32)
    grad_regions = torch.zeros(I, R, D, device=words.device, dtype=torch.float32)
    _backward_kernel[(T * I,)](
        words, mask, n_words, regions, S, lse, delta, grad_S, grad_words, grad_regions,
        T, I, W, R, D,
        words.stride(0), words.stride(1), mask.stride(0), regions.stride(0), regions.stride(1),
        float(gamma1), float(gamma2), COSINE_EPS, **meta)
    return grad_words.to(words.dtype), grad_regions.to(regions.dtype)


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
