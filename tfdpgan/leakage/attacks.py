"""Membership-inference metrics, and the bound a DP guarantee puts on them.

An attack gives a score per real patch, higher = "more likely a member". It is reported as
ROC AUC (with its Hanley-McNeil standard error) and TPR at FPR 1 % and 0.1 % (see
``tpr_at_fpr``), per patch and per patient (mean score of the patient's patches).

An (ε, δ)-DP mechanism limits every membership test: TPR ≤ e^ε·FPR + δ (``dp_tpr_bound``);
for a group of k records (a patient's k patches under a per-patch guarantee) group privacy
(tfdpgan.dp.accounting.group_privacy_epsilon_delta) gives (kε, k·e^((k-1)ε)·δ) instead.
scikit-learn is imported lazily (only ROC curves need it).
"""
import math
from typing import Optional, Sequence

import numpy as np

from tfdpgan.dp import accounting
from tfdpgan.leakage.real import RealPatches

__all__ = ["TARGET_FPRS", "fpr_key", "roc_auc", "tpr_at_fpr", "auc_standard_error",
           "attack_metrics", "patient_means", "dp_tpr_bound", "attack_from_scores",
           "privacy_section"]

TARGET_FPRS = (0.01, 0.001)


def fpr_key(fpr: float) -> str:
    """The JSON key of a false-positive rate ("0.01", "0.001")."""
    return f"{fpr:g}"


def _labels_scores(member_scores, nonmember_scores):
    pos = np.asarray(member_scores, np.float64).ravel()
    neg = np.asarray(nonmember_scores, np.float64).ravel()
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    return y, np.concatenate([pos, neg])


def roc_auc(member_scores, nonmember_scores) -> Optional[float]:
    """P(member score > non-member score) + ½ P(tie); None if either set is empty."""
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        return None
    from sklearn.metrics import roc_auc_score
    y, s = _labels_scores(member_scores, nonmember_scores)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> Optional[float]:
    """Highest true-positive rate at false-positive rate ``fpr`` on the empirical ROC curve
    (sklearn.metrics.roc_curve, all thresholds), linearly interpolated between its vertices.

    Between two thresholds the interpolation is the rate a randomised threshold achieves, so
    it is attainable. With n non-members the smallest non-zero FPR one threshold can reach is
    1/n: below it (fpr < 1/n) the value interpolates from the point at FPR 0 (the members
    scored above every non-member) and rests on a single non-member, i.e. it is not resolved.
    None if either set is empty."""
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        return None
    from sklearn.metrics import roc_curve
    y, s = _labels_scores(member_scores, nonmember_scores)
    fprs, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    i = int(np.searchsorted(fprs, fpr, side="right")) - 1   # last vertex with FPR <= fpr
    if i >= len(fprs) - 1:
        return float(tprs[-1])
    f0, t0, f1, t1 = fprs[i], tprs[i], fprs[i + 1], tprs[i + 1]
    return float(t0 + (t1 - t0) * (fpr - f0) / (f1 - f0))


def auc_standard_error(auc: Optional[float], num_members: int,
                       num_nonmembers: int) -> Optional[float]:
    """Hanley & McNeil (1982) standard error of an AUC from independent scores."""
    if auc is None or num_members < 1 or num_nonmembers < 1:
        return None
    a, n1, n2 = auc, num_members, num_nonmembers
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)
    return float(math.sqrt(max(var, 0.0)))


def attack_metrics(member_scores, nonmember_scores, fprs: Sequence[float] = TARGET_FPRS) -> dict:
    """AUC (with its Hanley-McNeil standard error), TPR at each FPR in ``fprs`` and at FPR
    0, and whether each FPR is resolved."""
    n_neg = len(nonmember_scores)
    auc = roc_auc(member_scores, nonmember_scores)
    return {
        "num_members": int(len(member_scores)),
        "num_nonmembers": int(n_neg),
        "auc": auc,
        "auc_se": auc_standard_error(auc, len(member_scores), n_neg),
        "tpr_at_fpr": {fpr_key(f): tpr_at_fpr(member_scores, nonmember_scores, f)
                       for f in fprs},
        "tpr_at_fpr_0": tpr_at_fpr(member_scores, nonmember_scores, 0.0),
        "fpr_resolved": {fpr_key(f): bool(n_neg > 0 and f * n_neg >= 1.0) for f in fprs},
        "fpr_resolution": (1.0 / n_neg) if n_neg else None,
    }


def patient_means(scores, patient_index, num_patients: int) -> np.ndarray:
    """Mean score of each patient's patches (NaN for a patient without patches)."""
    scores = np.asarray(scores, np.float64)
    sums = np.bincount(patient_index, weights=scores, minlength=num_patients)
    counts = np.bincount(patient_index, minlength=num_patients)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def dp_tpr_bound(epsilon: float, delta: float, fpr: float, group: int = 1) -> float:
    """Largest TPR an (ε, δ)-DP mechanism allows any membership test at ``fpr``:
    min(1, e^ε·FPR + δ). For a group of ``group`` records (e.g. a patient's k patches under a
    per-patch guarantee) group privacy gives (kε, k·e^((k-1)ε)·δ) instead
    (accounting.group_privacy_epsilon_delta). e^(kε)·FPR is formed in log space, so a
    vacuous bound for a large group is 1, not an overflow."""
    eps_k, delta_k = accounting.group_privacy_epsilon_delta(epsilon, delta, int(group))
    log_eps = eps_k + (math.log(fpr) if fpr > 0 else -math.inf)
    if log_eps >= 0 or delta_k >= 1:
        return 1.0
    return float(min(1.0, math.exp(log_eps) + delta_k))


def attack_from_scores(real: RealPatches, scores) -> dict:
    """Patch- and patient-level attack metrics of a membership score per real patch, the
    mean scores of members and non-members, and ``per_patient`` (the patients' mean scores,
    an array, taken out before audit.json is written)."""
    scores = np.asarray(scores, np.float64)
    member = real.member
    per_patient = patient_means(scores, real.patient_index, len(real.patient_ids))
    has = ~np.isnan(per_patient)
    return {"patch": attack_metrics(scores[member], scores[~member]),
            "patient": attack_metrics(per_patient[has & real.patient_member],
                                      per_patient[has & ~real.patient_member]),
            "mean_member": _mean(scores[member]), "mean_nonmember": _mean(scores[~member]),
            "per_patient": per_patient}


def _mean(x):
    return float(np.mean(x)) if len(x) else None


def privacy_section(card: dict, real: RealPatches) -> dict:
    """audit.json's ``privacy``: ε, δ and unit of the run's privacy card and the TPR bounds
    they imply at the target FPRs, per record and per patient. For a per-patch card the
    patient's group size is the card's ``patches_per_patient`` or, without it, the largest
    number of loaded patches of a member patient. ``bounds`` is None when not private."""
    private = bool(card.get("private")) and card.get("epsilon") is not None
    section = {"private": private, "epsilon": card.get("epsilon"), "delta": card.get("delta"),
               "privacy_unit": card.get("privacy_unit"), "bounds": None}
    if not private:
        return section
    eps, delta, unit = float(card["epsilon"]), float(card["delta"] or 0.0), card["privacy_unit"]
    if unit == "patient":
        group = 1
    else:
        member_counts = np.bincount(real.patient_index[real.member])
        group = int(card.get("patches_per_patient")
                    or (member_counts.max() if len(member_counts) else 1))
    section["bounds"] = {
        "per_record": {fpr_key(f): dp_tpr_bound(eps, delta, f) for f in TARGET_FPRS},
        "per_patient": {fpr_key(f): dp_tpr_bound(eps, delta, f, group) for f in TARGET_FPRS},
        "patient_group_size": group,
    }
    return section
