"""Nearest-neighbour distances between real and synthetic pairs: the black-box generator
attack and the memorisation statistics.

Distances are root-mean-square differences over both channels of the pair in the critic's
scale: image in [-1, 1] and label mapped {0, 1} -> {-1, 1}; 0 = identical, 2 = opposite.

- Generator attack (what a recipient of synthetic data can do): the score of a real patch is
  minus its distance to the nearest synthetic pair.
- Memorisation: for each synthetic pair the distance to the nearest training patch and to the
  nearest held-out patch, with as many training patients as held-out patients (random draws,
  averaged), the fraction closer to training (0.5 without memorisation) and the near-copies:
  synthetic pairs closer to a training patch than τ, the 1st percentile of the
  held-out-to-training nearest-neighbour distances (≈ 1 % without memorisation).
"""
import dataclasses
import time
from typing import List, Optional

import numpy as np
from absl import logging

from tfdpgan.leakage.attacks import attack_from_scores
from tfdpgan.leakage.real import RealPatches

__all__ = ["pair_vectors", "CrossNearest", "cross_nearest", "nearest", "ratio_stats",
           "generator_and_memorisation"]


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


def _squared_norms(x) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)


def _update_groups(d2, groups, offset, g_d2, g_index):
    """Fold one block of squared distances (rows ``offset``.. of a, all of b) into the
    per-group minima ``g_d2`` / ``g_index`` (in place)."""
    cols = np.arange(d2.shape[1])
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        sub = d2[rows]
        best = sub.argmin(axis=0)
        value = sub[best, cols]
        better = value < g_d2[g]
        g_d2[g, better] = value[better]
        g_index[g, better] = offset + rows[best[better]]


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
    b_sq = _squared_norms(bc)
    a_index = np.zeros(n, np.int64)
    g_d2 = np.full((num_groups, m), np.inf, np.float32)
    g_index = np.full((num_groups, m), -1, np.int64)
    started, last_log = time.time(), time.time()
    for s in range(0, n, chunk):
        ac = a[s:s + chunk] - mean
        d2 = _squared_norms(ac)[:, None] + b_sq[None, :] - 2.0 * (ac @ bc.T)
        if m:
            a_index[s:s + len(ac)] = d2.argmin(axis=1)
        if num_groups:
            _update_groups(d2, a_groups[s:s + chunk], s, g_d2, g_index)
        if progress and time.time() - last_log > 30:
            logging.info("%s: %d/%d rows (%.0f s)", progress, min(s + chunk, n), n,
                         time.time() - started)
            last_log = time.time()
    a_dist = _rms_rows(a, b, np.arange(n), a_index) if m else np.full(n, np.inf)
    g_dist = np.full((num_groups, m), np.inf)
    valid = g_index >= 0
    if valid.any():
        cols = np.broadcast_to(np.arange(m), valid.shape)
        g_dist[valid] = _rms_rows(a, b, g_index[valid], cols[valid])
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


def _median(x):
    x = np.asarray(x)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def _average_draws(draws: List[dict]) -> dict:
    if not draws:
        return ratio_stats([], [])
    return {key: float(np.mean([d[key] for d in draws])) for key in
            ("median", "p5", "fraction_below_1")} | {"num": draws[0]["num"]}


def _ratio_draws(real: RealPatches, group_dist, d_held, rng, ratio_draws: int) -> dict:
    """d_train / d_held with as many random training patients as held-out patients,
    ``ratio_draws`` times: the memorisation keys about the draws."""
    train_p = np.flatnonzero(real.patient_member)
    held_p = np.flatnonzero(~real.patient_member)
    k = min(len(held_p), len(train_p))
    counts = np.bincount(real.patient_index, minlength=len(real.patient_ids))
    draws, sub_patches = [], []
    for _ in range(ratio_draws if k else 0):
        chosen = rng.choice(train_p, size=k, replace=False)
        draws.append(ratio_stats(group_dist[chosen].min(axis=0), d_held))
        sub_patches.append(int(counts[chosen].sum()))
    return {
        "held_out_patients": int(len(held_p)),
        "held_out_patches": int(counts[held_p].sum()),
        "train_patients_per_draw": int(k),
        "train_patches_per_draw_mean": float(np.mean(sub_patches)) if sub_patches else None,
        "ratio_draws": len(draws),
        "ratio": _average_draws(draws),
        "ratio_fraction_below_1_range": ([min(d["fraction_below_1"] for d in draws),
                                          max(d["fraction_below_1"] for d in draws)]
                                         if draws else None),
    }


def _nearest_split(real: RealPatches, cross: CrossNearest, num_synthetic: int):
    """(d_train, d_held, nearest_train) per synthetic pair: distance to the nearest training
    and held-out patch, and the index (into ``real``) of that training patch."""
    train_p = np.flatnonzero(real.patient_member)
    held_p = np.flatnonzero(~real.patient_member)
    g = cross.group_dist
    d_train = g[train_p].min(axis=0) if len(train_p) else np.full(num_synthetic, np.inf)
    d_held = g[held_p].min(axis=0) if len(held_p) else np.full(num_synthetic, np.inf)
    nearest_train = np.zeros(0, np.int64)
    if len(train_p) and num_synthetic:
        best = g[train_p].argmin(axis=0)              # which training patient, per synthetic
        nearest_train = cross.group_index[train_p][best, np.arange(num_synthetic)]
    return d_train, d_held, nearest_train


def generator_and_memorisation(real: RealPatches, syn_images, syn_labels, *, seed: int = 0,
                               percentile: float = 1.0, ratio_draws: int = 20,
                               chunk: int = 1024) -> dict:
    """The black-box generator attack and the memorisation statistics (see the module doc).

    Returns a JSON-ready dict plus the arrays ``_scores`` (per real patch), ``_d_train`` and
    ``_nearest_train`` (per synthetic pair; index into ``real``)."""
    rng = np.random.default_rng([seed, 2])
    real_vec = pair_vectors(real.images, real.labels)
    syn_vec = pair_vectors(syn_images, syn_labels)
    logging.info("distances: %d real x %d synthetic pairs", len(real_vec), len(syn_vec))
    cross = cross_nearest(real_vec, syn_vec, real.patient_index, len(real.patient_ids), chunk,
                          progress="real-synthetic distances")
    scores = -cross.a_dist
    d_train, d_held, nearest_train = _nearest_split(real, cross, len(syn_vec))

    # τ from real data: held-out patches' nearest training patch
    member = real.member
    logging.info("distances: %d held-out x %d training patches", int((~member).sum()),
                 int(member.sum()))
    held_to_train, _ = nearest(real_vec[~member], real_vec[member], chunk)
    tau = float(np.percentile(held_to_train, percentile)) if len(held_to_train) else None
    near = int(np.sum(d_train < tau)) if tau is not None else 0
    memorisation = {
        "num_synthetic": int(len(syn_vec)),
        **_ratio_draws(real, cross.group_dist, d_held, rng, ratio_draws),
        "d_train_all_median": _median(d_train),
        "d_held_median": _median(d_held),
        "held_to_train_median": _median(held_to_train),
        "tau": tau,
        "tau_percentile": float(percentile),
        "near_copies": near,
        "near_copy_fraction": near / len(syn_vec) if len(syn_vec) else None,
        "min_d_train": float(d_train.min()) if len(d_train) else None,
    }
    return {"generator_attack": attack_from_scores(real, scores),
            "memorisation": memorisation, "_scores": scores, "_d_train": d_train,
            "_nearest_train": nearest_train}
