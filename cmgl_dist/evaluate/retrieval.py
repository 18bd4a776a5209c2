"""Image <-> report retrieval on the test split: recall@1/5/10 both ways.

Each test image's own report is the one correct answer among all test reports (and the other
way round), ranked by the same global + local similarity zero-shot uses.
"""
from __future__ import annotations

from cmgl_dist.evaluate.features import SplitFeatures
from cmgl_dist.evaluate.metrics import recall_at_k
from cmgl_dist.evaluate.similarity import image_text_similarity

KS = (1, 5, 10)


def retrieval_recalls(feats: SplitFeatures, *, gamma1: float, gamma2: float) -> dict:
    """{"image_to_text": {"R@1": ...}, "text_to_image": {...}, "n_test": N}."""
    sim = image_text_similarity(feats.image_global, feats.regions, feats.sentence, feats.words,
                                feats.word_mask, gamma1=gamma1, gamma2=gamma2).cpu().numpy()
    return {"image_to_text": recall_at_k(sim, KS), "text_to_image": recall_at_k(sim.T, KS),
            "n_test": int(sim.shape[0])}
