"""Exposure of planted canaries (tfdpgan.leakage.canaries): does a trained run single out the
signatures that were in its training data among candidates from the same distribution that
never were?

Each of the C candidate signatures gets a score; the k inserted ones are the "members", the
C − k never-inserted ones the "non-members". Reported (``exposure_metrics``):
  auc            P(inserted candidate scores above a never-inserted one): 0.5 = no exposure,
                 1 = every canary ranked above every never-inserted candidate
  tpr_at_fpr     TPR at FPR 1 % / 0.1 % (tfdpgan.leakage.attacks), next to the DP bound
                 TPR ≤ e^ε·FPR + δ for a canary: a canary is a whole patient, so under a
                 per-patch guarantee the bound is group privacy over its n patches
                 (ε·n, n·e^((n−1)ε)·δ), often vacuous; under a per-patient guarantee it is
                 the run's (ε, δ) itself
  exposure_bits  Carlini et al. (2019, "The secret sharer"): log2 C − log2 rank of each
                 canary among all candidates (rank 1 = highest score); ≈ 1 bit on average
                 without exposure, log2 C when the canary is ranked first

Scores:
  critic     (white-box) mean critic score D of held-out patches with the candidate stamped
             in: the same base patches for every candidate, so only the signature differs.
  generator  (black-box) how well synthetic pairs reproduce the candidate: per synthetic pair
             the fraction of the signature's pixels that are labelled vessel and bright
             (image > 0); the candidate's score is the 99th percentile of that fraction over
             the synthetic pairs, and ``reproduction`` the share of pairs reproducing ≥ 90 %.
"""
import math
from typing import Optional, Sequence

import numpy as np

from tfdpgan import errors
from tfdpgan.leakage import attacks, canaries, critic

__all__ = ["REPRODUCED", "exposure_bits", "exposure_metrics", "critic_candidate_scores",
           "signature_match", "generator_candidate_scores", "canary_group_size",
           "canary_bounds"]

REPRODUCED = 0.9    # a synthetic pair reproduces a signature if it covers >= 90 % of its pixels


def exposure_bits(scores, inserted: Sequence[int]) -> np.ndarray:
    """Carlini exposure log2 C − log2 rank of each inserted candidate (rank among all C
    candidates, 1 = highest score; ties get their average rank)."""
    scores = np.asarray(scores, np.float64)
    higher = (scores[None, :] > scores[np.asarray(inserted)][:, None]).sum(1)
    ties = (scores[None, :] == scores[np.asarray(inserted)][:, None]).sum(1)
    rank = higher + (ties + 1) / 2.0
    return math.log2(len(scores)) - np.log2(rank)


def exposure_metrics(scores, inserted: Sequence[int], bounds: Optional[dict] = None) -> dict:
    """AUC, TPR at FPR, ranks and exposure of the inserted candidates (module docstring);
    ``bounds`` (canary_bounds) is copied in next to the TPRs."""
    scores = np.asarray(scores, np.float64)
    inserted = np.asarray(sorted(inserted), np.int64)
    if len(inserted) == 0 or len(inserted) >= len(scores):
        raise errors.SettingsError("exposure needs inserted and never-inserted candidates")
    is_inserted = np.zeros(len(scores), bool)
    is_inserted[inserted] = True
    m = attacks.attack_metrics(scores[is_inserted], scores[~is_inserted])
    bits = exposure_bits(scores, inserted)
    return {"auc": m["auc"], "auc_se": m["auc_se"], "tpr_at_fpr": m["tpr_at_fpr"],
            "fpr_resolved": m["fpr_resolved"], "num_inserted": int(len(inserted)),
            "num_candidates": int(len(scores)),
            "exposure_bits": [float(b) for b in bits],
            "mean_exposure_bits": float(np.mean(bits)),
            "max_exposure_bits": float(math.log2(len(scores))),
            "score_inserted_mean": float(scores[is_inserted].mean()),
            "score_other_mean": float(scores[~is_inserted].mean()),
            "dp_bound": bounds}


def critic_candidate_scores(critic_fn, base_images, base_labels, masks, intensity: float,
                            batch_size: int = 256) -> np.ndarray:
    """[C]: the mean raw critic score of the base patches with each candidate stamped in
    (critic.critic_scores without calibration: the base patches are the same for every
    candidate, so their own difficulty cancels in the ranking)."""
    stamped_images, stamped_labels = [], []
    for mask in masks:
        image, label = canaries.stamp(base_images, base_labels, mask, intensity)
        stamped_images.append(image)
        stamped_labels.append(label)
    raw, _ = critic.critic_scores(critic_fn, np.concatenate(stamped_images),
                                  np.concatenate(stamped_labels), batch_size, calibrate=False)
    return raw.reshape(len(masks), len(base_images)).mean(axis=1)


def signature_match(syn_images, syn_labels, masks) -> np.ndarray:
    """[S, C]: for every synthetic pair and candidate, the fraction of the candidate's pixels
    that the pair labels vessel (label 1) and shows bright (image > 0)."""
    n = len(syn_images)
    hit = ((np.asarray(syn_labels).reshape(n, -1) > 0)
           & (np.asarray(syn_images).reshape(n, -1) > 0)).astype(np.float32)
    flat = np.asarray(masks, np.float32).reshape(len(masks), -1)
    return (hit @ flat.T) / np.maximum(flat.sum(1), 1.0)[None, :]


def generator_candidate_scores(syn_images, syn_labels, masks):
    """([C] score = 99th percentile of signature_match over the synthetic pairs,
    [C] reproduction = share of pairs with match ≥ REPRODUCED)."""
    match = signature_match(syn_images, syn_labels, masks)
    return np.percentile(match, 99, axis=0), (match >= REPRODUCED).mean(axis=0)


def canary_group_size(section: dict, privacy_unit: Optional[str]) -> int:
    """Records per canary: 1 under a per-patient guarantee, else the largest number of patches
    of a canary patient (each of them a record of a per-patch guarantee)."""
    if privacy_unit == "patient":
        return 1
    return max(int(n) for n in section["num_patches"].values())


def canary_bounds(card: dict, section: dict) -> Optional[dict]:
    """The DP bound on any canary test at each target FPR (group privacy over a canary's
    records), or None for a non-private run."""
    if not card.get("private") or card.get("epsilon") is None:
        return None
    group = canary_group_size(section, card.get("privacy_unit"))
    eps, delta = float(card["epsilon"]), float(card.get("delta") or 0.0)
    return {"group_size": group, "epsilon": eps, "delta": delta,
            "tpr": {attacks.fpr_key(f): attacks.dp_tpr_bound(eps, delta, f, group)
                    for f in attacks.TARGET_FPRS}}


def canary_exposure(info: dict, card: dict, held_images, held_labels, critic_fn, syn_images,
                    syn_labels, num_base: int = 64, seed: int = 0,
                    batch_size: int = 256) -> Optional[dict]:
    """audit.json's ``canaries`` for a run on a canaried data set (dataset.json ``info``), or
    None without canaries. ``held_images``/``held_labels``: held-out (non-member) patches,
    ``num_base`` of which (seeded) carry each candidate for the critic score; ``card``: the
    run's privacy card (for the DP bound)."""
    section = canaries.read_canaries(info)
    if section is None:
        return None
    masks = canaries.canary_masks(section)
    if len(held_images) == 0:
        raise errors.InputDataError("canary exposure needs held-out patches")
    rng = np.random.default_rng([seed, 17])
    base = np.sort(rng.choice(len(held_images), min(num_base, len(held_images)),
                              replace=False))
    bounds = canary_bounds(card, section)
    inserted = [int(c) for c in section["inserted"]]
    critic_scores = critic_candidate_scores(
        critic_fn, np.asarray(held_images)[base], np.asarray(held_labels)[base], masks,
        float(section["intensity"]), batch_size)
    gen_scores, reproduction = generator_candidate_scores(syn_images, syn_labels, masks)
    generator = exposure_metrics(gen_scores, inserted, bounds)
    other = np.setdiff1d(np.arange(len(masks)), inserted)
    generator.update(reproduction_inserted=float(reproduction[inserted].mean()),
                     reproduction_other=float(reproduction[other].mean()),
                     reproduced_threshold=REPRODUCED)
    return {"patients": section["patients"], "num_patches": section["num_patches"],
            "num_candidates": len(masks), "inserted": inserted, "base_patches": len(base),
            "num_synthetic": int(len(syn_images)), "dp_bound": bounds,
            "critic": exposure_metrics(critic_scores, inserted, bounds),
            "generator": generator}
