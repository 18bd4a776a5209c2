"""Image <-> report retrieval on the test split: recall@1/5/10 both ways, and finding-aware precision.

Each test image's own report is the one correct answer among all test reports (and the other
way round), ranked by the same global + local similarity zero-shot uses. Finding-aware
precision@10 (image -> report) counts a retrieved report as right when its finding set (the five
pathologies + normal) equals the query image's, so reports as good as the image's own count too.
It is taken over the samples whose finding set is known: an unindexed IU-RR report's labels read
"neither normal nor any finding" though most such reports read as normal, so scoring against
them would count right answers wrong. The figure with them counted as labelled comes beside it.
Every figure comes with the level a random ranking reaches.
"""
from __future__ import annotations

import numpy as np

from cmgl_dist.evaluate.features import SplitFeatures
from cmgl_dist.evaluate.metrics import finding_set_precision, recall_at_k, recall_chance
from cmgl_dist.evaluate.similarity import image_text_similarity

KS = (1, 5, 10)
PRECISION_K = 10


def retrieval_recalls(feats: SplitFeatures, *, gamma1: float, gamma2: float, word_pooling: str = "logsumexp",
                      unknown_labels: frozenset[str] = frozenset()) -> dict:
    """{"image_to_text": {"R@1": ...}, "text_to_image": {...}, "chance": {...}, "finding_precision":
    {"k": 10, "precision": ..., "chance": ..., "left_out": n, "with_left_out": {"precision", "chance"}},
    "n_test": N}; `unknown_labels`: keys whose finding set is unknown, left out of the precision."""
    sim = image_text_similarity(feats.image_global, feats.regions, feats.sentence, feats.words,
                                feats.word_mask, gamma1=gamma1, gamma2=gamma2,
                                word_pooling=word_pooling).cpu().numpy()
    finding_sets = feats.labels.numpy() > 0.5  # five pathologies + normal
    known = np.array([key not in unknown_labels for key in feats.keys], bool)
    precision, chance = finding_set_precision(sim[known][:, known], finding_sets[known], finding_sets[known],
                                              PRECISION_K)
    all_precision, all_chance = finding_set_precision(sim, finding_sets, finding_sets, PRECISION_K)
    return {"image_to_text": recall_at_k(sim, KS), "text_to_image": recall_at_k(sim.T, KS),
            "chance": recall_chance(sim.shape[0], KS),
            "finding_precision": {"k": PRECISION_K, "precision": precision, "chance": chance,
                                  "left_out": int((~known).sum()),
                                  "with_left_out": {"precision": all_precision, "chance": all_chance}},
            "n_test": int(sim.shape[0])}
