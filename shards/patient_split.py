"""Splits by patient for corpora with many images per patient: no patient in two splits, ever.

A corpus's official split comes first: a patient with any image in the official test split
has all of its images in test (then val, then train), so an image the corpus holds out never
shares a patient with one we train on. Patients the corpus does not place are split by
`u = sha256("{seed}:{patient}")` (`split.uid_hash`): with an official test split they go to
train/val in the ratio 0.7 : 0.1; without one, train below 0.7, val below 0.8, test above.
"""
from __future__ import annotations

from collections import defaultdict

from cmgl_dist.shards.schema import SPLITS
from cmgl_dist.shards.split import uid_hash

FRACTIONS = (0.7, 0.1, 0.2)


def _by_hash(patient: str, seed: int, with_test: bool) -> str:
    u = uid_hash(patient, seed)
    if not with_test:
        return "train" if u < FRACTIONS[0] else "val" if u < FRACTIONS[0] + FRACTIONS[1] else "test"
    return "train" if u < FRACTIONS[0] / (FRACTIONS[0] + FRACTIONS[1]) else "val"


def patient_splits(patients_official: list[tuple[str, str | None]], seed: int) -> dict[str, str]:
    """patient -> split, from (patient, official split or None) of every record."""
    official = defaultdict(set)
    for patient, split in patients_official:
        official[patient].add(split)
    corpus_has_test = any("test" in splits for splits in official.values())
    out = {}
    for patient, splits in official.items():
        placed = [s for s in reversed(SPLITS) if s in splits]  # test, then val, then train
        out[patient] = placed[0] if placed else _by_hash(patient, seed, corpus_has_test)
    return out
