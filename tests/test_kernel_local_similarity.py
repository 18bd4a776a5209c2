"""The fused local-similarity kernel against the float64 transcription of GLoRIA's loop (gloria_oracle)
and against `local_similarity_reference`: outputs and gradients, ragged and holed masks,
T != I, fp32/bf16/fp16. Runs on CUDA when present, else in Triton's interpreter (tiny shapes)."""
import pytest
import torch
from gloria_oracle import local_similarities_with_grads

from cmgl_dist.kernels import local_attention_maps, local_similarity_triton
from cmgl_dist.kernels.inputs import KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2
from cmgl_dist.losses import local_similarity_reference
from helpers import DEVICE, assert_close, make_inputs

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# (T, I, W, R, D, word counts per text); a text with 1 word and one with all W words in each.
# Word blocks are 16 words: W = 20 spans two. (Cross-tile region and feature sweeps at the pinned
# 64 x 64 tiles: test_kernel_recipe_shape.py.)
SHAPES = [
    (3, 2, 9, 13, 40, [1, 9, 5]),
    (2, 4, 5, 49, 16, [5, 1]),
    (3, 1, 20, 7, 16, [20, 1, 17]),
]


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Every buffer the kernels write starts as NaN, whatever its size (CMGL_KERNEL_POISON)."""
    from cmgl_dist.kernels import local_similarity as kernel_module

    monkeypatch.setattr(kernel_module, "POISON", True)


def poison_allocator():
    """Fill freed memory with NaN so an output the kernel fails to write shows up."""
    junk = torch.full((1 << 22,), float("nan"), device=DEVICE)
    del junk


def run_kernel(words, word_mask, regions, grad, gamma1, gamma2):
    words = words.detach().requires_grad_(True)
    regions = regions.detach().requires_grad_(True)
    poison_allocator()
    S = local_similarity_triton(words, word_mask, regions, gamma1, gamma2)
    poison_allocator()
    S.backward(grad)
    return S.detach(), words.grad, regions.grad


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_fp32_output_and_gradients_match_float64_transcription(shape):
    T, I, W, R, D, counts = shape
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, torch.float32)
    grad = torch.randn(T, I, device=DEVICE)
    S, g_words, g_regions = run_kernel(words, word_mask, regions, grad, 4.0, 5.0)
    S_ref, g_words_ref, g_regions_ref = local_similarities_with_grads(words, word_mask, regions, grad, 4.0, 5.0)
    assert S.dtype == torch.float32 and S.shape == (T, I)
    assert_close(S, S_ref, TOLERANCE[torch.float32], "S")
    assert_close(g_words, g_words_ref, TOLERANCE[torch.float32], "dL/dwords")
    assert_close(g_regions, g_regions_ref, TOLERANCE[torch.float32], "dL/dregions")
    assert (g_words[~word_mask] == 0).all(), "padded words received gradient"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_within_tolerance(dtype):
    T, I, W, R, D, counts = SHAPES[0]
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, dtype, seed=1)
    grad = torch.randn(T, I, device=DEVICE)
    S, g_words, g_regions = run_kernel(words, word_mask, regions, grad, 4.0, 5.0)
    S_ref, g_words_ref, g_regions_ref = local_similarities_with_grads(words, word_mask, regions, grad, 4.0, 5.0)
    assert g_words.dtype == dtype and g_regions.dtype == dtype
    assert_close(S, S_ref, TOLERANCE[dtype], "S")
    assert_close(g_words, g_words_ref, TOLERANCE[dtype], "dL/dwords")
    assert_close(g_regions, g_regions_ref, TOLERANCE[dtype], "dL/dregions")


def test_gammas_at_the_kernels_limits_match_float64_transcription():
    """The kernel's softmaxes take fixed offsets (gamma1 a in [0, gamma1], gamma2 cos in
    [-gamma2, gamma2]) instead of running maxima: finite and as exact as at GLoRIA's gammas up
    to KERNEL_MAX_GAMMA1/2, where a rounding of S or of the column log-sum-exp is amplified most."""
    T, I, W, R, D, counts = SHAPES[1]
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, torch.float32, seed=5)
    grad = torch.randn(T, I, device=DEVICE)
    gammas = (KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2)
    S, g_words, g_regions = run_kernel(words, word_mask, regions, grad, *gammas)
    S_ref, g_words_ref, g_regions_ref = local_similarities_with_grads(words, word_mask, regions, grad, *gammas)
    assert_close(S, S_ref, TOLERANCE[torch.float32], "S")
    assert_close(g_words, g_words_ref, TOLERANCE[torch.float32], "dL/dwords")
    assert_close(g_regions, g_regions_ref, TOLERANCE[torch.float32], "dL/dregions")
    with pytest.raises(ValueError, match="gamma1"):
        local_similarity_triton(words, word_mask, regions, KERNEL_MAX_GAMMA1 + 1, 5.0)
    with pytest.raises(ValueError, match="gamma2"):
        local_similarity_triton(words, word_mask, regions, 4.0, -KERNEL_MAX_GAMMA2 - 1)


def test_one_forward_program_scoring_every_text_of_its_image(monkeypatch):
    """Forward programs reuse their scratch across texts (FORWARD_PROGRAMS caps them); here one
    program per image walks all texts, over several word blocks (two of the region owner's) and
    three region tiles."""
    from cmgl_dist.kernels import local_similarity as ls

    monkeypatch.setattr(ls, "FORWARD_PROGRAMS", 1)
    W = ls.REGION_OWNER_BLOCK_W + 6
    words, word_mask, regions = make_inputs(3, 2, W, 37, 16, [W, 1, W - 3], torch.float32, holes=True, seed=6)
    grad = torch.randn(3, 2, device=DEVICE)
    S, g_words, g_regions = run_kernel(words, word_mask, regions, grad, 4.0, 5.0)
    S_ref, g_words_ref, g_regions_ref = local_similarities_with_grads(words, word_mask, regions, grad, 4.0, 5.0)
    assert_close(S, S_ref, TOLERANCE[torch.float32], "S")
    assert_close(g_words, g_words_ref, TOLERANCE[torch.float32], "dL/dwords")
    assert_close(g_regions, g_regions_ref, TOLERANCE[torch.float32], "dL/dregions")


def test_padded_words_change_nothing_and_holes_are_masked():
    T, I, W, R, D, counts = SHAPES[1]
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, torch.float32, holes=True, seed=2)
    grad = torch.randn(T, I, device=DEVICE)
    S, g_words, g_regions = run_kernel(words, word_mask, regions, grad, 3.0, 7.0)
    scrambled = words.clone()
    scrambled[~word_mask] = 1e3 * torch.randn(int((~word_mask).sum()), D, device=DEVICE)
    S2, g_words2, g_regions2 = run_kernel(scrambled, word_mask, regions, grad, 3.0, 7.0)
    torch.testing.assert_close(S2, S, rtol=0, atol=0)
    torch.testing.assert_close(g_regions2, g_regions, rtol=0, atol=0)
    assert (g_words[~word_mask] == 0).all() and (g_words2[~word_mask] == 0).all()
    S_ref, g_words_ref, _ = local_similarities_with_grads(words, word_mask, regions, grad, 3.0, 7.0)
    assert_close(S, S_ref, TOLERANCE[torch.float32], "S with holes")
    assert_close(g_words, g_words_ref, TOLERANCE[torch.float32], "dL/dwords with holes")


def test_matches_chunked_reference():
    T, I, W, R, D, counts = SHAPES[0]
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, torch.float32, seed=3)
    grad = torch.randn(T, I, device=DEVICE)
    S, g_words, g_regions = run_kernel(words, word_mask, regions, grad, 4.0, 5.0)
    w_ref = words.detach().clone().requires_grad_(True)
    r_ref = regions.detach().clone().requires_grad_(True)
    S_ref = local_similarity_reference(w_ref, word_mask, r_ref, 4.0, 5.0)
    S_ref.backward(grad)
    assert S_ref.dtype == S.dtype
    assert_close(S, S_ref.detach().double().cpu(), TOLERANCE[torch.float32], "S vs reference")
    assert_close(g_words, w_ref.grad.double().cpu(), TOLERANCE[torch.float32], "dL/dwords vs reference")
    assert_close(g_regions, r_ref.grad.double().cpu(), TOLERANCE[torch.float32], "dL/dregions vs reference")


def test_attention_maps_reproduce_the_kernel_similarity():
    T, I, W, R, D, counts = SHAPES[0]
    words, word_mask, regions = make_inputs(T, I, W, R, D, counts, torch.float32, seed=4)
    pairs = torch.tensor([[0, 1], [1, 0], [2, 1]], device=DEVICE)
    maps = local_attention_maps(words, word_mask, regions, pairs, gamma1=4.0)
    assert maps.shape == (3, W, R)
    S = local_similarity_triton(words, word_mask, regions, 4.0, 5.0)
    for p, (t, i) in enumerate(pairs.tolist()):
        real = word_mask[t]
        assert (maps[p][~real] == 0).all()
        torch.testing.assert_close(maps[p][real].sum(-1), torch.ones(int(real.sum()), device=DEVICE))
        x = words[t][real].double()
        context = maps[p][real].double() @ regions[i].double()
        cos = (x * context).sum(-1) / (x.norm(dim=-1) * context.norm(dim=-1)).clamp(min=1e-8)
        from_maps = torch.logsumexp(5.0 * cos, dim=0)
        assert abs(from_maps.item() - S[t, i].item()) <= 1e-4 * max(1.0, abs(from_maps.item()))


def test_bad_inputs_raise():
    words, word_mask, regions = make_inputs(2, 2, 4, 7, 16, [4, 2], torch.float32)
    with pytest.raises(ValueError, match="no words"):
        local_similarity_triton(words, torch.zeros_like(word_mask), regions)
    with pytest.raises(TypeError, match="share"):
        local_similarity_triton(words, word_mask, regions.double())
    with pytest.raises(ValueError, match="feature sizes"):
        local_similarity_triton(words, word_mask, regions[..., :8])
    with pytest.raises(ValueError, match="pairs"):
        local_attention_maps(words, word_mask, regions, torch.zeros(3, dtype=torch.long))
