"""Linear probe: one logistic regression per pathology on frozen global image features.

Trained on a seeded subset of the train split (1%, 10%, 100%). With ~2,700 train reports a 1%
subset holds ~27 samples and a uniform draw would often miss the rare classes (edema,
consolidation) entirely, so the subset is drawn stratified: one random positive of every class
that has positives in the split is taken first, the rest uniformly from what is left. A class
that still has a single label value in the subset (no positive anywhere in the split) cannot be
fitted: it scores every test sample equally (AUC 0.5) and is listed in `unfittable`.

A corpus too small to split (the 354 real NIH images) is probed by k-fold cross-validation
instead: folds by patient, each sample scored by the probe fitted on the other folds, and the
pooled out-of-fold scores give one AUC per class with a bootstrap CI, beside each fold's own AUC.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"probe fraction must be in (0, 1], got {fraction}")
    return float(fraction)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of round(fraction * N) samples (at least one) that
    contains a positive of every class with any positive, when the size allows it."""
    labels = np.asarray(labels, bool)
    n = labels.shape[0]
    size = max(1, round(check_fraction(fraction) * n))
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in rng.permutation(labels.shape[1]):
        positives = np.flatnonzero(labels[:, c])
        if positives.size and not labels[chosen, c].any() and len(chosen) < size:
            chosen.append(int(rng.choice(positives)))
    rest = np.setdiff1d(np.arange(n), chosen)
    chosen += rng.choice(rest, size=size - len(chosen), replace=False).tolist()
    return np.sort(np.asarray(chosen))


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, seed: int,
                C: float = 0.1) -> tuple[np.ndarray, list[int]]:
    """Test scores [N_test, C] (positive-class probability) and the unfittable class indices."""
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    scores = np.full((test_x.shape[0], train_y.shape[1]), 0.5)
    unfittable = []
    for c in range(train_y.shape[1]):
        y = np.asarray(train_y[:, c], bool)
        if y.all() or not y.any():
            unfittable.append(c)
            continue
        clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced", random_state=seed)
        scores[:, c] = clf.fit(train_x, y).predict_proba(test_x)[:, 1]
    return scores, unfittable


def patient_folds(labels: np.ndarray, patients: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold index per sample: `folds` folds, every patient in one fold, stratified on each
    sample's rarest positive class (scikit-learn's StratifiedGroupKFold, seeded shuffle)."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels, bool)
    if folds < 2 or len(set(patients)) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs folds >= 2 and at least {folds} patients "
                         f"(have {len(set(patients))})")
    rarest_first = np.argsort(labels.sum(0), kind="stable")
    strata = np.full(len(labels), labels.shape[1])  # no positive: its own stratum
    for c in rarest_first[::-1]:
        strata[labels[:, c]] = c  # the rarest class is written last and wins
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), int)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), strata, groups=patients)):
        fold_of[held_out] = fold
    return fold_of


def cross_validated_scores(x: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, *, seed: int
                           ) -> tuple[np.ndarray, list[list[int]]]:
    """Out-of-fold scores [N, C] (each sample scored by the probe fitted on the other folds), and
    the unfittable class indices of each fold's probe."""
    scores = np.empty(labels.shape, float)
    unfittable = []
    for fold in range(int(fold_of.max()) + 1):
        held_out = fold_of == fold
        scores[held_out], missing = fit_predict(x[~held_out], labels[~held_out], x[held_out], seed=seed)
        unfittable.append(missing)
    return scores, unfittable
