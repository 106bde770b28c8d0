"""Retrieval metrics with the reference definitions of the fields our graders come from.

A ranking is a sequence of labels, best first: GOOD/OK (positives under the protocol
at hand), JUNK (skipped entirely: neither counted nor a position) or WRONG. Every
function takes `n_positives`, the size of the ground-truth positive set, so positives
that never appear in the ranking still lower AP and recall (as in the reference code).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POSITIVE = "pos"
JUNK = "junk"
WRONG = "wrong"
KS = (1, 5, 10, 100)
RECALL_POINTS = np.linspace(0.0, 1.0, 21)


def without_junk(ranking: Sequence[str]) -> list[bool]:
    """The ranking as the reference code walks it: junk removed, True where positive."""
    return [label == POSITIVE for label in ranking if label != JUNK]


def oxford_ap(ranking: Sequence[str], n_positives: int) -> float:
    """Oxford Buildings `compute_ap.cpp`: trapezoids of precision over recall, junk skipped.

    Starts from recall 0 and precision 1; after each non-junk item adds
    (recall - old_recall) * (old_precision + precision) / 2.
    """
    if n_positives <= 0:
        return float("nan")
    old_recall, old_precision, ap, hits = 0.0, 1.0, 0.0, 0
    for j, positive in enumerate(without_junk(ranking)):
        hits += positive
        recall = hits / n_positives
        precision = hits / (j + 1)
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
    return ap


def revisited_ap(ranking: Sequence[str], n_positives: int) -> float:
    """Revisited Oxford/Paris `compute_ap(ranks, nres)` after `compute_map`'s junk shift:
    positions of positives counted without junk; the same trapezoidal rule as oxford_ap."""
    if n_positives <= 0:
        return float("nan")
    ranks = [i for i, positive in enumerate(without_junk(ranking)) if positive]
    ap, step = 0.0, 1.0 / n_positives
    for j, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * step / 2
    return ap


def precision_at(ranking: Sequence[str], k: int) -> float:
    """Positives among the first k non-junk items, divided by k (short lists count as misses)."""
    return sum(without_junk(ranking)[:k]) / k


def revisitop_precision_at(ranking: Sequence[str], k: int, n_positives: int) -> float:
    """Revisited Oxford/Paris `compute_map`'s precision at k, which published mP@k tables report: positives
    among the first kq non-junk items divided by kq = min(k, rank of the last positive), so a query with
    fewer than k positives can still reach 1. A positive missing from the list is ranked beyond it."""
    if n_positives <= 0:
        return float("nan")
    ranks = [i + 1 for i, positive in enumerate(without_junk(ranking)) if positive]
    last = ranks[-1] if len(ranks) >= n_positives else float("inf")
    kq = min(k, last)
    return sum(1 for r in ranks if r <= kq) / kq


def recall_at(ranking: Sequence[str], k: int, n_positives: int) -> float:
    if n_positives <= 0:
        return float("nan")
    return sum(without_junk(ranking)[:k]) / n_positives


def first_hit_rank(ranking: Sequence[str]) -> int | None:
    """1-based rank of the first positive, junk not counted; None when there is none."""
    for i, positive in enumerate(without_junk(ranking)):
        if positive:
            return i + 1
    return None


def reciprocal_rank(ranking: Sequence[str]) -> float:
    rank = first_hit_rank(ranking)
    return 0.0 if rank is None else 1.0 / rank


def hit_at(ranking: Sequence[str], k: int) -> float:
    rank = first_hit_rank(ranking)
    return 1.0 if rank is not None and rank <= k else 0.0


def interpolated_pr(ranking: Sequence[str], n_positives: int, points: np.ndarray = RECALL_POINTS) -> np.ndarray:
    """Interpolated precision at each recall point (max precision at any recall >= it)."""
    flags = without_junk(ranking)
    if n_positives <= 0:
        return np.full(len(points), np.nan)
    hits = np.cumsum(flags) if flags else np.zeros(0)
    recall = hits / n_positives
    precision = hits / np.arange(1, len(flags) + 1) if flags else np.zeros(0)
    out = np.zeros(len(points))
    for i, r in enumerate(points):
        reached = precision[recall >= r - 1e-12]
        out[i] = reached.max() if reached.size else 0.0
    return out


def stable_order(scores: Sequence[float]) -> np.ndarray:
    """Indices by descending score; equal scores keep their given order (collection order),
    so a tie never reorders between runs."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def mean_excluding_empty(values: Sequence[float]) -> tuple[float, int]:
    """Mean over queries that have positives (NaN marks the others) and how many were left out."""
    arr = np.asarray(values, dtype=np.float64)
    empty = int(np.isnan(arr).sum())
    kept = arr[~np.isnan(arr)]
    return (float(kept.mean()) if kept.size else float("nan")), empty
