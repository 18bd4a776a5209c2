"""Every local-similarity backend against the float64 GLoRIA loop (values and gradients, ragged
masks, T != I, fp32 and bf16); `auto`'s choice (never the interpreter on CPU, timed once per
shape bucket, wrong candidates dropped); bf16 model outputs through CMGLLoss; no recompile when
W changes within a bucket. CUDA when present, else the CPU (Triton under the interpreter)."""
import pytest
import torch
from gloria_oracle import local_similarities_with_grads
from helpers import DEVICE, assert_close, make_inputs, random_model_outputs

from cmgl_dist.config import LossConfig
from cmgl_dist.losses import (CMGLLoss, chosen_backends, local_similarity, local_similarity_reference,
                              resolve_backend)
from cmgl_dist.losses.backend_choice import choose_backend
from cmgl_dist.losses.similarity import RUN

# T != I, a one-word text and a full one; W = 11 spans a 16-word interpreter tile partly.
SHAPE = (3, 4, 11, 13, 32, [1, 11, 6])
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
# The compiled form's bf16 products return bf16 scores (a matmul's output dtype), the kernel keeps
# its fp32 accumulators: its gradients carry that extra rounding (4e-2 seen here).
COMPILED_BF16_TOLERANCE = 6e-2
# The kernel's fp32 gradients sum per-tile partials in float32 in another order than the float64
# loop: up to ~1.1e-4 of max |wanted| on the fixed case below.
TRITON_FP32_GRAD_TOLERANCE = 2e-4


# gamma2 < 0: the denied words' group of loss.denied_words=absent (`cmgl_loss.absence_score`).
@pytest.mark.parametrize("gamma2", [5.0, -5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["reference", "compiled", "triton"])
def test_backend_matches_float64_gloria_loop(backend, dtype, gamma2):
    T, I, W, R, D, counts = SHAPE
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, dtype, holes=True, seed=7)
    grad = torch.randn(T, I, generator=torch.Generator().manual_seed(11)).to(DEVICE)  # seeded: a fixed case
    w, r = words.detach().requires_grad_(True), regions.detach().requires_grad_(True)
    S = local_similarity(w, word_mask, r, 4.0, gamma2, backend=backend)
    S.backward(grad)
    S_ref, g_words_ref, g_regions_ref = local_similarities_with_grads(words, word_mask, regions, grad, 4.0, gamma2)
    tol = {("compiled", torch.bfloat16): COMPILED_BF16_TOLERANCE,
           ("triton", torch.float32): TRITON_FP32_GRAD_TOLERANCE}.get((backend, dtype), TOLERANCE[dtype])
    assert S.dtype == torch.float32 and w.grad.dtype == dtype and r.grad.dtype == dtype
    assert_close(S, S_ref, TOLERANCE[dtype], f"{backend} S")
    assert_close(w.grad, g_words_ref, tol, f"{backend} dL/dwords")
    assert_close(r.grad, g_regions_ref, tol, f"{backend} dL/dregions")
    assert (w.grad[~word_mask] == 0).all()


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU choice")
def test_auto_on_cpu_is_the_reference_never_the_interpreter():
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "reference"
    words, word_mask, regions = make_inputs(*SHAPE[:5], SHAPE[5], torch.float32)
    before = chosen_backends()
    torch.testing.assert_close(local_similarity(words, word_mask, regions, backend="auto"),
                               local_similarity_reference(words, word_mask, regions), rtol=0, atol=0)
    assert chosen_backends() == before, "auto timed candidates on CPU"


def test_choice_is_timed_once_per_bucket_and_drops_wrong_and_failing_candidates():
    calls = {"reference": 0, "triton": 0, "wrong": 0}

    def counted(name, fn):
        def run(*args):
            calls[name] += 1
            return fn(*args)
        return run

    def wrong(words, word_mask, regions, gamma1, gamma2):  # a backend with a bug: gamma2 ignored
        return RUN["reference"](words, word_mask, regions, gamma1, 1.0)

    def broken(*args):  # a backend that cannot run here (a compiler error, out of memory)
        raise ValueError("no kernel image for this device")

    candidates = {"broken": broken, "wrong": counted("wrong", wrong), "triton": counted("triton", RUN["triton"]),
                  "reference": counted("reference", RUN["reference"])}
    T, I, W, R, D, counts = SHAPE
    words, word_mask, regions = make_inputs(T, I, W, R, D, [c + 7 for c in counts][:1] + counts[1:],
                                            torch.float32, seed=8)
    words.requires_grad_(True)
    first = choose_backend(candidates, "reference", words, word_mask, regions, (4.0, 5.0))
    assert first in ("triton", "reference")
    assert calls == {"reference": 2, "triton": 2, "wrong": 2}  # warm-up + timed, each
    shorter = words[:, :W - 2].detach().requires_grad_(True)  # W 11 -> 9: the same bucket of 16
    again = choose_backend(candidates, "reference", shorter, word_mask[:, :W - 2], regions, (4.0, 5.0))
    assert again == first and calls == {"reference": 2, "triton": 2, "wrong": 2}
    key = [k for k, v in chosen_backends().items() if k[2:7] == (T, I, 16, R, D)]
    assert len(key) == 1 and key[0][-1] is True


@pytest.mark.parametrize("backend", ["reference", "compiled", "triton"])
def test_bf16_model_outputs_give_the_fp32_loss(backend):
    """The model's bf16 outputs go to the loss as they are: the loss is fp32 and equals the loss
    of the same outputs in fp32 within bf16 tolerance."""
    out32 = {k: v.float().to(DEVICE) if v.is_floating_point() else v.to(DEVICE)
             for k, v in random_model_outputs(batch=4, n_words=7, n_regions=9, dim=32, seed=3).items()}
    out16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in out32.items()}
    loss_fn = CMGLLoss(LossConfig(local_backend=backend, gather_negatives=False))
    parts32, parts16 = loss_fn(out32), loss_fn(out16)
    for name in ("loss_global", "loss_local"):
        assert parts16[name].dtype == torch.float32
        assert abs(parts16[name].item() - parts32[name].item()) <= 2e-2 * max(1.0, abs(parts32[name].item()))


def test_compiled_backend_does_not_recompile_within_a_word_bucket():
    from torch._dynamo.utils import counters

    T, I, W, R, D, counts = SHAPE
    words, word_mask, regions = make_inputs(T, I, 16, R, D, counts, torch.float32, seed=9)
    local_similarity(words, word_mask, regions, backend="compiled")
    graphs = counters["stats"]["unique_graphs"]
    for n_slots in (W, W - 2, 13):  # all in the bucket of 16
        local_similarity(words[:, :n_slots], word_mask[:, :n_slots], regions, backend="compiled")
    assert counters["stats"]["unique_graphs"] == graphs, "W within one bucket compiled a new graph"
    wider = torch.nn.functional.pad(words, (0, 0, 0, 1))
    local_similarity(wider, torch.nn.functional.pad(word_mask, (0, 1)), regions, backend="compiled")
    assert counters["stats"]["unique_graphs"] > graphs, "the next bucket (32) should compile its own graph"


def _launch_key(W):
    from cmgl_dist.kernels import local_similarity as ls

    words, word_mask, regions = make_inputs(3, 2, W, 13, 32, [1, W, 5], torch.bfloat16)
    *_, sizes, strides, meta = ls._launch_args(words, word_mask, regions)
    # what the autotune key (W, R, D) and Triton's specialisation (ints divisible by 16) see
    return sizes, tuple(arg % 16 == 0 for arg in strides), tuple(sorted(meta.items()))


def test_kernel_sees_the_word_bucket_not_w():
    assert _launch_key(9) == _launch_key(11) == _launch_key(16) != _launch_key(17)


@pytest.mark.skipif(DEVICE != "cuda", reason="counts compiled GPU kernels")
def test_kernel_does_not_recompile_or_retune_within_a_word_bucket():
    from cmgl_dist.kernels import local_similarity as ls

    kernels = (ls._forward_kernel, ls._backward_words_kernel, ls._backward_regions_kernel)

    def compiled():
        return [(len(k.cache), sum(len(c[0]) for c in k.fn.device_caches.values())) for k in kernels]

    def run(W):
        words, word_mask, regions = make_inputs(4, 3, W, 49, 64, [W, 3, 20, 1], torch.bfloat16)
        words.requires_grad_(True)
        ls.local_similarity_triton(words, word_mask, regions).sum().backward()

    run(97)
    before = compiled()
    for W in (98, 100, 112):
        run(W)
    assert compiled() == before
