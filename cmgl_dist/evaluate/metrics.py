"""AUC with percentile-bootstrap confidence intervals, ROC points, and retrieval recall@k.

AUC is the Mann-Whitney statistic computed from average ranks (ties count one half), which is
what `sklearn.metrics.roc_auc_score` returns; computing it from ranks lets the bootstrap score
all resamples of one class in a single vectorised call.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.stats import rankdata


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one binary label vector; NaN when only one class is present."""
    return float(_auc_rows(np.asarray(labels, bool)[None], np.asarray(scores, float)[None])[0])


def _auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of every row of `labels`/`scores` [B, N]; NaN for a row without both classes."""
    ranks = rankdata(scores, axis=1)
    n_pos = labels.sum(axis=1).astype(float)
    n_neg = labels.shape[1] - n_pos
    rank_sum = np.where(labels, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


@dataclass
class Interval:
    """A point estimate with its percentile-bootstrap 95% interval.

    `skipped` counts resamples that could not be scored (a resample without a positive or a
    negative); the interval comes from the others. NaN everywhere when the test set itself
    lacks one of the classes.
    """
    value: float
    low: float
    high: float
    skipped: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _interval(point: float, resampled: np.ndarray) -> Interval:
    kept = resampled[~np.isnan(resampled)]
    skipped = int(resampled.size - kept.size)
    if np.isnan(point) or kept.size == 0:
        return Interval(float(point), float("nan"), float("nan"), skipped)
    low, high = np.percentile(kept, [2.5, 97.5])
    return Interval(float(point), float(low), float(high), skipped)


def bootstrap_aucs(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], *,
                   n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-class AUCs and their mean, each with a 95% percentile-bootstrap interval.

    labels, scores: [N, C]. Every class is scored on the same resamples of the test samples, so
    the mean's interval accounts for the correlation between classes. The mean is over the
    classes with both labels in the test set (listed in `mean_over`); a resample where any of
    those classes lacks a positive or a negative is skipped for the mean and counted.
    Returns {name: Interval, ..., "mean": Interval, "mean_over": [...], "n_pos": {...}}.
    """
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, float)
    if labels.shape != scores.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be [N, {len(names)}]")
    n = labels.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    points = np.array([auc(labels[:, c], scores[:, c]) for c in range(len(names))])
    resampled = np.stack([_auc_rows(labels[idx, c], scores[idx, c]) for c in range(len(names))], axis=1) \
        if n_boot else np.empty((0, len(names)))
    out: dict = {name: _interval(points[c], resampled[:, c]) for c, name in enumerate(names)}
    defined = ~np.isnan(points)
    mean_point = float(points[defined].mean()) if defined.any() else float("nan")
    # nanmean would silently average a different set of classes per resample: skip instead
    mean_resampled = resampled[:, defined].mean(axis=1) if defined.any() else np.full(n_boot, np.nan)
    out["mean"] = _interval(mean_point, mean_resampled)
    out["mean_over"] = [name for name, d in zip(names, defined) if d]
    out["n_pos"] = {name: int(labels[:, c].sum()) for c, name in enumerate(names)}
    return out


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, float)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def recall_at_k(similarity: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k where query i's only correct candidate is candidate i (similarity [N, N])."""
    similarity = np.asarray(similarity, float)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square [N, N], got {similarity.shape}")
    correct = np.diag(similarity)[:, None]
    # rank of the correct candidate = number of candidates scored strictly higher
    rank = (similarity > correct).sum(axis=1)
    return {f"R@{k}": float((rank < k).mean()) for k in ks}


def recall_chance(n_candidates: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of a random ranking with one correct candidate among n: k / n."""
    return {f"R@{k}": min(1.0, k / n_candidates) for k in ks}


def finding_set_precision(similarity: np.ndarray, query_sets: np.ndarray, candidate_sets: np.ndarray,
                          k: int = 10) -> tuple[float, float]:
    """(precision@k, its chance level) of finding-aware retrieval.

    similarity [Q, C]; query_sets [Q, L] and candidate_sets [C, L] bool label rows. A retrieved
    candidate counts when its whole label row equals the query's. Chance: the expected precision
    of a random ranking, the mean over queries of the share of candidates with the same row.
    """
    similarity = np.asarray(similarity, float)
    if similarity.shape != (len(query_sets), len(candidate_sets)):
        raise ValueError(f"similarity {similarity.shape} does not match {len(query_sets)} queries x "
                         f"{len(candidate_sets)} candidates")
    same = (np.asarray(query_sets)[:, None, :] == np.asarray(candidate_sets)[None, :, :]).all(-1)  # [Q, C]
    k = min(k, similarity.shape[1])
    # ties broken by candidate index, so the figure is deterministic
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    precision = np.take_along_axis(same, top, axis=1).mean()
    return float(precision), float(same.mean())
