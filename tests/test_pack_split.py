"""Splits: seeded, order-independent, about 70/10/20, and positives of every pathology everywhere."""
from collections import Counter

import pytest

from cmgl_dist.shards.schema import LABEL_KEYS, PATHOLOGIES, SPLITS
from cmgl_dist.shards.split import assign_splits
from cmgl_dist.shards.plan import stratified_subset


def _labels(n: int, rare_every: int = 0) -> dict[str, dict]:
    out = {}
    for i in range(n):
        labels = dict.fromkeys(LABEL_KEYS, 0)
        labels[PATHOLOGIES[i % len(PATHOLOGIES)]] = int(rare_every == 0 or i % rare_every == 0)
        out[f"CXR{i}"] = labels
    return out


def test_fractions_and_order_independence():
    labels = _labels(5000)
    split = assign_splits(labels, seed=0)
    shares = Counter(split.values())
    for name, share in zip(SPLITS, (0.7, 0.1, 0.2)):
        assert abs(shares[name] / 5000 - share) < 0.03
    reversed_labels = dict(reversed(list(labels.items())))
    assert assign_splits(reversed_labels, seed=0) == split
    assert assign_splits(labels, seed=1) != split


def test_rare_pathologies_reach_every_split():
    labels = _labels(300, rare_every=37)  # a handful of positives per pathology
    split = assign_splits(labels, seed=0)
    for pathology in PATHOLOGIES:
        positives = [u for u, lab in labels.items() if lab[pathology]]
        if len(positives) >= len(SPLITS):
            assert {split[u] for u in positives} == set(SPLITS), pathology


def test_too_few_positives_cannot_be_fixed_and_do_not_loop():
    labels = _labels(50, rare_every=1000)  # only CXR0 is positive (atelectasis)
    split = assign_splits(labels, seed=0)
    assert len(split) == 50


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError):
        assign_splits(_labels(10), seed=0, fractions=(0.5, 0.5, 0.5))


def test_stratified_subset_keeps_positives_of_every_pathology():
    labels = _labels(2000, rare_every=23)
    chosen = stratified_subset(labels, 100, seed=0)
    assert len(chosen) == 100
    for pathology in PATHOLOGIES:
        assert sum(labels[u][pathology] for u in chosen) >= 8
