"""Measure what a trained run leaks: membership inference and memorisation.

  python -m tfdpgan.audit --workdir=W [--num_synthetic=5000 --max_patches=10000 --seed=0]

Writes ``W/audit/`` (atomically: audit.json, AUDIT.md, near_copies.png) and prints a summary.

THIS IS A MEASUREMENT FOR THE DATA HOLDER, NOT A RELEASE. It reads the private training
patches, the held-out patients and the critic checkpoint; its outputs name patients and
near_copies.png shows training patches. Keep W/audit/ with the checkpoints, inside the
institution. It does not change the run's privacy guarantee (it spends no ε and adds none).

Members are the run's training patients (split ``train`` of its TFRecord data set, read from
W/run.json); non-members are the held-out patients of the same data set (``val`` and, if
present, ``test``). With ``max_patches`` every patient keeps the same number of random
patches, small enough that no split holds more than ``max_patches``.

(a) Membership inference: a score per real patch, higher = "more likely a member".
    critic (white-box)   D(x), the restored critic on the (image, label) pair as it is
                         trained on it (wgan.to_pairs).
    critic, calibrated   D(x) minus the mean of D over the 7 other flips/rotations of x: the
                         critic's liking for this content irrespective of its exact
                         orientation is the patch's difficulty reference; what remains is how
                         much more it likes this exact patch.
    generator (black-box, what a recipient of synthetic data can do)
                         minus the distance from x to its nearest synthetic pair.
    Reported as ROC AUC and TPR at FPR 1 % and 0.1 % (see ``tpr_at_fpr``), per patch and per
    patient (mean score of the patient's patches).
(b) Memorisation: for each synthetic pair the distance to the nearest training patch and to
    the nearest held-out patch, with as many training patients as held-out patients (random
    draws, averaged), the fraction closer to training (0.5 without memorisation) and the
    near-copies: synthetic pairs closer to a training patch than τ, the 1st percentile of the
    held-out-to-training nearest-neighbour distances (≈ 1 % without memorisation).
(c) Canaries are not implemented (they need a retraining with planted records).

Distances are root-mean-square differences over both channels of the pair in the critic's
scale: image in [-1, 1] and label mapped {0, 1} -> {-1, 1}; 0 = identical, 2 = opposite.

When the run is private, AUDIT.md prints next to every measured TPR the bound that (ε, δ)
from W/privacy.json puts on any attack, TPR ≤ e^ε·FPR + δ (per patient via group privacy
when the record is a patch).

Library: ``audit_workdir(AuditConfig(workdir=...))`` runs everything and returns audit.json's
contents; the pieces (``attack_metrics``, ``tpr_at_fpr``, ``cross_nearest``,
``ratio_stats``, ``critic_scores``, ``generator_and_memorisation``, ``dp_tpr_bound``) take
plain arrays.
"""
import dataclasses
import json
import math
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
from absl import app, flags, logging

from tfdpgan import atomic

AUDIT_DIR = "audit"
AUDIT_JSON = "audit.json"
AUDIT_MD = "AUDIT.md"
NEAR_COPIES_PNG = "near_copies.png"
TARGET_FPRS = (0.01, 0.001)
HELD_OUT_SPLITS = ("val", "test")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    workdir: str
    num_synthetic: int = 5000
    max_patches: int = 10000          # per split (equal share per patient); 0 = all
    seed: int = 0
    overwrite: bool = False
    calibrate: bool = True            # the 8x more expensive calibrated critic score
    near_copy_percentile: float = 1.0
    ratio_draws: int = 20             # random draws of training patients for d_train/d_held
    num_png: int = 16                 # near-copies shown in near_copies.png
    chunk: int = 1024                 # query rows per distance block
    batch_size: int = 256             # critic batch


# --- attack metrics ----------------------------------------------------------------------


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
        "tpr_at_fpr": {_key(f): tpr_at_fpr(member_scores, nonmember_scores, f) for f in fprs},
        "tpr_at_fpr_0": tpr_at_fpr(member_scores, nonmember_scores, 0.0),
        "fpr_resolved": {_key(f): bool(n_neg > 0 and f * n_neg >= 1.0) for f in fprs},
        "fpr_resolution": (1.0 / n_neg) if n_neg else None,
    }


def _key(fpr: float) -> str:
    return f"{fpr:g}"


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
    per-patch guarantee) group privacy gives (kε, k·e^((k-1)ε)·δ) instead."""
    k = int(group)
    log_eps = k * epsilon + (math.log(fpr) if fpr > 0 else -math.inf)
    log_delta = (math.log(k) + (k - 1) * epsilon + math.log(delta)) if delta > 0 else -math.inf
    if max(log_eps, log_delta) >= 0:
        return 1.0
    return float(min(1.0, math.exp(log_eps) + math.exp(log_delta)))


# --- distances ---------------------------------------------------------------------------


def pair_vectors(images, labels) -> np.ndarray:
    """[N, P, P] images in [-1, 1] and labels in {0, 1} -> [N, 2·P·P] float32 (the critic's
    pair scale: label mapped to {-1, 1})."""
    images = np.asarray(images, np.float32)
    n = len(images)
    label = np.asarray(labels, np.float32).reshape(n, -1) * 2.0 - 1.0
    return np.concatenate([images.reshape(n, -1), label], axis=1)


@dataclasses.dataclass
class CrossNearest:
    a_dist: np.ndarray        # [N] RMS distance of each a to its nearest b
    a_index: np.ndarray       # [N] index into b
    group_dist: np.ndarray    # [G, M] for each b, RMS distance to its nearest a of group g
    group_index: np.ndarray   # [G, M] index into a (-1 where group g has no rows)


def _rms_rows(a, b, ia, ib, chunk: int = 4096) -> np.ndarray:
    """RMS distance between rows a[ia[t]] and b[ib[t]], computed from the differences."""
    out = np.empty(len(ia), np.float64)
    for s in range(0, len(ia), chunk):
        d = a[ia[s:s + chunk]] - b[ib[s:s + chunk]]
        out[s:s + chunk] = np.einsum("ij,ij->i", d, d, dtype=np.float64)
    return np.sqrt(out / a.shape[1])


def cross_nearest(a, b, a_groups=None, num_groups: Optional[int] = None, chunk: int = 1024,
                  progress: Optional[str] = None) -> CrossNearest:
    """Nearest neighbours both ways between rows of ``a`` [N, D] and ``b`` [M, D] in one pass.

    Squared distances come from blocked matrix products (‖a‖² + ‖b‖² − 2a·b on rows
    centred on a common mean, ``chunk`` rows of ``a`` at a time, so memory is chunk × M); the
    distance of every chosen pair is then recomputed from the difference itself, so exact
    copies come out as 0. With ``a_groups`` (int [N], e.g. the patient of each row; sorted
    rows make this cheapest) it also returns, for every b, the nearest a within each group.
    ``progress`` names the pass in the log."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    n, m = len(a), len(b)
    if a_groups is None:
        num_groups = 0
    else:
        a_groups = np.asarray(a_groups, np.int64)
        num_groups = int(num_groups if num_groups is not None
                         else (a_groups.max() + 1 if n else 0))
    mean = (a.sum(0, dtype=np.float64) + b.sum(0, dtype=np.float64)) / max(n + m, 1)
    mean = mean.astype(np.float32)
    bc = b - mean
    b_sq = np.einsum("ij,ij->i", bc, bc, dtype=np.float64).astype(np.float32)
    a_index = np.zeros(n, np.int64)
    g_d2 = np.full((num_groups, m), np.inf, np.float32)
    g_index = np.full((num_groups, m), -1, np.int64)
    cols = np.arange(m)
    started, last_log = time.time(), time.time()
    for s in range(0, n, chunk):
        ac = a[s:s + chunk] - mean
        a_sq = np.einsum("ij,ij->i", ac, ac, dtype=np.float64).astype(np.float32)
        d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (ac @ bc.T)
        if m:
            a_index[s:s + len(ac)] = d2.argmin(axis=1)
        if num_groups:
            groups = a_groups[s:s + chunk]
            for g in np.unique(groups):
                rows = np.flatnonzero(groups == g)
                sub = d2[rows]
                best = sub.argmin(axis=0)
                value = sub[best, cols]
                better = value < g_d2[g]
                g_d2[g, better] = value[better]
                g_index[g, better] = s + rows[best[better]]
        if progress and time.time() - last_log > 30:
            done = min(s + chunk, n)
            logging.info("%s: %d/%d rows (%.0f s)", progress, done, n, time.time() - started)
            last_log = time.time()
    a_dist = (_rms_rows(a, b, np.arange(n), a_index) if m
              else np.full(n, np.inf))
    g_dist = np.full((num_groups, m), np.inf)
    valid = g_index >= 0
    if valid.any():
        g_dist[valid] = _rms_rows(a, b, g_index[valid], np.broadcast_to(cols, valid.shape)[valid])
    return CrossNearest(a_dist, a_index, g_dist, g_index)


def nearest(queries, refs, chunk: int = 1024):
    """(RMS distance, index) of each query row's nearest row of ``refs``."""
    result = cross_nearest(queries, refs, chunk=chunk)
    return result.a_dist, result.a_index


def ratio_stats(d_train, d_held) -> dict:
    """Statistics of d_train / d_held over synthetic samples. Without memorisation a synthetic
    pair is as likely to be closer to one reference set as to the other (equally large and
    equally diverse): fraction below 1 ≈ 0.5, median ≈ 1. Ties count half."""
    d_train = np.asarray(d_train, np.float64)
    d_held = np.asarray(d_held, np.float64)
    if len(d_train) == 0:
        return {"median": None, "p5": None, "fraction_below_1": None, "num": 0}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d_held > 0, d_train / d_held, np.where(d_train > 0, np.inf, 1.0))
    return {"median": float(np.median(ratio)), "p5": float(np.percentile(ratio, 5)),
            "fraction_below_1": float(np.mean(ratio < 1) + 0.5 * np.mean(ratio == 1)),
            "num": int(len(ratio))}


# --- the audit on arrays -------------------------------------------------------------------


@dataclasses.dataclass
class RealPatches:
    """Real patches of members and non-members, sorted by patient."""
    images: np.ndarray          # float32 [N, P, P]
    labels: np.ndarray          # uint8 [N, P, P]
    patient_index: np.ndarray   # int [N] into patient_ids
    patient_ids: List[str]
    patient_member: np.ndarray  # bool [num patients]
    patient_split: List[str]
    patches_per_patient_cap: Optional[int] = None   # None: all patches kept

    @property
    def member(self) -> np.ndarray:
        return self.patient_member[self.patient_index]


def attack_from_scores(real: RealPatches, scores) -> dict:
    """Patch- and patient-level attack metrics of a membership score per real patch."""
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


def generator_and_memorisation(real: RealPatches, syn_images, syn_labels, *, seed: int = 0,
                               percentile: float = 1.0, ratio_draws: int = 20,
                               chunk: int = 1024) -> dict:
    """The black-box generator attack and the memorisation statistics (see the module doc).

    Returns a JSON-ready dict plus the arrays ``_scores`` (per real patch), ``_d_train`` and
    ``_nearest_train`` (per synthetic pair; index into ``real``)."""
    rng = np.random.default_rng([seed, 2])
    real_vec = pair_vectors(real.images, real.labels)
    syn_vec = pair_vectors(syn_images, syn_labels)
    num_patients = len(real.patient_ids)
    logging.info("distances: %d real x %d synthetic pairs", len(real_vec), len(syn_vec))
    cross = cross_nearest(real_vec, syn_vec, real.patient_index, num_patients, chunk,
                          progress="real-synthetic distances")
    scores = -cross.a_dist
    result = {"generator_attack": attack_from_scores(real, scores)}

    train_p = np.flatnonzero(real.patient_member)
    held_p = np.flatnonzero(~real.patient_member)
    member = real.member
    g = cross.group_dist
    d_train = g[train_p].min(axis=0) if len(train_p) else np.full(len(syn_vec), np.inf)
    d_held = g[held_p].min(axis=0) if len(held_p) else np.full(len(syn_vec), np.inf)
    nearest_train = np.zeros(0, np.int64)
    if len(train_p) and len(syn_vec):
        best = g[train_p].argmin(axis=0)              # which training patient, per synthetic
        nearest_train = cross.group_index[train_p][best, np.arange(len(syn_vec))]

    # τ from real data: held-out patches' nearest training patch
    logging.info("distances: %d held-out x %d training patches", int((~member).sum()),
                 int(member.sum()))
    held_to_train, _ = nearest(real_vec[~member], real_vec[member], chunk)
    tau = float(np.percentile(held_to_train, percentile)) if len(held_to_train) else None

    # d_train / d_held with as many training patients as held-out patients
    k = min(len(held_p), len(train_p))
    counts = np.bincount(real.patient_index, minlength=num_patients)
    draws, sub_patches = [], []
    for _ in range(ratio_draws if k else 0):
        chosen = rng.choice(train_p, size=k, replace=False)
        draws.append(ratio_stats(g[chosen].min(axis=0), d_held))
        sub_patches.append(int(counts[chosen].sum()))
    near = int(np.sum(d_train < tau)) if tau is not None else 0
    result["memorisation"] = {
        "num_synthetic": int(len(syn_vec)),
        "held_out_patients": int(len(held_p)),
        "held_out_patches": int(counts[held_p].sum()),
        "train_patients_per_draw": int(k),
        "train_patches_per_draw_mean": float(np.mean(sub_patches)) if sub_patches else None,
        "ratio_draws": len(draws),
        "ratio": _average_draws(draws),
        "ratio_fraction_below_1_range": ([min(d["fraction_below_1"] for d in draws),
                                          max(d["fraction_below_1"] for d in draws)]
                                         if draws else None),
        "d_train_all_median": _median(d_train),
        "d_held_median": _median(d_held),
        "held_to_train_median": _median(held_to_train),
        "tau": tau,
        "tau_percentile": float(percentile),
        "near_copies": near,
        "near_copy_fraction": near / len(syn_vec) if len(syn_vec) else None,
        "min_d_train": float(d_train.min()) if len(d_train) else None,
    }
    result["_scores"] = scores
    result["_d_train"] = d_train
    result["_nearest_train"] = nearest_train
    return result


def _median(x):
    x = np.asarray(x)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def _average_draws(draws: List[dict]) -> dict:
    if not draws:
        return ratio_stats([], [])
    return {key: float(np.mean([d[key] for d in draws])) for key in
            ("median", "p5", "fraction_below_1")} | {"num": draws[0]["num"]}


def critic_scores(critic, images, labels, batch_size: int = 256, calibrate: bool = True):
    """(raw, calibrated) critic scores of real pairs; calibrated is None if not ``calibrate``.

    raw = D(x) on the pair the critic is trained on (wgan.to_pairs). calibrated = D(x) minus
    the mean of D over the 7 other elements of the dihedral group of x (flips, transposes,
    rotations by 90°), applied to both channels."""
    import tensorflow as tf
    from tfdpgan.gan import wgan

    @tf.function(reduce_retracing=True)
    def score(x):
        raw = critic(x, training=False)[:, 0]
        if not calibrate:
            return raw, raw
        t = tf.transpose(x, [0, 2, 1, 3])
        others = [tf.reverse(x, [1]), tf.reverse(x, [2]), tf.reverse(x, [1, 2]),
                  t, tf.reverse(t, [1]), tf.reverse(t, [2]), tf.reverse(t, [1, 2])]
        ref = tf.reshape(critic(tf.concat(others, 0), training=False)[:, 0],
                         [len(others), -1])
        return raw, raw - tf.reduce_mean(ref, axis=0)

    n = len(images)
    raw, cal = np.empty(n), np.empty(n)
    started, last_log = time.time(), time.time()
    for s in range(0, n, batch_size):
        image = tf.constant(np.asarray(images[s:s + batch_size], np.float32)[..., None])
        label = tf.constant(np.asarray(labels[s:s + batch_size], np.float32)[..., None])
        r, c = score(wgan.to_pairs(image, label))
        raw[s:s + batch_size], cal[s:s + batch_size] = r.numpy(), c.numpy()
        if time.time() - last_log > 30:
            logging.info("critic scores: %d/%d patches (%.0f s)", min(s + batch_size, n), n,
                         time.time() - started)
            last_log = time.time()
    return raw, (cal if calibrate else None)


# --- the workdir ---------------------------------------------------------------------------


def _workdir_inputs(workdir: str, overwrite: bool) -> dict:
    """Check everything the audit needs before any work; raise one clear error otherwise."""
    if not workdir:
        raise ValueError("--workdir is required")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir}: no such training workdir")
    run_path = os.path.join(workdir, "run.json")
    if not os.path.isfile(run_path):
        raise FileNotFoundError(f"{run_path}: not found; is {workdir} a training workdir "
                                f"(python -m tfdpgan.train)?")
    try:
        with open(run_path) as f:
            run = json.load(f)
    except ValueError as e:
        raise ValueError(f"{run_path}: not valid JSON ({e})") from None
    out = os.path.join(workdir, AUDIT_DIR)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    import tensorflow as tf
    checkpoint = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if checkpoint is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (the white-box attack needs the "
                                f"critic)")
    generator = os.path.join(workdir, "generator")
    if not os.path.isfile(os.path.join(generator, "saved_model.pb")):
        raise FileNotFoundError(f"{generator}: no exported generator (saved_model.pb); "
                                f"run python -m tfdpgan.export --workdir={workdir}")
    card_path = os.path.join(workdir, "privacy.json")
    card = None
    if os.path.isfile(card_path):
        with open(card_path) as f:
            card = json.load(f)
    return {"run": run, "checkpoint": checkpoint, "generator": generator, "card": card,
            "out": out}


def _data_dir(run: dict) -> str:
    """The run's TFRecord folder (run.json ``data``); the phantom default data set is
    regenerated into its cache if it was removed."""
    from tfdpgan.data import default_data, records
    data = run.get("data")
    if data and os.path.isfile(os.path.join(data, records.DATASET_JSON)):
        return data
    phantom_cache = data and os.path.basename(os.path.dirname(data)).startswith("phantom-")
    if not data or phantom_cache:
        from tfdpgan.gan import training
        config = training.config_from_run(run)
        logging.info("the run's phantom data set is missing; regenerating it")
        return default_data.prepare(config.phantom, config.cache_dir)[1]
    raise FileNotFoundError(f"{data}: the run's data set (run.json 'data') is missing")


def patches_per_patient_cap(split_counts: Sequence[np.ndarray], max_patches: int):
    """The number m of patches kept from every patient so that no split exceeds
    ``max_patches``: m = min over splits of max_patches // (patients of the split), at least
    1; None (keep all) if ``max_patches`` is 0 or no split exceeds it. Taking the same m from
    every patient of every split keeps the patients and splits comparable (the memorisation
    ratio compares equally many training and held-out patients)."""
    split_counts = [np.asarray(c) for c in split_counts]
    if not max_patches or all(c.sum() <= max_patches for c in split_counts):
        return None
    return max(1, min(max_patches // max(int((c > 0).sum()), 1) for c in split_counts))


def load_real(rec_dir: str, max_patches: int, seed: int) -> RealPatches:
    """Members (split train) and non-members (val, test), sorted by patient. With
    ``max_patches`` every patient keeps the same number of random patches (at most
    ``patches_per_patient_cap``), so no split holds more than ``max_patches``."""
    from tfdpgan.data import pipeline, records
    info = records.read_dataset_json(rec_dir)
    rng = np.random.default_rng([seed, 1])
    loaded = []
    for split in ("train",) + HELD_OUT_SPLITS:
        if info["splits"].get(split, {}).get("num_patches", 0) == 0:
            continue
        logging.info("loading split %s of %s", split, rec_dir)
        loaded.append((split, pipeline.load_arrays(rec_dir, split)))
    if not any(split == "train" for split, _ in loaded):
        raise ValueError(f"{rec_dir}: no training patches")
    if all(split == "train" for split, _ in loaded):
        raise ValueError(f"{rec_dir}: no held-out patients (splits val/test are empty); the "
                         f"audit needs non-members")
    cap = patches_per_patient_cap(
        [np.bincount(a.patient_index, minlength=len(a.patient_ids)) for _, a in loaded],
        max_patches)
    images, labels, index, ids, member, split_of = [], [], [], [], [], []
    for split, arrays in loaded:
        keep = []
        for rows in arrays.patient_records():
            if cap is not None and len(rows) > cap:
                rows = np.sort(rng.choice(rows, size=cap, replace=False))
            keep.append(rows)
        keep = np.concatenate(keep).astype(np.int64)
        images.append(np.asarray(arrays.images[keep]))
        labels.append(np.asarray(arrays.labels[keep]))
        index.append(arrays.patient_index[keep].astype(np.int64) + len(ids))
        ids += list(arrays.patient_ids)
        member += [split == "train"] * len(arrays.patient_ids)
        split_of += [split] * len(arrays.patient_ids)
    return RealPatches(np.concatenate(images), np.concatenate(labels), np.concatenate(index),
                       ids, np.asarray(member, bool), split_of, cap)


def restore_critic(run: dict, checkpoint: str, patch_size: int):
    """The critic of the run, rebuilt as tfdpgan.train builds it, with the checkpoint's
    weights (only the critic is read)."""
    import tensorflow as tf
    from tfdpgan.gan import training
    gan = training.build_wgan(training.config_from_run(run), patch_size, run)
    status = tf.train.Checkpoint(critic=gan.critic).restore(checkpoint)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{checkpoint}: the critic in the checkpoint does not match the "
                         f"run's settings ({str(e)[:200]})") from None
    status.expect_partial()
    return gan.critic


def audit_workdir(config: AuditConfig) -> dict:
    """Run the whole audit of ``config.workdir``; write W/audit/ and return audit.json's
    contents."""
    if config.num_synthetic < 1:
        raise ValueError(f"--num_synthetic must be positive, got {config.num_synthetic}")
    if config.max_patches < 0:
        raise ValueError(f"--max_patches must be >= 0, got {config.max_patches}")
    inputs = _workdir_inputs(config.workdir, config.overwrite)
    from tfdpgan.gan import export, sample
    from tfdpgan.data import records
    run = inputs["run"]
    rec_dir = _data_dir(run)
    info = records.read_dataset_json(rec_dir)
    patch = int(info["patch_size"])
    started = time.time()

    real = load_real(rec_dir, config.max_patches, config.seed)
    logging.info("real patches: %d members (%d patients), %d non-members (%d patients)",
                 int(real.member.sum()), int(real.patient_member.sum()),
                 int((~real.member).sum()), int((~real.patient_member).sum()))

    logging.info("restoring the critic from %s", inputs["checkpoint"])
    critic = restore_critic(run, inputs["checkpoint"], patch)
    raw, cal = critic_scores(critic, real.images, real.labels, config.batch_size,
                             config.calibrate)
    critic_attack = attack_from_scores(real, raw)
    calibrated_attack = attack_from_scores(real, cal) if cal is not None else None

    logging.info("sampling %d synthetic pairs from %s", config.num_synthetic,
                 inputs["generator"])
    fn, latent_dim, gen_patch = export.load_generator(inputs["generator"])
    if gen_patch != patch:
        raise ValueError(f"{inputs['generator']}: generator patch {gen_patch} != data set "
                         f"patch {patch}")
    syn_images, syn_labels = sample.generate(fn, latent_dim, config.num_synthetic, config.seed)
    gm = generator_and_memorisation(real, syn_images, syn_labels, seed=config.seed,
                                    percentile=config.near_copy_percentile,
                                    ratio_draws=config.ratio_draws, chunk=config.chunk)

    card = inputs["card"] or {}
    result = {
        "workdir": os.path.abspath(config.workdir),
        "data": os.path.abspath(rec_dir),
        "checkpoint": os.path.basename(inputs["checkpoint"]),
        "settings": dataclasses.asdict(config),
        "privacy": _privacy_section(card, real),
        "counts": _counts(real),
        "attacks": {},
        "memorisation": gm["memorisation"],
        "canaries": None,
        "distance": "RMS over image and label channels in [-1, 1] (label {0,1} -> {-1,1})",
        "seconds": None,
    }
    per_patient = {}
    for name, attack in (("critic", critic_attack), ("critic_calibrated", calibrated_attack),
                         ("generator", gm["generator_attack"])):
        if attack is None:
            continue
        per_patient[name] = attack.pop("per_patient")
        result["attacks"][name] = attack
    result["per_patient"] = [
        {"patient_id": pid, "split": real.patient_split[i],
         "member": bool(real.patient_member[i]),
         "num_patches": int(np.sum(real.patient_index == i)),
         **{f"{name}_score": _finite(values[i]) for name, values in per_patient.items()}}
        for i, pid in enumerate(real.patient_ids)]
    result["seconds"] = round(time.time() - started, 1)
    result = _json_ready(result)
    png = _near_copies_png(syn_images, syn_labels, real, gm["_d_train"], gm["_nearest_train"],
                           config.num_png)
    write_outputs(inputs["out"], result, png, config.overwrite)
    return result


def _counts(real: RealPatches) -> dict:
    member = real.member
    return {"member_patients": int(real.patient_member.sum()),
            "nonmember_patients": int((~real.patient_member).sum()),
            "member_patches": int(member.sum()), "nonmember_patches": int((~member).sum()),
            "nonmember_splits": sorted({s for s in real.patient_split if s != "train"}),
            "patches_per_patient_cap": real.patches_per_patient_cap}


def _privacy_section(card: dict, real: RealPatches) -> dict:
    """ε, δ of the run and the TPR bounds they imply at the target FPRs."""
    private = bool(card.get("private")) and card.get("epsilon") is not None
    section = {"private": private, "epsilon": card.get("epsilon"), "delta": card.get("delta"),
               "privacy_unit": card.get("privacy_unit"), "bounds": None}
    if not private:
        return section
    eps, delta, unit = float(card["epsilon"]), float(card["delta"] or 0.0), card["privacy_unit"]
    if unit == "patient":
        group = 1
    else:
        counts = np.bincount(real.patient_index[real.member])
        group = int(card.get("patches_per_patient") or (counts.max() if len(counts) else 1))
    section["bounds"] = {
        "per_record": {_key(f): dp_tpr_bound(eps, delta, f) for f in TARGET_FPRS},
        "per_patient": {_key(f): dp_tpr_bound(eps, delta, f, group) for f in TARGET_FPRS},
        "patient_group_size": group,
    }
    return section


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _json_ready(obj):
    """Plain JSON: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _near_copies_png(syn_images, syn_labels, real: RealPatches, d_train, nearest_train,
                     num: int) -> Optional[np.ndarray]:
    """The ``num`` synthetic pairs closest to a training patch, each beside that patch."""
    from tfdpgan.gan import sample
    if len(d_train) == 0 or len(nearest_train) == 0 or num < 1:
        return None
    order = np.argsort(d_train, kind="stable")[:num]
    cells_img, cells_lab = [], []
    for i in order:
        j = nearest_train[i]
        cells_img += [syn_images[i], real.images[j]]
        cells_lab += [syn_labels[i], real.labels[j]]
    return sample.overlay_grid(np.stack(cells_img), np.stack(cells_lab), columns=4)


def write_outputs(out_dir: str, result: dict, png: Optional[np.ndarray], overwrite: bool):
    """audit.json, AUDIT.md and near_copies.png, all appearing at once."""
    with atomic.staged_dir(out_dir, overwrite) as staging:
        atomic.write_json_atomic(os.path.join(staging, AUDIT_JSON), result)
        atomic.write_text_atomic(os.path.join(staging, AUDIT_MD), render_markdown(result))
        if png is not None:
            import tensorflow as tf
            tf.io.write_file(os.path.join(staging, NEAR_COPIES_PNG), tf.io.encode_png(png))


# --- the report ----------------------------------------------------------------------------


ATTACK_NAMES = {
    "critic": "critic D(x) (white-box)",
    "critic_calibrated": "critic, calibrated (white-box)",
    "generator": "nearest synthetic (black-box)",
}


def _f(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _n(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _tpr_cell(attack_level: dict, fpr: float) -> str:
    key = _key(fpr)
    value = attack_level["tpr_at_fpr"][key]
    text = _pct(value)
    if value is not None and not attack_level["fpr_resolved"][key]:
        text += " †"
    return text


def render_markdown(result: dict) -> str:
    """AUDIT.md: every number of audit.json in plain words."""
    p, c, m = result["privacy"], result["counts"], result["memorisation"]
    bounds = p.get("bounds")
    lines = [
        "# Leakage audit", "",
        "**Internal measurement for the data holder — not a release.** It was computed from "
        "the private training patches, the held-out patients and the critic checkpoint; this "
        "folder names patients and `near_copies.png` shows training patches. Keep it with the "
        "checkpoints, inside the institution. Auditing spends no privacy budget and does not "
        "change the run's guarantee.", "",
        f"- Run: `{result['workdir']}` (checkpoint `{result['checkpoint']}`)",
        "- Privacy: " + (f"(ε = {p['epsilon']:.3g}, δ = {p['delta']:.3g})-DP per "
                          f"**{p['privacy_unit']}**" if p["private"]
                          else "**not private** (ε = ∞): no bound applies"),
        f"- Members: {c['member_patches']} patches of "
        f"{_n(c['member_patients'], 'training patient')}. Non-members: "
        f"{c['nonmember_patches']} patches of {_n(c['nonmember_patients'], 'held-out patient')}"
        f" (splits "
        f"{', '.join(c['nonmember_splits'])}). "
        + ("All patches of every patient." if c["patches_per_patient_cap"] is None else
           f"At most {c['patches_per_patient_cap']} random patches per patient (the same "
           f"share from every patient, so that no split exceeds "
           f"{result['settings']['max_patches']})."),
        f"- Synthetic pairs sampled from `generator/`: {m['num_synthetic']} "
        f"(seed {result['settings']['seed']}).", "",
        "## (a) Membership inference", "",
        "An attack gives every real patch a score; the higher, the more it claims the patch "
        "(or, per patient, the patient: mean of the patient's patch scores) was in the "
        "training set. **AUC** is the probability that a random member scores above a random "
        "non-member: **0.5 means no leakage** (a coin flip), 1 means members are perfectly "
        "recognisable; ± is its standard error (Hanley-McNeil), which at patch level treats "
        "patches as independent although a patient's patches are alike, so it is too small "
        "there: the patient rows are the honest unit, and with few patients they are coarse. "
        "**TPR @ FPR** is the share of members the attack catches when it may wrongly accuse "
        "only that share of non-members (1 % and 0.1 %); without leakage TPR = FPR. "
        "TPR @ 0 is the share of members scored above every non-member.", "",
    ]
    header = "| attack | level | AUC | TPR @ 1 % | TPR @ 0.1 % | TPR @ 0 |"
    if bounds:
        header += " DP bound @ 1 % | DP bound @ 0.1 % |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for name, attack in result["attacks"].items():
        for level in ("patch", "patient"):
            a = attack[level]
            row = (f"| {ATTACK_NAMES.get(name, name)} | {level} ({a['num_members']} vs "
                   f"{a['num_nonmembers']}) | {_f(a['auc'])} ± {_f(a.get('auc_se'))} | "
                   f"{_tpr_cell(a, 0.01)} | "
                   f"{_tpr_cell(a, 0.001)} | {_pct(a['tpr_at_fpr_0'])} |")
            if bounds:
                b = bounds["per_record"] if level == "patch" else bounds["per_patient"]
                row += f" {_pct(b['0.01'])} | {_pct(b['0.001'])} |"
            lines.append(row)
    lines += [
        "",
        "† Not resolved: with n non-members the smallest false-positive rate a threshold can "
        "reach is 1/n, so this FPR lies below it; the value is interpolated on the ROC curve "
        "between FPR 0 and 1/n (a randomised threshold) and rests on a single non-member"
        + ("; such a value can exceed the DP bound by chance alone." if bounds else "."), "",
        "- **critic D(x)**: the critic's output on the real (image, label) pair. Someone "
        "holding the critic checkpoint could run it; the critic is not released.",
        "- **critic, calibrated**: D(x) minus the mean of D over the 7 other flips and "
        "rotations of the same pair, which removes how much the critic likes this kind of "
        "content (the patch's difficulty) and keeps how much more it likes this exact patch.",
        "- **nearest synthetic**: minus the distance from the patch to its nearest synthetic "
        "pair — what a recipient of the synthetic data can do.",
        "",
    ]
    if bounds:
        k = bounds["patient_group_size"]
        if p["privacy_unit"] == "patient":
            lines.append(
                "**DP bound.** An (ε, δ)-DP guarantee limits *any* membership attack: "
                "TPR ≤ e^ε · FPR + δ. The record is the patient, so the bound holds for the "
                "patient-level rows and, since a patch's membership here is its patient's, "
                "for the patch-level rows too.")
        else:
            lines.append(
                "**DP bound.** An (ε, δ)-DP guarantee limits *any* membership attack: "
                "TPR ≤ e^ε · FPR + δ. The record is the patch, and the patch-level bound "
                "shown is for a single patch; here a member patch's whole patient (up to "
                f"{k} patches, many overlapping) is in the training set, and for a patient "
                f"group privacy gives only (kε, k·e^((k-1)ε)·δ), whose bound (patient rows) "
                f"is usually vacuous. Measured TPRs above the patch bound therefore do not "
                f"contradict the guarantee, but they show leakage a patient-level guarantee "
                f"would rule out.")
        lines.append("")
    cal = result["attacks"].get("critic")
    if cal:
        lines += [f"Mean critic score: members {_f(cal['mean_member'], 4)}, non-members "
                  f"{_f(cal['mean_nonmember'], 4)}.", ""]
    r = m["ratio"]
    lines += [
        "## (b) Memorisation", "",
        "Distances are root-mean-square differences over the image and label channels in "
        "[-1, 1] (label {0,1} → {-1,1}): 0 = identical.", "",
        f"- **d_train / d_held**: for each synthetic pair, the distance to its nearest training "
        f"patch divided by the distance to its nearest held-out patch. The training reference "
        f"is {_n(m['train_patients_per_draw'], 'random training patient')} "
        f"(~{_f(m['train_patches_per_draw_mean'], 0)} patches), as many as the "
        f"{_n(m['held_out_patients'], 'held-out patient')} ({m['held_out_patches']} patches), so "
        f"both references are equally large and diverse; averaged over {m['ratio_draws']} "
        f"random draws.",
        f"  - median {_f(r['median'])}, 5th percentile {_f(r['p5'])}; **fraction below 1: "
        f"{_f(r['fraction_below_1'])}** (range over draws "
        + ("n/a" if m["ratio_fraction_below_1_range"] is None else
           f"{m['ratio_fraction_below_1_range'][0]:.3f}–"
           f"{m['ratio_fraction_below_1_range'][1]:.3f}")
        + "). **Without memorisation ≈ 0.5** (and median ≈ 1): a synthetic pair is then as "
        "likely to resemble an unseen patient as a training one. Clearly above 0.5 means the "
        "generator reproduces training patients more closely than new ones.",
        f"- **Near-copies: {m['near_copies']} of {m['num_synthetic']}** synthetic pairs "
        f"({_pct(m['near_copy_fraction'])}) lie closer to a training patch than τ = "
        f"{_f(m['tau'], 4)}, the {m['tau_percentile']:g} % percentile of the distances from "
        f"held-out patches to their nearest training patch. A fresh patch from the same "
        f"population lands this close to a training patch in ~{m['tau_percentile']:g} % of "
        f"cases, so **without memorisation ≲ {m['tau_percentile']:g} %**. Closest synthetic-to-"
        f"training distance: {_f(m['min_d_train'], 4)}.",
    ]
    far = (m["d_train_all_median"] is not None and m["held_to_train_median"] is not None
           and m["d_train_all_median"] > 2 * m["held_to_train_median"])
    if far:
        lines.append(
            "- **Caution:** typical synthetic pairs are much farther from every real patch than "
            "real patches are from each other (medians below). Their nearest real patch is "
            "then decided by coarse properties that many synthetic pairs share, so the "
            "fraction above moves in large jumps between draws (see its range) and says "
            "little about memorisation; the near-copy count remains meaningful.")
    lines += [
        f"- Medians: synthetic → nearest training patch (all) {_f(m['d_train_all_median'], 4)}, "
        f"synthetic → nearest held-out patch {_f(m['d_held_median'], 4)}, held-out → nearest "
        f"training patch {_f(m['held_to_train_median'], 4)}.",
        f"- `{NEAR_COPIES_PNG}`: the synthetic pairs closest to a training patch, each cell "
        f"pair = synthetic (image | label overlay) then its nearest training patch (image | "
        f"overlay), two pairs per row, closest first.", "",
        "## (c) Canaries", "",
        "Not run: planting canary records needs a separate training run.", "",
    ]
    if len(result["per_patient"]) <= 60:
        names = [n for n in ("critic", "critic_calibrated", "generator")
                 if n in result["attacks"]]
        lines += ["## Per patient (mean score of the patient's patches)", "",
                  "| patient | split | member | patches | " + " | ".join(names) + " |",
                  "|" + "---|" * (4 + len(names))]
        for row in result["per_patient"]:
            lines.append(f"| {row['patient_id']} | {row['split']} | "
                         f"{'yes' if row['member'] else 'no'} | {row['num_patches']} | "
                         + " | ".join(_f(row.get(f"{n}_score"), 4) for n in names) + " |")
        lines.append("")
    lines.append(f"Computed in {result['seconds']} s.")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    """A few lines for the terminal."""
    p, m = result["privacy"], result["memorisation"]
    eps = (f"ε = {p['epsilon']:.3g} per {p['privacy_unit']}" if p["private"]
           else "ε = ∞ (not private)")
    lines = [f"audit of {result['workdir']} ({eps}); no leakage: AUC 0.5, fraction 0.5"]
    bounds = p.get("bounds")
    for name, attack in result["attacks"].items():
        for level in ("patch", "patient"):
            a = attack[level]
            text = (f"  {ATTACK_NAMES.get(name, name):32s} {level:7s} AUC {_f(a['auc'])}  "
                    f"TPR@1% {_pct(a['tpr_at_fpr']['0.01'])}")
            if bounds:
                b = bounds["per_record"] if level == "patch" else bounds["per_patient"]
                text += f" (DP bound {_pct(b['0.01'])})"
            lines.append(text)
    r = m["ratio"]
    lines.append(f"  memorisation: d_train/d_held median {_f(r['median'])}, fraction < 1 "
                 f"{_f(r['fraction_below_1'])}; near-copies {m['near_copies']}/"
                 f"{m['num_synthetic']} (τ {_f(m['tau'], 4)})")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a program)."""
    d = AuditConfig(workdir="")
    flags.DEFINE_string("workdir", None, "Training workdir to audit.")
    flags.DEFINE_integer("num_synthetic", d.num_synthetic, "Synthetic pairs to sample.")
    flags.DEFINE_integer("max_patches", d.max_patches, "At most this many random patches per "
                         "split (train, val, test), the same number from every patient; "
                         "0 = all.")
    flags.DEFINE_integer("seed", d.seed, "Seed of the subsampling and of the latents.")
    flags.DEFINE_boolean("calibrate", d.calibrate, "Also the calibrated critic attack (8 "
                         "critic evaluations per patch).")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing W/audit/.")


def main(argv):
    del argv
    config = AuditConfig(workdir=FLAGS.workdir, num_synthetic=FLAGS.num_synthetic,
                         max_patches=FLAGS.max_patches, seed=FLAGS.seed,
                         calibrate=FLAGS.calibrate, overwrite=FLAGS.overwrite)
    try:
        result = audit_workdir(config)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(result))
    out = os.path.join(config.workdir, AUDIT_DIR)
    print(f"wrote {os.path.join(out, AUDIT_JSON)}, {os.path.join(out, AUDIT_MD)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
