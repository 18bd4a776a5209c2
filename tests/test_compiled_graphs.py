"""The `compiled` backend compiles one graph per word bucket and direction, however the word
count varies, and never falls back to eager after dynamo's recompile limit."""
import torch

from cmgl_dist.kernels.inputs import word_bucket
from cmgl_dist.losses import local_similarity_compiled

BATCHES = 30
MAX_WORDS = 80  # 5 word buckets of 16


def _batch(n_words, seed):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(4, n_words, 8, generator=g).requires_grad_()
    lengths = torch.randint(1, n_words + 1, (4,), generator=g)
    lengths[0] = n_words
    regions = torch.randn(3, 5, 8, generator=g).requires_grad_()
    return words, torch.arange(n_words)[None, :] < lengths[:, None], regions


def test_one_graph_per_bucket_and_direction_and_no_fallback():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    word_counts = torch.randint(1, MAX_WORDS + 1, (BATCHES,), generator=torch.Generator().manual_seed(0)).tolist()
    # every bucket at least once, its first word count and later ones different
    word_counts[:5] = [1, 17, 33, 49, 80]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # a fallback raises
        for seed, n_words in enumerate(word_counts):
            words, word_mask, regions = _batch(n_words, seed)
            local_similarity_compiled(words, word_mask, regions).sum().backward()
            assert torch.isfinite(words.grad).all() and torch.isfinite(regions.grad).all()
    buckets = {word_bucket(n) for n in word_counts}
    assert len(buckets) == 5
    assert counters["stats"]["unique_graphs"] == 2 * len(buckets), dict(counters["stats"])
