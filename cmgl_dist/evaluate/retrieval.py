"""Image <-> report retrieval on the test split: recall@1/5/10 both ways, and finding-aware precision.

Each test image's own report is the one correct answer among all test reports (and the other
way round), ranked by the same global + local similarity zero-shot uses. Finding-aware
precision@10 (image -> report) counts a retrieved report as right when its finding set (the five
pathologies + normal) equals the query image's, so reports as good as the image's own count too.
Every figure comes with the level a random ranking reaches.
"""
from __future__ import annotations

from cmgl_dist.evaluate.features import SplitFeatures
from cmgl_dist.evaluate.metrics import finding_set_precision, recall_at_k, recall_chance
from cmgl_dist.evaluate.similarity import image_text_similarity

KS = (1, 5, 10)
PRECISION_K = 10


def retrieval_recalls(feats: SplitFeatures, *, gamma1: float, gamma2: float, word_pooling: str = "logsumexp") -> dict:
    """{"image_to_text": {"R@1": ...}, "text_to_image": {...}, "chance": {...},
    "finding_precision": {"P@10": ..., "chance": ...}, "n_test": N}."""
    sim = image_text_similarity(feats.image_global, feats.regions, feats.sentence, feats.words,
                                feats.word_mask, gamma1=gamma1, gamma2=gamma2,
                                word_pooling=word_pooling).cpu().numpy()
    finding_sets = feats.labels.numpy() > 0.5  # five pathologies + normal
    precision, chance = finding_set_precision(sim, finding_sets, finding_sets, PRECISION_K)
    return {"image_to_text": recall_at_k(sim, KS), "text_to_image": recall_at_k(sim.T, KS),
            "chance": recall_chance(sim.shape[0], KS),
            "finding_precision": {f"P@{PRECISION_K}": precision, "chance": chance},
            "n_test": int(sim.shape[0])}
