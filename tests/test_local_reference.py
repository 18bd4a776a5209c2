"""The chunked local-similarity reference against GLoRIA's training loop (tests/gloria_oracle.py)."""
import pytest
import torch
from gloria_oracle import local_similarities_with_grads, ragged_batch
from helpers import assert_close

from cmgl_dist.losses import local_similarity_reference


@pytest.mark.parametrize("block_elements", [1, 600, 1 << 26], ids=["pair-per-block", "ragged-blocks", "one-block"])
@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_reference_matches_gloria_loop_float64(block_elements, scale):
    words, word_mask, regions, _ = ragged_batch(5, 4, 7, 9, 6, seed=11, scale=scale)
    gamma1, gamma2 = 4.0, 5.0
    upstream = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected, *expected_grads = local_similarities_with_grads(words, word_mask, regions, upstream, gamma1, gamma2)

    leaves = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    actual = local_similarity_reference(leaves[0], word_mask, leaves[1], gamma1, gamma2, block_elements=block_elements)
    actual_grads = torch.autograd.grad(actual, leaves, upstream)

    assert actual.dtype == torch.float64 and actual.shape == (5, 4)
    assert_close(actual, expected, 1e-10, "S")
    for got, want, what in zip(actual_grads, expected_grads, ("dL/dwords", "dL/dregions")):
        assert_close(got, want, 1e-10, what)


def test_padded_words_change_nothing():
    words, word_mask, regions, _ = ragged_batch(4, 3, 6, 5, 8, seed=2)
    garbage = torch.randn(4, 3, 8, dtype=torch.float64) * 100
    padded_words = torch.cat([words, garbage], dim=1).requires_grad_()
    padded_mask = torch.cat([word_mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    plain_words = words.clone().requires_grad_()

    padded = local_similarity_reference(padded_words, padded_mask, regions)
    plain = local_similarity_reference(plain_words, word_mask, regions)
    padded.sum().backward()
    plain.sum().backward()

    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(padded_words.grad[:, :6], plain_words.grad, rtol=1e-12, atol=0)
    assert torch.count_nonzero(padded_words.grad[:, 6:]) == 0


def test_gradient_of_one_input_alone_equals_the_joint_gradient():
    words, word_mask, regions, _ = ragged_batch(3, 4, 5, 6, 8, seed=5)
    both = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    joint = torch.autograd.grad(local_similarity_reference(both[0], word_mask, both[1], block_elements=1).sum(), both)

    only_words = words.clone().requires_grad_()
    local_similarity_reference(only_words, word_mask, regions, block_elements=1).sum().backward()
    only_regions = regions.clone().requires_grad_()
    local_similarity_reference(words, word_mask, only_regions, block_elements=1).sum().backward()

    torch.testing.assert_close(only_words.grad, joint[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(only_regions.grad, joint[1], rtol=1e-12, atol=0)


def test_half_precision_is_computed_in_float32():
    words, word_mask, regions, _ = ragged_batch(3, 4, 5, 6, 8, seed=6)
    half_words = words.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        similarity = local_similarity_reference(half_words, word_mask, regions.bfloat16())
    similarity.sum().backward()

    assert similarity.dtype == torch.float32 and half_words.grad.dtype == torch.bfloat16
    exact = local_similarity_reference(half_words.detach().double(), word_mask, regions.bfloat16().double())
    torch.testing.assert_close(similarity.double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda w, m, r: (w, m.long(), r), "must be bool"),
    (lambda w, m, r: (w, m[:, :-1], r), "does not match"),
    (lambda w, m, r: (w, m, r[..., :-1]), "feature sizes differ"),
    (lambda w, m, r: (w, torch.zeros_like(m), r), "have no words"),
    (lambda w, m, r: (w[0], m, r), "expected words"),
])
def test_bad_inputs_raise(mutate, message):
    words, word_mask, regions, _ = ragged_batch(2, 2, 3, 4, 5, seed=0)
    with pytest.raises(ValueError, match=message):
        local_similarity_reference(*mutate(words, word_mask, regions))


def test_16_bit_inputs_give_fp32_similarities():
    """The products run in the inputs' dtype; S comes back in the fp32 it was accumulated in."""
    words, word_mask, regions, _ = ragged_batch(3, 2, 5, 4, 8, seed=5)
    for dtype in (torch.bfloat16, torch.float16):
        similarity = local_similarity_reference(words.to(dtype), word_mask, regions.to(dtype), 4.0, 5.0)
        assert similarity.dtype == torch.float32 and torch.isfinite(similarity).all()
