"""The tile-level device functions of the local-similarity kernels (kernels/local_similarity.py):
one word block's scores against a region tile, its softmaxes over words and regions, the Gram
products that give |c|^2 and h = c . y without the context, and the per-word gradient terms.

Tiles are region-major ([BLOCK_R, BLOCK_W]): regions x words. A word block's region-wide rows
live in a per-program scratch of SCRATCH_ROWS row sets, each [R_STRIDE, BLOCK_W] fp32:
e (the unnormalised softmax over regions), s (the scores), h = G b and P = dL/ds. Why it is laid
out so: kernels/README.md, "Kernel design".
"""
import triton
import triton.language as tl


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b in fp32. "upcast" is for the interpreter, whose bf16 dot is wrong."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _mma_grad(a, b, acc, like, DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr):
    """acc + a @ b where a or b is an fp32 gradient tile: both in `like`'s dtype (bf16 on tensor
    cores), or with WIDE (fp16 inputs, whose range ends at 6e-8) both in fp32."""
    if WIDE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT_PRECISION)
    return _mma(a.to(like.dtype), b.to(like.dtype), acc, DOT_PRECISION)


@triton.jit
def _region_tile(r0, R, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """Region offsets and mask of the tile at r0, and its element offsets in a scratch row set."""
    offs_r = r0 + tl.arange(0, BLOCK_R)
    return offs_r, offs_r < R, offs_r[:, None] * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]


@triton.jit
def _scores(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, D, stride_xw, stride_yr,
            BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    """s^T = y[offs_r] @ x[offs_w]^T [BLOCK_R, BLOCK_W] and the squared word norms, fp32."""
    s = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.float32)
    norm2 = tl.zeros([BLOCK_W], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        y = tl.load(y_ptr + offs_r[:, None] * stride_yr + offs_d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0)
        x_t = tl.load(x_ptr + offs_w[None, :] * stride_xw + offs_d[:, None],
                      mask=w_ok[None, :] & d_ok[:, None], other=0.0)
        s = _mma(y, x_t, s, DOT_PRECISION)
        xf = x_t.to(tl.float32)
        norm2 += tl.sum(xf * xf, axis=0)
    return s, norm2


@triton.jit
def _over_words(s, cols_ptr, offs_r, r_ok, w_ok, R):
    """a = the softmax over words, 0 off the real words, from the pair's column statistics: the
    max and the log-sum-exp relative to it. (s - max) - log_sum keeps a's relative precision;
    s - lse would round at |s|'s scale, an error gamma1 then multiplies."""
    col_max = tl.load(cols_ptr + offs_r, mask=r_ok, other=0.0)
    log_sum = tl.load(cols_ptr + R + offs_r, mask=r_ok, other=0.0)
    return tl.where(r_ok[:, None] & w_ok[None, :], tl.exp((s - col_max[:, None]) - log_sum[:, None]), 0.0)


@triton.jit
def _block_state(x_ptr, y_ptr, g_ptr, cols_ptr, scratch, offs_w, w_ok, R, D, R_STRIDE,
                 stride_xw, stride_yr, gamma1,
                 BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                 KEEP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One word block against one image: per word 1 / Z (Z = sum_r e), x.c, |c|^2 and |x|^2,
    where e = exp(gamma1 a - max(gamma1, 0)) is b unnormalised. Sweep 1 (region tiles) writes e
    (and with KEEP s) to scratch; sweep 2 makes h = G b (h_wr = c_w . y_r) per tile, with KEEP kept."""
    tl.debug_barrier()  # the previous block's readers of the scratch are done
    offset = tl.maximum(gamma1, 0.0)
    z = tl.zeros([BLOCK_W], dtype=tl.float32)
    xc_z = tl.zeros([BLOCK_W], dtype=tl.float32)
    norm2 = tl.zeros([BLOCK_W], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
        s, norm2 = _scores(x_ptr, y_ptr, offs_w, w_ok, offs_r, r_ok, D, stride_xw, stride_yr,
                           BLOCK_W, BLOCK_R, BLOCK_D, DOT_PRECISION)
        a = _over_words(s, cols_ptr, offs_r, r_ok, w_ok, R)
        e = tl.where(r_ok[:, None], tl.exp(gamma1 * a - offset), 0.0)
        z += tl.sum(e, axis=0)
        xc_z += tl.sum(e * s, axis=0)
        tl.store(scratch + tile, e)
        if KEEP:
            tl.store(scratch + R_STRIDE * BLOCK_W + tile, s)
    tl.debug_barrier()
    inv_z = 1.0 / z
    c2 = tl.zeros([BLOCK_W], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
        h = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.float32)
        for j0 in range(0, R, BLOCK_R):
            offs_j, j_ok, tile_j = _region_tile(j0, R, BLOCK_R, BLOCK_W)
            g = tl.load(g_ptr + offs_r[:, None] * R + offs_j[None, :],
                        mask=r_ok[:, None] & j_ok[None, :], other=0.0)
            h = _mma(g, tl.load(scratch + tile_j) * inv_z[None, :], h, DOT_PRECISION)
        c2 += tl.sum(tl.load(scratch + tile) * inv_z[None, :] * h, axis=0)
        if KEEP:
            tl.store(scratch + 2 * R_STRIDE * BLOCK_W + tile, h)
    tl.debug_barrier()
    return inv_z, xc_z * inv_z, tl.maximum(c2, 0.0), norm2


@triton.jit
def _cosine(xc, c2, norm2, eps):
    """cos = x.c / max(|x| |c|, eps), clamped to [-1, 1]: |c|^2 comes from b G b^T in 16-bit
    products, which can round it (near) to 0 while x.c is not, and exp(gamma2 cos) then overflows."""
    denom = tl.sqrt(norm2) * tl.sqrt(c2)
    return tl.minimum(tl.maximum(xc / tl.maximum(denom, eps), -1.0), 1.0), denom


@triton.jit
def _word_weights(cos, w_ok, gamma2):
    """exp(gamma2 cos - |gamma2|) on real words, else 0: S = |gamma2| + log of their sum."""
    return tl.where(w_ok, tl.exp(gamma2 * cos - tl.abs(gamma2)), 0.0)


@triton.jit
def _cosine_grad(d_cos, cos, xc, c2, norm2, denom, eps):
    """Per word, from dL/dcos (0 on padded words): alpha = dL/d(x.c), beta = 2 dL/d|c|^2,
    gamma = 2 dL/d|x|^2 and m = sum_r b (alpha s + beta h), the softmax's row term."""
    clamped = denom < eps  # the clamp cuts the gradient through the norms
    # A cosine clamped to +-1 passes no gradient (as torch.clamp in the reference).
    d_cos = tl.where(tl.abs(xc) > tl.maximum(denom, eps), 0.0, d_cos)
    alpha = d_cos / tl.maximum(denom, eps)
    beta = tl.where(clamped, 0.0, -d_cos * cos / tl.where(clamped, 1.0, c2))
    gamma = tl.where(clamped, 0.0, -d_cos * cos / tl.where(clamped, 1.0, norm2))
    return alpha, beta, gamma, alpha * xc + beta * c2


@triton.jit
def _attention_grad(scratch, cols_ptr, r0, R, R_STRIDE, w_ok, inv_z, alpha, beta, m, gamma1,
                    BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr):
    """For the region tile at r0 (after _block_state with KEEP): a, b and dL/da."""
    offs_r, r_ok, tile = _region_tile(r0, R, BLOCK_R, BLOCK_W)
    b = tl.load(scratch + tile) * inv_z[None, :]
    s = tl.load(scratch + R_STRIDE * BLOCK_W + tile)
    h = tl.load(scratch + 2 * R_STRIDE * BLOCK_W + tile)
    a = _over_words(s, cols_ptr, offs_r, r_ok, w_ok, R)
    d_a = gamma1 * b * (alpha[None, :] * s + beta[None, :] * h - m[None, :])
    return offs_r, r_ok, tile, a, b, d_a
