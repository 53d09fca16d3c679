"""Membership-inference metrics by hand, and the DP bound on them."""
import math

import numpy as np
import pytest

from tfdpgan.leakage import attacks


def test_auc_and_tpr_at_fpr_hand_computed():
    # members {1, 3}, non-members {2, 4}: only (3 > 2) of the 4 pairs is ordered right
    assert attacks.roc_auc([1, 3], [2, 4]) == pytest.approx(0.25)
    # ROC vertices (0,0) (0.5,0) (0.5,0.5) (1,0.5) (1,1)
    assert attacks.tpr_at_fpr([1, 3], [2, 4], 0.25) == pytest.approx(0.0)
    assert attacks.tpr_at_fpr([1, 3], [2, 4], 0.5) == pytest.approx(0.5)
    assert attacks.tpr_at_fpr([1, 3], [2, 4], 0.75) == pytest.approx(0.5)
    assert attacks.tpr_at_fpr([1, 3], [2, 4], 1.0) == pytest.approx(1.0)
    # separated: everything caught at FPR 0
    assert attacks.roc_auc([3, 4], [1, 2]) == 1.0
    assert attacks.tpr_at_fpr([3, 4], [1, 2], 0.0) == 1.0
    # one tie: the diagonal (0,0) -> (1,1), interpolated
    assert attacks.roc_auc([1], [1]) == 0.5
    assert attacks.tpr_at_fpr([1], [1], 0.5) == pytest.approx(0.5)
    # members {5, 3, 1}, non-members {4, 2, 0, -1}: vertices (0,1/3) (1/4,1/3) (1/4,2/3)...
    pos, neg = [5, 3, 1], [4, 2, 0, -1]
    assert attacks.tpr_at_fpr(pos, neg, 0.0) == pytest.approx(1 / 3)
    assert attacks.tpr_at_fpr(pos, neg, 0.125) == pytest.approx(1 / 3)
    assert attacks.tpr_at_fpr(pos, neg, 0.25) == pytest.approx(2 / 3)
    assert attacks.roc_auc(pos, neg) == pytest.approx((4 + 3 + 2) / 12)
    assert attacks.roc_auc([], [1]) is None and attacks.tpr_at_fpr([1], [], 0.1) is None


def test_auc_standard_error_hanley_mcneil():
    assert attacks.auc_standard_error(0.5, 1, 1) == pytest.approx(0.5)
    # A = 0.5: Q1 = Q2 = 1/3, var = (1/4 + 2 * 99 * (1/3 - 1/4)) / 100^2
    assert attacks.auc_standard_error(0.5, 100, 100) == pytest.approx(
        math.sqrt((0.25 + 2 * 99 / 12) / 1e4))
    assert attacks.auc_standard_error(1.0, 10, 10) == 0.0
    assert attacks.auc_standard_error(None, 10, 10) is None


def test_attack_metrics_report_resolution():
    rng = np.random.default_rng(0)
    m = attacks.attack_metrics(rng.normal(size=300), rng.normal(size=100))
    assert m["num_members"] == 300 and m["num_nonmembers"] == 100
    assert m["fpr_resolved"] == {"0.01": True, "0.001": False}
    assert m["fpr_resolution"] == pytest.approx(0.01)
    assert m["auc_se"] == pytest.approx(attacks.auc_standard_error(m["auc"], 300, 100))
    assert set(m["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert 0.0 <= m["tpr_at_fpr_0"] <= m["tpr_at_fpr"]["0.001"] <= m["tpr_at_fpr"]["0.01"]


def test_patient_means():
    means = attacks.patient_means([1.0, 3.0, 5.0, 10.0], np.array([0, 0, 2, 2]), 3)
    assert means[0] == 2.0 and np.isnan(means[1]) and means[2] == 7.5


def test_dp_tpr_bound():
    assert attacks.dp_tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(math.e * 0.01 + 1e-5)
    assert attacks.dp_tpr_bound(0.0, 0.0, 0.001) == pytest.approx(0.001)
    assert attacks.dp_tpr_bound(3.0, 1e-5, 0.1) == 1.0            # capped
    assert attacks.dp_tpr_bound(3.0, 1e-5, 0.01, group=500) == 1.0  # group privacy: vacuous
    eps, delta = 0.1, 1e-6
    assert attacks.dp_tpr_bound(eps, delta, 0.01, group=2) == pytest.approx(
        math.exp(2 * eps) * 0.01 + 2 * math.exp(eps) * delta)
    # a group so large that e^(k eps) overflows a float still gives the vacuous bound
    assert attacks.dp_tpr_bound(3.0, 1e-5, 0.001, group=100_000) == 1.0


def test_privacy_bounds_follow_the_privacy_unit(make_real):
    real = make_real(np.random.default_rng(6), members=3, nonmembers=2, per_patient=4)
    card = {"private": True, "epsilon": 1.0, "delta": 1e-5, "privacy_unit": "patient",
            "patches_per_patient": 8}
    section = attacks.privacy_section(card, real)
    assert section["bounds"]["patient_group_size"] == 1
    assert section["bounds"]["per_patient"] == section["bounds"]["per_record"]
    assert section["bounds"]["per_record"]["0.01"] == pytest.approx(math.e * 0.01 + 1e-5)
    section = attacks.privacy_section(dict(card, privacy_unit="patch",
                                           patches_per_patient=500), real)
    assert section["bounds"]["patient_group_size"] == 500
    assert section["bounds"]["per_patient"] == {"0.01": 1.0, "0.001": 1.0}
    # a patch-unit card without patches_per_patient: the largest member patient's count
    section = attacks.privacy_section(dict(card, privacy_unit="patch",
                                           patches_per_patient=None), real)
    assert section["bounds"]["patient_group_size"] == 4
    for card in ({"private": False, "epsilon": None, "delta": None, "privacy_unit": "patch"},
                 {}):
        assert attacks.privacy_section(card, real)["bounds"] is None
