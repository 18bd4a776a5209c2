"""Time GLoRIA's local similarity S [T, I]: the fused Triton kernel against the PyTorch forms.

Providers:
  triton            cmgl_dist.kernels.local_similarity_triton
  compiled          cmgl_dist.losses.local_similarity_compiled (torch.compile over bounded blocks)
  auto              cmgl_dist.losses.local_similarity(backend="auto"): its choice, timed on warm-up
  reference         cmgl_dist.losses.local_similarity_reference (chunked, recomputing backward)
  loop              the public GLoRIA code's algorithm: one text at a time against all images
  compile_vectorised torch.compile of all pairs at once ([T, I, W, R] and [T, I, W, D] tensors)
  compile_gram      torch.compile of all pairs with |ctx|^2 = b G b^T (no D-sized context)
Modes: fwd, bwd (backward alone, after an untimed forward), fwdbwd. Timed by
cmgl_dist.bench.harness.measure (p20/p50/p80 ms, peak extra memory on CUDA); rows go to a CSV in
the harness's long format, one case at a time (what finished is kept if a later case dies).

    python benchmarks/bench_local_similarity.py                # full shapes (CUDA)
    python benchmarks/bench_local_similarity.py --quick        # tiny shapes, runs on CPU
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from cmgl_dist.bench.harness import Timing, measure, record_results
from cmgl_dist.losses import local_similarity, local_similarity_compiled, local_similarity_reference

log = logging.getLogger("bench_local_similarity")
PROVIDERS = ("triton", "compiled", "auto", "reference", "loop", "compile_vectorised", "compile_gram")
MODES = ("fwd", "bwd", "fwdbwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Nominal matrix work per (text, image) pair in units of mean_words x R x D: the forward's two
# products (scores, context) at 2 flops each, the backward twice that: 3 x 4 x W R D in all.
FLOPS_PER_WRD = {"fwd": 4, "bwd": 8, "fwdbwd": 12}
EPS = 1e-8


def loop_similarity(words, word_mask, regions, gamma1, gamma2):
    """GLoRIA's local_loss: for each text, its real words against every image at once."""
    rows = []
    for t in range(words.shape[0]):
        x = words[t][word_mask[t]]                                        # [w, D]
        attn = torch.softmax(torch.einsum("ird,wd->irw", regions, x), dim=-1)
        attn = torch.softmax(gamma1 * attn.transpose(1, 2), dim=-1)       # [I, w, R]
        context = attn @ regions                                          # [I, w, D]
        cos = (x * context).sum(-1) / (x.norm(dim=-1) * context.norm(dim=-1)).clamp(min=EPS)
        rows.append(torch.logsumexp(gamma2 * cos, dim=1))
    return torch.stack(rows)


def _attention(words, word_mask, regions, gamma1):
    scores = torch.einsum("twd,ird->tiwr", words, regions)
    over_words = scores.masked_fill(~word_mask[:, None, :, None], float("-inf")).softmax(dim=2)
    return scores, (gamma1 * over_words).softmax(dim=3)


def _aggregate(cos, word_mask, gamma2):
    return (gamma2 * cos).masked_fill(~word_mask[:, None, :], float("-inf")).logsumexp(dim=2)


def vectorised_similarity(words, word_mask, regions, gamma1, gamma2):
    _, b = _attention(words, word_mask, regions, gamma1)
    context = torch.einsum("tiwr,ird->tiwd", b, regions)
    dot = torch.einsum("twd,tiwd->tiw", words, context)
    cos = dot / (words.norm(dim=-1)[:, None] * context.norm(dim=-1)).clamp(min=EPS)
    return _aggregate(cos, word_mask, gamma2)


def gram_similarity(words, word_mask, regions, gamma1, gamma2):
    """x.ctx = sum_r b s and |ctx|^2 = b G b^T with G the regions' Gram matrix per image."""
    s, b = _attention(words, word_mask, regions, gamma1)
    gram = regions @ regions.transpose(1, 2)                             # [I, R, R]
    dot = (b * s).sum(-1)
    ctx2 = torch.einsum("tiwr,irk,tiwk->tiw", b, gram, b).clamp(min=0)
    cos = dot / (words.norm(dim=-1)[:, None] * ctx2.sqrt()).clamp(min=EPS)
    return _aggregate(cos, word_mask, gamma2)


def make_provider(name: str):
    if name == "triton":
        from cmgl_dist.kernels import local_similarity_triton
        return local_similarity_triton
    if name == "compiled":
        return local_similarity_compiled
    if name == "auto":
        return lambda words, word_mask, regions, gamma1, gamma2: local_similarity(
            words, word_mask, regions, gamma1, gamma2, backend="auto")
    if name == "reference":
        return local_similarity_reference
    if name == "loop":
        return loop_similarity
    if name == "compile_vectorised":
        return torch.compile(vectorised_similarity)
    if name == "compile_gram":
        return torch.compile(gram_similarity)
    raise ValueError(f"unknown provider {name!r}; pick from {PROVIDERS}")


def make_inputs(T, I, W, R, D, dtype, device, seed=0):
    """Ragged texts: word counts ~ N(0.42 W, 0.15 W) in [1, W], one text with all W words."""
    gen = torch.Generator().manual_seed(seed)
    counts = (torch.randn(T, generator=gen) * 0.15 * W + 0.42 * W).round().clamp(1, W).long()
    counts[0] = W
    word_mask = torch.arange(W)[None, :] < counts[:, None]
    words = torch.randn(T, W, D, generator=gen) / D ** 0.5
    regions = torch.randn(I, R, D, generator=gen) / D ** 0.5
    return (words.to(device, dtype).requires_grad_(True), word_mask.to(device),
            regions.to(device, dtype).requires_grad_(True), counts.float().mean().item())


def time_mode(fn, inputs, mode, reps, device) -> Timing:
    """p20/p50/p80 ms and peak extra memory of `mode`; for bwd the forward runs untimed before each call."""
    words, word_mask, regions = inputs

    def forward(with_grad: bool):
        words.grad = regions.grad = None
        with torch.set_grad_enabled(with_grad):
            return fn(words, word_mask, regions, 4.0, 5.0)

    grad = torch.randn_like(forward(False))
    if mode == "fwd":
        return measure(lambda: forward(False), device=device, reps=reps)
    if mode == "fwdbwd":
        return measure(lambda: forward(True).backward(grad), device=device, reps=reps)
    return measure(lambda S: S.backward(grad), setup=lambda: forward(True), device=device, reps=reps)


def run_case(provider, fn, T, I, args, dtype_name, device, csv_path):
    """Time every mode of one (provider, shape, dtype); each case's rows are recorded as it
    finishes, replacing that case's earlier rows on this machine."""
    words, word_mask, regions, mean_words = make_inputs(
        T, I, args.words, args.regions, args.dim, DTYPES[dtype_name], device)
    shape = dict(T=T, I=I, W=args.words, mean_words=round(mean_words, 1), R=args.regions,
                 D=args.dim, dtype=dtype_name, provider=provider)
    for mode in args.modes:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        status, timing = "ok", Timing(float("nan"), float("nan"), float("nan"))
        try:
            timing = time_mode(fn, (words, word_mask, regions), mode, args.reps, device)
        except torch.cuda.OutOfMemoryError:
            status = "oom"
            words.grad = regions.grad = None
        log.info("%-18s %-6s T=%-4d I=%-4d %s  p50 %8.2f ms  peak %8.1f MB  %s",
                 provider, mode, T, I, dtype_name, timing.p50_ms, timing.peak_mb, status)
        flops = FLOPS_PER_WRD[mode] * mean_words * args.regions * args.dim * T * I
        record_results(csv_path, "local_similarity", {**shape, "mode": mode, "status": status},
                       {**timing.metrics(), "nominal_tflops": flops / (timing.p50_ms * 1e9)})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes: T = I in 4, 8 and 4 x 16; W 9, R 49, D 64; 5 reps")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batches", nargs="+", type=int, help="T = I (default 48 128 256 512)")
    parser.add_argument("--local-global", nargs=2, type=int, metavar=("T", "I"),
                        help="the distributed shape: local texts x gathered images "
                             "(default 128 1024; 0 0 to skip)")
    parser.add_argument("--words", type=int, default=97)
    parser.add_argument("--regions", type=int, default=361)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--max-pairs", nargs="+", default=["loop=16384", "reference=65536",
                        "compile_vectorised=16384", "compile_gram=65536"], metavar="PROVIDER=PAIRS",
                        help="skip a provider above this many T x I pairs (their time grows with it)")
    parser.add_argument("--csv", default=str(Path(__file__).parent / "results" / "local_similarity.csv"))
    args = parser.parse_args(argv)
    quick = dict(batches=[4, 8], local_global=[4, 16], reps=5)
    full = dict(batches=[48, 128, 256, 512], local_global=[128, 1024], reps=10)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        args.words, args.regions, args.dim = 9, 49, 64
    return args


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    max_pairs = {k: int(v) for k, v in (item.split("=") for item in args.max_pairs)}
    shapes = [(b, b) for b in args.batches]
    if args.local_global[0] > 0:
        shapes.append(tuple(args.local_global))
    cases, skipped = 0, 0
    for provider in args.providers:
        if provider == "triton" and device.type != "cuda":
            log.warning("skip triton: no CUDA device (interpreter timings mean nothing)")
            skipped += len(shapes) * len(args.dtypes)
            continue
        fn = make_provider(provider)
        for dtype_name in args.dtypes:
            for T, I in shapes:
                if T * I > max_pairs.get(provider, T * I):
                    log.warning("skip %s at T=%d I=%d: over --max-pairs", provider, T, I)
                    skipped += 1
                    continue
                run_case(provider, fn, T, I, args, dtype_name, device, args.csv)
                cases += 1
    log.info("%d cases recorded in %s, %d cases skipped", cases, args.csv, skipped)


if __name__ == "__main__":
    main()
