"""The fused kernel at the GLoRIA recipe's shape: R 361 regions (19 x 19) and D 768 features,
so every region sweep crosses tiles and the D loop runs 12 times at the pinned 64 x 64 config.
Word counts 1..112 with holes; every buffer the kernels write starts as NaN (`POISON`); fp32 at
the gamma limits and bf16 against the float64 GLoRIA transcription (tests/gloria_oracle.py). On CUDA: T 6, I 5, and two runs must
agree bit for bit (the race test of the per-program scratch). In the interpreter: T 3, I 1 (the
texts with 1 and 112 words), one run per dtype (fp32 ~20 s, bf16 ~30 s on a loaded 2-core CPU).
Also: no images (I = 0), fp16 gradients that would underflow in fp16, the device guard."""
import pytest
import torch
from gloria_oracle import local_similarities_with_grads
from helpers import DEVICE, assert_close

from cmgl_dist.kernels import local_similarity as kernel_module
from cmgl_dist.kernels import local_similarity_triton
from cmgl_dist.kernels.inputs import KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2

CUDA = torch.cuda.is_available()
R, D, W = 361, 768, 112
COUNTS = [1, 112, 45, 77, 17, 64] if CUDA else [1, 112]
IMAGES = 5 if CUDA else 1
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def _inputs(counts, images, dtype, seed=0, n_regions=R, dim=D, n_slots=W):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(len(counts), n_slots, dim, generator=g) / dim ** 0.25
    regions = torch.randn(images, n_regions, dim, generator=g) / dim ** 0.25
    mask = torch.arange(n_slots)[None, :] < torch.tensor(counts)[:, None]
    mask = torch.stack([row[torch.randperm(n_slots, generator=g)] for row in mask])  # holes
    grad = torch.randn(len(counts), images, generator=g)
    return words.to(DEVICE, dtype), mask.to(DEVICE), regions.to(DEVICE, dtype), grad.to(DEVICE)


def _kernel(words, mask, regions, grad, gammas):
    words, regions = words.detach().requires_grad_(), regions.detach().requires_grad_()
    S = local_similarity_triton(words, mask, regions, *gammas)
    S.backward(grad)
    return S.detach(), words.grad, regions.grad


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setattr(kernel_module, "POISON", True)


@pytest.mark.parametrize("dtype,gammas", [(torch.float32, (KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2)),
                                          (torch.bfloat16, (4.0, 5.0))], ids=["fp32-gamma-limits", "bf16"])
def test_recipe_shape_against_float64(dtype, gammas, poisoned):
    words, mask, regions, grad = _inputs(COUNTS, IMAGES, dtype)
    got = _kernel(words, mask, regions, grad, gammas)
    wanted = local_similarities_with_grads(words, mask, regions, grad, *gammas)
    for name, g, w in zip(("S", "dL/dwords", "dL/dregions"), got, wanted):
        assert_close(g, w, TOLERANCE[dtype], f"{dtype} {name}")
    if CUDA:  # a second run, bit for bit: no race on the scratch, no order-dependent sum
        again = _kernel(words, mask, regions, grad, gammas)
        assert all(torch.equal(a, b) for a, b in zip(got, again)), "two runs differ"


def test_no_images_gives_an_empty_similarity(poisoned):
    words, mask, regions, _ = _inputs([3, 1], 0, torch.float32, n_regions=7, dim=16, n_slots=5)
    S, grad_words, grad_regions = _kernel(words, mask, regions, torch.zeros(2, 0, device=DEVICE), (4.0, 5.0))
    assert S.shape == (2, 0) and grad_regions.shape == (0, 7, 16)
    assert torch.equal(grad_words, torch.zeros_like(grad_words))


def test_fp16_gradients_do_not_underflow(poisoned):
    """dL/dS of 1e-4 (a loss averaged over a large batch) with 361 regions makes P = dL/ds fall
    below fp16's range (6e-8) on most regions: cast to fp16 before the products, the gradients
    came out 2e-2 off (measured); with fp32 operands 5e-3 (the fp16 rounding of the outputs)."""
    words, mask, regions, grad = _inputs([5, 3], 2, torch.float16, dim=32, n_slots=5)
    grad = grad * 1e-4
    got = _kernel(words, mask, regions, grad, (4.0, 5.0))
    wanted = local_similarities_with_grads(words, mask, regions, grad, 4.0, 5.0)
    for name, g, w in zip(("S", "dL/dwords", "dL/dregions"), got, wanted):
        assert_close(g, w, 1e-2, f"fp16 {name}")


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_launches_follow_the_tensors_device():
    words, mask, regions, grad = (t.to("cuda:1") for t in _inputs([5, 3], 2, torch.bfloat16, n_regions=70,
                                                                 dim=64, n_slots=5))
    with torch.cuda.device(0):
        got = _kernel(words, mask, regions, grad, (4.0, 5.0))
    wanted = local_similarities_with_grads(words, mask, regions, grad, 4.0, 5.0)
    for name, g, w in zip(("S", "dL/dwords", "dL/dregions"), got, wanted):
        assert_close(g, w, TOLERANCE[torch.bfloat16], f"cuda:1 {name}")
