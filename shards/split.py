"""Train/val/test assignment: a seeded hash of the uid, then adjusted so that every split holds
positives of every pathology (needed to score each pathology on every split)."""
from __future__ import annotations

import hashlib

from cmgl_dist.shards.schema import PATHOLOGIES, SPLITS


def uid_hash(uid: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, uid), independent of the order reports are read."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(labels: dict[str, dict[str, int]], seed: int,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, str]:
    """uid -> split. `labels` maps uid -> labels.json dict.

    Hash thresholds first. Then, for each pathology (rarest first) and each split without a
    positive, move one positive in from the split holding the most, choosing the donor's
    lowest-hash positive whose move leaves the donor with positives of every pathology it had.
    A pathology with fewer positives than splits cannot be fixed and is left as is.
    """
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be {len(SPLITS)} numbers summing to 1: {fractions}")
    hashes = {uid: uid_hash(uid, seed) for uid in labels}
    bounds = [sum(fractions[: i + 1]) for i in range(len(SPLITS))]
    split = {uid: SPLITS[next(i for i, b in enumerate(bounds) if h < b or i == len(bounds) - 1)]
             for uid, h in hashes.items()}

    def positives(pathology: str, name: str) -> list[str]:
        return sorted((u for u, s in split.items() if s == name and labels[u][pathology]),
                      key=hashes.__getitem__)

    rarest_first = sorted(PATHOLOGIES, key=lambda p: (sum(lab[p] for lab in labels.values()), p))
    for pathology in rarest_first:
        for target in SPLITS:
            if positives(pathology, target):
                continue
            donor = max(SPLITS, key=lambda s: (len(positives(pathology, s)), -SPLITS.index(s)))
            candidates = positives(pathology, donor)
            if len(candidates) < 2:
                continue
            for uid in candidates:
                others = [p for p in PATHOLOGIES if labels[uid][p] and p != pathology]
                if all(len(positives(p, donor)) > 1 for p in others):
                    split[uid] = target
                    break
    return split
