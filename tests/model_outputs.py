"""Random model outputs in the shape `CMGLModel.forward` returns, for loss tests."""
import torch


def random_model_outputs(batch=5, n_words=6, n_regions=4, dim=8, seed=0, dtype=torch.float64):
    """img_global, regions, sentence, words and a ragged word_mask (every text has >= 1 word)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_words + 1, (batch,), generator=g)
    return {
        "img_global": torch.randn(batch, dim, generator=g, dtype=dtype),
        "regions": torch.randn(batch, n_regions, dim, generator=g, dtype=dtype),
        "sentence": torch.randn(batch, dim, generator=g, dtype=dtype),
        "words": torch.randn(batch, n_words, dim, generator=g, dtype=dtype),
        "word_mask": torch.arange(n_words)[None, :] < lengths[:, None],
    }
