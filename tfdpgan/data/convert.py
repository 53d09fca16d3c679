"""Convert labelled NIfTI volumes into TFRecord patch shards plus ``dataset.json``, atomically.

Two passes: first every case's headers are checked (readable, 3-D, shapes, affines and
orientation agree, patch fits, ids unique), so most mistakes stop the run before any voxel
is read; then each volume is read in full, validated (finite, binary non-empty label, binary
mask) and its patches are written into a hidden staging folder beside ``out_dir``. Only a
complete dataset is renamed to ``out_dir``; on any error the staging folder is removed, so no
later training run can pick up a half-written dataset.

Patients, not patches, are split: a patient's patches all go to one split. Patch sampling is
deterministic for a given seed and case list.
"""
import dataclasses
import datetime
import os
import time
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from absl import logging

import tfdpgan
from tfdpgan import atomic
from tfdpgan.data import patches, records, volumes


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    patch_size: int = 96
    patches_per_patient: int = 1000
    vessel_fraction: float = 0.5
    val_fraction: float = 0.1
    normalization: str = "percentile"
    percentile: float = 99.95
    intensity_range: Optional[Tuple[float, float]] = None   # for normalization="fixed"
    num_shards: int = 4                                      # per split, at most one per patient
    seed: int = 0

    def validate(self):
        if self.patch_size < 2:
            raise ValueError(f"patch_size must be at least 2, got {self.patch_size}")
        if self.patches_per_patient < 1:
            raise ValueError(f"patches_per_patient must be positive, "
                             f"got {self.patches_per_patient}")
        if not 0.0 <= self.vessel_fraction <= 1.0:
            raise ValueError(f"vessel_fraction must be in [0, 1], got {self.vessel_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be positive, got {self.num_shards}")
        if self.normalization not in patches.NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {patches.NORMALIZATIONS}")
        if self.normalization == "fixed" and (
                self.intensity_range is None
                or not self.intensity_range[1] > self.intensity_range[0]):
            raise ValueError("normalization=fixed needs intensity_range low,high with low < high")


def split_patients(patient_ids: Sequence[str], val_fraction: float, seed: int) -> dict:
    """Random patient-level train/val split; at least one patient stays in train, and a
    positive val_fraction holds out at least one patient when there are two or more."""
    ids = sorted(patient_ids)
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return {"train": [p for p in ids if p not in set(val)], "val": val}


def _patient_rng(seed: int, patient_id: str) -> np.random.Generator:
    """Patch-sampling RNG of one patient: depends on the seed and the id only."""
    return np.random.default_rng([seed, *patient_id.encode()])


def _log_progress(done: int, total: int, patient_id: str, n: int, start: float):
    elapsed = time.time() - start
    eta = elapsed / done * (total - done)
    logging.info("converted %d/%d patients (%s: %d patches), %.0f s elapsed, ~%.0f s left",
                 done, total, patient_id, n, elapsed, eta)


def convert(train_cases: Sequence[volumes.Case], out_dir: str, config: ConvertConfig,
            test_cases: Sequence[volumes.Case] = (), converter_flags: Optional[dict] = None,
            overwrite: bool = False, progress: Callable = _log_progress) -> dict:
    """Write the dataset to ``out_dir`` and return its ``dataset.json`` content.

    Raises volumes.InputError (bad data; names the file) or ValueError (bad settings);
    in both cases nothing is left on disk.
    """
    config.validate()
    if not train_cases:
        raise volumes.InputError("no training cases found (expected imagesTr/*.nii.gz "
                                 "or a manifest with at least one row)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists; choose another --out_dir or "
                              f"pass --overwrite")
    all_cases = list(train_cases) + list(test_cases)
    volumes.check_unique_ids(all_cases)
    for case in all_cases:
        volumes.check_headers(case, config.patch_size)

    split_of = {}
    splits = split_patients([c.patient_id for c in train_cases], config.val_fraction,
                            config.seed)
    splits["test"] = sorted(c.patient_id for c in test_cases)
    for split, ids in splits.items():
        split_of.update({pid: split for pid in ids})

    writers = {}
    with atomic.staged_dir(out_dir, overwrite) as staging:
        try:
            for split, ids in splits.items():
                if ids:
                    writers[split] = records.ShardWriter(
                        staging, split, min(config.num_shards, len(ids)))
            patients, start = {}, time.time()
            for done, case in enumerate(all_cases, start=1):
                split = split_of[case.patient_id]
                patients[case.patient_id] = _convert_case(
                    case, config, writers[split], splits[split].index(case.patient_id))
                patients[case.patient_id]["split"] = split
                progress(done, len(all_cases), case.patient_id,
                         patients[case.patient_id]["num_patches"], start)
        finally:
            for writer in writers.values():
                writer.close()
        info = _dataset_info(config, splits, patients, writers, converter_flags)
        atomic.write_json_atomic(os.path.join(staging, records.DATASET_JSON), info)
    return info


def _convert_case(case, config: ConvertConfig, writer: records.ShardWriter,
                  shard: int) -> dict:
    vol = volumes.load_volume(case, config.patch_size)
    norm = patches.fit_normalization(vol.image, vol.mask, config.normalization,
                                     config.percentile, config.intensity_range)
    rng = _patient_rng(config.seed, case.patient_id)
    centres = patches.sample_centres(vol.label, vol.mask, config.patches_per_patient,
                                     config.vessel_fraction, config.patch_size, rng)
    images, origins = patches.extract(norm.apply(vol.image), centres, config.patch_size)
    labels, _ = patches.extract(vol.label, centres, config.patch_size)
    for image, label, origin in zip(images, labels, origins):
        writer.write(shard, records.serialize(image, label, case.patient_id,
                                              int(origin[2]), origin))
    on_vessel = vol.label[tuple(centres.T)] > 0
    return {
        "num_patches": int(len(centres)),
        "num_vessel_centred": int(on_vessel.sum()),
        "shape": list(vol.image.shape),
        "spacing_mm": list(vol.spacing),
        "affine": vol.affine.tolist(),
        "normalization": {"low": norm.low, "high": norm.high},
        "sha256": vol.sha256,
        "files": {"image": case.image, "label": case.label, "mask": case.mask},
    }


def _dataset_info(config, splits, patients, writers, converter_flags) -> dict:
    per_split = {}
    for split, ids in splits.items():
        per_split[split] = {
            "patients": ids,
            "num_patients": len(ids),
            "num_patches": sum(patients[p]["num_patches"] for p in ids),
            "shards": [os.path.basename(p) for p in writers[split].paths] if ids else [],
        }
    return {
        "format": "tfdpgan-patches-v1",
        "tfdpgan_version": tfdpgan.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "patch_size": config.patch_size,
        "patches_per_patient": config.patches_per_patient,
        "vessel_fraction": config.vessel_fraction,
        "orientation": "RAS+ (closest canonical); patches are axial slices (axis 2)",
        "normalization": {
            "method": config.normalization,
            "percentile": config.percentile if config.normalization == "percentile" else None,
            "fixed_range": list(config.intensity_range) if config.intensity_range else None,
            "target_range": [-1.0, 1.0],
            "formula": "x_norm = 2 * clip((x_raw - low) / (high - low), 0, 1) - 1; "
                       "x_raw = (x_norm + 1) / 2 * (high - low) + low",
            "data_dependent": config.normalization == "percentile",
            "note": ("percentile: low=0, high = the percentile of that patient's own "
                     "in-brain voxels (per patient, below); fixed: the same data-independent "
                     "range for every patient"),
        },
        "label": {"values": [0, 1], "dtype": "uint8"},
        "splits": per_split,
        "counts": {split: s["num_patches"] for split, s in per_split.items()},
        "patients": patients,
        "seed": config.seed,
        "converter_flags": converter_flags or dataclasses.asdict(config),
    }
