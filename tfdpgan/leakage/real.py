"""The real patches of an audit: members and non-members of a training run.

Members are the run's training patients (split ``train`` of its TFRecord data set);
non-members are the held-out patients of the same data set (``val`` and, if present,
``test``). Assumption: the split is by patient, so a held-out patient contributed no patch to
training (tfdpgan.data.convert splits that way); the membership of a patch is its patient's.
With ``max_patches`` every patient keeps the same number of random patches, small enough that
no split holds more than ``max_patches``.
"""
import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np
from absl import logging

from tfdpgan import errors
from tfdpgan.data import default_data, pipeline, records
from tfdpgan.gan import run as gan_run

__all__ = ["HELD_OUT_SPLITS", "RealPatches", "run_data_dir", "patches_per_patient_cap",
           "load_real", "drop_patients", "counts"]

HELD_OUT_SPLITS = ("val", "test")


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


def run_data_dir(run: dict) -> str:
    """The run's TFRecord folder (run.json ``data``); the phantom default data set is
    regenerated into its cache if it was removed (it is data-independent: same settings,
    same data)."""
    data = run.get("data")
    if data and os.path.isfile(os.path.join(data, records.DATASET_JSON)):
        return data
    phantom_cache = data and os.path.basename(os.path.dirname(data)).startswith("phantom-")
    if not data or phantom_cache:
        config = gan_run.config_from_run(run)
        logging.info("the run's phantom data set is missing; regenerating it")
        return default_data.prepare(config.phantom, config.cache_dir)[1]
    raise errors.MissingFileError(f"{data}: the run's data set (run.json 'data') is missing")


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


def _load_splits(rec_dir: str) -> list:
    """[(split, PatchArrays)] of the non-empty splits train, val, test; InputDataError when
    there are no members or no non-members."""
    info = records.read_dataset_json(rec_dir)
    loaded = []
    for split in ("train",) + HELD_OUT_SPLITS:
        if info["splits"].get(split, {}).get("num_patches", 0) == 0:
            continue
        logging.info("loading split %s of %s", split, rec_dir)
        loaded.append((split, pipeline.load_arrays(rec_dir, split)))
    if not any(split == "train" for split, _ in loaded):
        raise errors.InputDataError(f"{rec_dir}: no training patches")
    if all(split == "train" for split, _ in loaded):
        raise errors.InputDataError(f"{rec_dir}: no held-out patients (splits val/test are "
                                    f"empty); the audit needs non-members")
    return loaded


def load_real(rec_dir: str, max_patches: int, seed: int) -> RealPatches:
    """Members (split train) and non-members (val, test), sorted by patient. With
    ``max_patches`` every patient keeps the same number of random patches (at most
    ``patches_per_patient_cap``), so no split holds more than ``max_patches``."""
    loaded = _load_splits(rec_dir)
    rng = np.random.default_rng([seed, 1])
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


def drop_patients(real: RealPatches, exclude) -> RealPatches:
    """``real`` without the patients in ``exclude`` (e.g. the canary patients of a canaried
    data set, whose planted signatures would otherwise dominate the membership attacks)."""
    exclude = set(exclude)
    keep_patient = np.array([pid not in exclude for pid in real.patient_ids], bool)
    if keep_patient.all():
        return real
    new_index = np.cumsum(keep_patient) - 1
    rows = keep_patient[real.patient_index]
    return RealPatches(
        real.images[rows], real.labels[rows], new_index[real.patient_index[rows]],
        [p for p, k in zip(real.patient_ids, keep_patient) if k],
        real.patient_member[keep_patient],
        [s for s, k in zip(real.patient_split, keep_patient) if k],
        real.patches_per_patient_cap)


def counts(real: RealPatches) -> dict:
    """audit.json's ``counts``: patients and patches on each side."""
    member = real.member
    return {"member_patients": int(real.patient_member.sum()),
            "nonmember_patients": int((~real.patient_member).sum()),
            "member_patches": int(member.sum()), "nonmember_patches": int((~member).sum()),
            "nonmember_splits": sorted({s for s in real.patient_split if s != "train"}),
            "patches_per_patient_cap": real.patches_per_patient_cap}
