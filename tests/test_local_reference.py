"""The chunked local-similarity reference against a line-by-line transcription of GLoRIA's loop."""
import pytest
import torch
import torch.nn as nn

from cmgl_dist.losses import local_similarity_reference


def _gloria_cosine(x1, x2, dim=1, eps=1e-8):
    w12 = torch.sum(x1 * x2, dim)
    w1 = torch.norm(x1, 2, dim)
    w2 = torch.norm(x2, 2, dim)
    return (w12 / (w1 * w2).clamp(min=eps)).squeeze()


def _gloria_attention(query, context, temp1):
    """GLoRIA's attention_fn; context is [I, D, R] here (GLoRIA's is [I, D, ih, iw], flattened the same)."""
    batch_size, query_len, source_len = query.size(0), query.size(2), context.size(2)
    context_t = torch.transpose(context, 1, 2).contiguous()
    attn = torch.bmm(context_t, query).view(batch_size * source_len, query_len)
    attn = nn.Softmax(dim=-1)(attn).view(batch_size, source_len, query_len)
    attn = torch.transpose(attn, 1, 2).contiguous().view(batch_size * query_len, source_len)
    attn = nn.Softmax(dim=-1)(attn * temp1).view(batch_size, query_len, source_len)
    return torch.bmm(context, torch.transpose(attn, 1, 2).contiguous())


def gloria_similarities(words, lengths, regions, gamma1, gamma2):
    """GLoRIA's `local_loss` loop up to the similarities, as S [T, I] (words [T, W, D], regions [I, R, D])."""
    n_images = regions.shape[0]
    words_emb = words.transpose(1, 2)  # GLoRIA's [T, D, W]
    img_features = regions.transpose(1, 2)  # [I, D, R]
    columns = []
    for t in range(words_emb.shape[0]):
        words_num = lengths[t]
        word = words_emb[t, :, :words_num].unsqueeze(0).contiguous().repeat(n_images, 1, 1)
        wei_context = _gloria_attention(word, img_features, gamma1)
        word = word.transpose(1, 2).contiguous().view(n_images * words_num, -1)
        wei_context = wei_context.transpose(1, 2).contiguous().view(n_images * words_num, -1)
        row_sim = _gloria_cosine(word, wei_context).view(n_images, words_num)
        row_sim = row_sim.mul(gamma2).exp().sum(dim=1, keepdim=True).log()
        columns.append(row_sim)
    return torch.cat(columns, 1).t()


def _ragged_batch(n_texts, n_images, n_words, n_regions, dim, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_words + 1, (n_texts,), generator=g)
    lengths[0] = n_words
    lengths[-1] = 1
    word_mask = torch.arange(n_words)[None, :] < lengths[:, None]
    words = scale * torch.randn(n_texts, n_words, dim, generator=g, dtype=torch.float64)
    regions = scale * torch.randn(n_images, n_regions, dim, generator=g, dtype=torch.float64)
    return words, word_mask, regions, lengths.tolist()


def _relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("block_elements", [1, 600, 1 << 26], ids=["pair-per-block", "ragged-blocks", "one-block"])
@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_reference_matches_gloria_loop_float64(block_elements, scale):
    words, word_mask, regions, lengths = _ragged_batch(5, 4, 7, 9, 6, seed=11, scale=scale)
    gamma1, gamma2 = 4.0, 5.0
    upstream = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    leaves = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    expected = gloria_similarities(leaves[0], lengths, leaves[1], gamma1, gamma2)
    expected_grads = torch.autograd.grad(expected, leaves, upstream)

    leaves = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    actual = local_similarity_reference(leaves[0], word_mask, leaves[1], gamma1, gamma2, block_elements=block_elements)
    actual_grads = torch.autograd.grad(actual, leaves, upstream)

    assert actual.dtype == torch.float64 and actual.shape == (5, 4)
    assert _relative_error(actual, expected) < 1e-10
    for got, want in zip(actual_grads, expected_grads):
        assert _relative_error(got, want) < 1e-10


def test_padded_words_change_nothing():
    words, word_mask, regions, _ = _ragged_batch(4, 3, 6, 5, 8, seed=2)
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
    words, word_mask, regions, _ = _ragged_batch(3, 4, 5, 6, 8, seed=5)
    both = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    joint = torch.autograd.grad(local_similarity_reference(both[0], word_mask, both[1], block_elements=1).sum(), both)

    only_words = words.clone().requires_grad_()
    local_similarity_reference(only_words, word_mask, regions, block_elements=1).sum().backward()
    only_regions = regions.clone().requires_grad_()
    local_similarity_reference(words, word_mask, only_regions, block_elements=1).sum().backward()

    torch.testing.assert_close(only_words.grad, joint[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(only_regions.grad, joint[1], rtol=1e-12, atol=0)


def test_half_precision_is_computed_in_float32():
    words, word_mask, regions, _ = _ragged_batch(3, 4, 5, 6, 8, seed=6)
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
    words, word_mask, regions, _ = _ragged_batch(2, 2, 3, 4, 5, seed=0)
    with pytest.raises(ValueError, match=message):
        local_similarity_reference(*mutate(words, word_mask, regions))
