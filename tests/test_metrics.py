"""Metrics pinned against values computed by hand (see the arithmetic in each test)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from app import metrics
from app.metrics import JUNK as J
from app.metrics import POSITIVE as P
from app.metrics import WRONG as W


def test_oxford_ap_matches_hand_computed_trapezoids_with_junk_skipped():
    # non-junk walk: P W P W P, 3 positives
    # P: (1/3)(1+1)/2 = 1/3;  W: 0;  P: (1/3)(1/2+2/3)/2 = 7/36;  W: 0;  P: (1/3)(2/4+3/5)/2 = 11/60
    ranking = [P, J, W, P, W, P, W]
    expected = 1 / 3 + 7 / 36 + 11 / 60  # = 128/180
    assert metrics.oxford_ap(ranking, 3) == pytest.approx(128 / 180)
    assert metrics.oxford_ap(ranking, 3) == pytest.approx(expected)
    assert metrics.revisited_ap(ranking, 3) == pytest.approx(128 / 180)


def test_positives_missing_from_the_list_lower_ap_and_recall():
    # 2 of 4 positives retrieved, at 1 and 2: (1/4)(1+1)/2 + (1/4)(1+1)/2 = 0.5
    assert metrics.oxford_ap([P, P, W], 4) == pytest.approx(0.5)
    assert metrics.recall_at([P, P, W], 10, 4) == pytest.approx(0.5)


def test_no_positive_in_the_list_gives_zero():
    ranking = [W, W, J, W]
    assert metrics.oxford_ap(ranking, 2) == 0.0
    assert metrics.revisited_ap(ranking, 2) == 0.0
    assert metrics.precision_at(ranking, 1) == 0.0
    assert metrics.reciprocal_rank(ranking) == 0.0
    assert metrics.hit_at(ranking, 100) == 0.0


def test_all_junk_list_counts_nothing():
    ranking = [J, J, J]
    assert metrics.oxford_ap(ranking, 1) == 0.0
    assert metrics.precision_at(ranking, 5) == 0.0
    assert metrics.recall_at(ranking, 5, 1) == 0.0
    assert metrics.first_hit_rank(ranking) is None


def test_junk_before_a_positive_does_not_cost_a_position():
    # junk removed: P P  -> AP 1, first hit at rank 1, P@2 = 1
    ranking = [J, P, J, P]
    assert metrics.oxford_ap(ranking, 2) == pytest.approx(1.0)
    assert metrics.first_hit_rank(ranking) == 1
    assert metrics.precision_at(ranking, 2) == 1.0


def test_precision_recall_mrr_and_hit_at_k_by_hand():
    ranking = [W, P, J, W, P, W]  # junk removed: W P W P W
    assert metrics.precision_at(ranking, 1) == 0.0
    assert metrics.precision_at(ranking, 5) == pytest.approx(2 / 5)
    assert metrics.precision_at(ranking, 10) == pytest.approx(2 / 10)  # a short list counts as misses
    assert metrics.recall_at(ranking, 1, 3) == 0.0
    assert metrics.recall_at(ranking, 5, 3) == pytest.approx(2 / 3)
    assert metrics.reciprocal_rank(ranking) == pytest.approx(1 / 2)
    assert metrics.hit_at(ranking, 1) == 0.0 and metrics.hit_at(ranking, 5) == 1.0


def test_query_without_positives_is_left_out_of_the_mean_and_counted():
    assert math.isnan(metrics.oxford_ap([W, J], 0))
    assert math.isnan(metrics.recall_at([W], 1, 0))
    mean, left_out = metrics.mean_excluding_empty([0.5, float("nan"), 1.0])
    assert mean == pytest.approx(0.75) and left_out == 1


def test_ties_keep_collection_order():
    # equal scores: the earlier item (lower row) ranks first, every time
    assert metrics.stable_order([0.5, 0.9, 0.5, 0.9, 0.1]).tolist() == [1, 3, 0, 2, 4]


def test_interpolated_precision_recall_curve():
    # W P P with 2 positives: precision 0, 1/2, 2/3 at recall 0, 1/2, 1
    curve = metrics.interpolated_pr([W, P, P], 2, np.array([0.0, 0.5, 1.0]))
    assert curve.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    curve = metrics.interpolated_pr([P, W, P], 2, np.array([0.0, 0.5, 0.75, 1.0]))
    assert curve.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3])


def test_revisitop_precision_divides_by_the_rank_of_the_last_positive():
    # 4 positives at ranks 1-4: revisitop's kq = min(5, 4) = 4 -> 4/4 = 1.0; the plain P@5 is 4/5
    ranking = [P, P, P, P, W, W]
    assert metrics.revisitop_precision_at(ranking, 5, 4) == 1.0
    assert metrics.precision_at(ranking, 5) == pytest.approx(0.8)
    # junk removed: P P W P (ranks 1, 2, 4): k=1 -> 1/1; k=3 -> 2/3; k=5 -> kq = 4 -> 3/4
    ranking = [P, J, P, W, P, W]
    assert metrics.revisitop_precision_at(ranking, 1, 3) == 1.0
    assert metrics.revisitop_precision_at(ranking, 3, 3) == pytest.approx(2 / 3)
    assert metrics.revisitop_precision_at(ranking, 5, 3) == pytest.approx(3 / 4)
    assert metrics.revisitop_precision_at(ranking, 100, 3) == pytest.approx(3 / 4)


def test_revisitop_precision_counts_a_positive_below_the_depth_as_ranked_beyond_it():
    # 2 positives, one retrieved at rank 1: the last positive's rank is unknown but beyond the list -> kq = k
    assert metrics.revisitop_precision_at([P, W, W], 5, 2) == pytest.approx(1 / 5)
    assert metrics.revisitop_precision_at([W, W], 5, 1) == 0.0
    assert math.isnan(metrics.revisitop_precision_at([W], 5, 0))
