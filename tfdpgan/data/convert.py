"""Convert labelled volumes into TFRecord patch shards plus ``dataset.json``, atomically.

Two passes: first every case's headers are checked (readable, 3-D, image/label/mask on the
same world grid, patch fits, ids unique), so most mistakes stop the run before any voxel is
read; then the patients are converted in parallel worker processes (``workers``; one patient
per task): each reads and validates its volume (finite, label values, mask), normalises it,
samples and serialises its patches into a compressed piece of TFRecord stream (shards.py, no
TensorFlow in the workers). The main process appends the pieces to the shards in patient
order, inside a hidden staging folder beside ``out_dir``; only a complete dataset is renamed
to ``out_dir``, and on any error the staging folder is removed.

Patients, not patches, are split: a patient's patches all go to one split. Every result depends
only on the seed, the settings and the case list, never on the number of workers: a patient's
patches come from its own RNG (seed, patient id) and pieces are written in case order, so the
shards are byte-identical for any ``workers``.

Warnings (pre-masked images, CT-like negative intensities, a field of view barely larger than
the patch, fewer patches than asked, a label that misses the bright voxels as one of another
patient would) are logged and stored in dataset.json under ``warnings``; they never stop a
run. A patient whose image file (SHA-256) appears under two ids is refused: the privacy unit
is the patient, and a copy counts one person twice.
"""
import contextlib
import dataclasses
import datetime
import multiprocessing
import os
import sys
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from absl import logging

import tfdpgan
from tfdpgan import atomic
from tfdpgan import errors
from tfdpgan.data import normalization, patches, shards, volumes


__all__ = ["ConvertConfig", "PatientResult", "split_patients", "convert", "convert_patient",
           "default_workers"]


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
    vessel_labels: Optional[Tuple[int, ...]] = None          # None: every non-zero value
    compression: str = shards.DEFAULT_GZIP_MODE              # fast | small | none (shards.py)

    def validate(self):
        """Raise errors.SettingsError (a ValueError) for an invalid setting."""
        problems = [
            (self.compression not in shards.GZIP_MODES,
             f"compression must be one of {sorted(shards.GZIP_MODES)}, "
             f"got {self.compression!r}"),
            (self.patch_size < 2, f"patch_size must be at least 2, got {self.patch_size}"),
            (self.patches_per_patient < 1,
             f"patches_per_patient must be positive, got {self.patches_per_patient}"),
            (not 0.0 <= self.vessel_fraction <= 1.0,
             f"vessel_fraction must be in [0, 1], got {self.vessel_fraction}"),
            (not 0.0 <= self.val_fraction < 1.0,
             f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.num_shards < 1, f"num_shards must be positive, got {self.num_shards}"),
            (self.normalization not in patches.NORMALIZATIONS,
             f"normalization must be one of {patches.NORMALIZATIONS}"),
            (self.normalization == "fixed" and (
                self.intensity_range is None
                or not self.intensity_range[1] > self.intensity_range[0]),
             "normalization=fixed needs intensity_range low,high with low < high"),
        ]
        for failed, message in problems:
            if failed:
                raise errors.SettingsError(message)


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


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def _log_progress(done: int, total: int, patient_id: str, n: int, start: float):
    elapsed = time.time() - start
    eta = elapsed / done * (total - done)
    logging.info("converted %d/%d patients (%s: %d patches), %.0f s elapsed, ~%.0f s left",
                 done, total, patient_id, n, elapsed, eta)


class PatientResult(NamedTuple):
    """What a worker returns for one patient."""
    patient_id: str
    info: dict                 # the patient's entry of dataset.json (without "split")
    chunk: shards.Chunk        # its records, framed and deflated
    warnings: List[str]        # each names the file


def convert_patient(job: Tuple[volumes.Case, ConvertConfig]) -> PatientResult:
    """Read, validate, normalise, sample and serialise one patient (runs in a worker)."""
    case, config = job
    vol = volumes.load_volume(case, config.patch_size, config.vessel_labels)
    try:
        norm = patches.fit_normalization(vol.image, vol.mask, config.normalization,
                                         config.percentile, config.intensity_range)
    except errors.InputDataError as e:
        raise errors.InputDataError(f"{case.image}: {e}") from None
    warnings = [f"{case.image}: {w}" for w in (
        normalization.intensity_warnings(vol.image, vol.mask)
        + patches.field_of_view_warnings(vol.image.shape, config.patch_size))]
    warnings += [f"{case.label}: {w}" for w in normalization.label_warnings(
        vol.image, vol.label, vol.mask)]
    rng = _patient_rng(config.seed, case.patient_id)
    centres = patches.sample_centres(vol.label, vol.mask, config.patches_per_patient,
                                     config.vessel_fraction, config.patch_size, rng)
    if len(centres) < config.patches_per_patient:
        if not len(centres):
            raise errors.InputDataError(
                f"{case.mask or case.image}: no {config.patch_size}x{config.patch_size} patch "
                f"fits around any in-brain voxel (the brain lies within half a patch of the "
                f"slice border)")
        warnings.append(f"{case.image}: only {len(centres)} of {config.patches_per_patient} "
                        f"patches fit (distinct centres at least half a patch inside the "
                        f"slice, in the brain)")
    images, origins = patches.extract(norm.apply(vol.image), centres, config.patch_size)
    labels, _ = patches.extract(vol.label, centres, config.patch_size)
    records = shards.encode_examples(images, labels, case.patient_id, origins)
    chunk = shards.compress_chunk(shards.frame(records), config.compression)
    on_vessel = vol.label[tuple(centres.T)] > 0
    info = {
        "num_patches": int(len(centres)),
        "num_vessel_centred": int(on_vessel.sum()),
        "shape": list(vol.image.shape),
        "spacing_mm": list(vol.spacing),
        "affine": vol.affine.tolist(),
        "normalization": {"low": norm.low, "high": norm.high},
        "sha256": vol.sha256,
        "files": {"image": case.image, "label": case.label, "mask": case.mask},
        "label_values": list(vol.label_values),
    }
    return PatientResult(case.patient_id, info, chunk, warnings)


@contextlib.contextmanager
def _mapper(workers: int, num_jobs: int):
    """An ordered map over jobs: in this process for one worker, else a process pool.
    Workers come from a fork server that preloads this module (no TensorFlow: the parent may
    have imported it, and forking a TensorFlow process is unsafe)."""
    workers = min(workers, num_jobs)
    if workers <= 1:
        yield lambda fn, jobs: map(fn, jobs)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with _main_script_hidden():
        pool = context.Pool(workers)
    with pool:
        yield lambda fn, jobs: pool.imap(fn, jobs, chunksize=1)


@contextlib.contextmanager
def _main_script_hidden():
    """Workers started by spawn/forkserver re-run the parent's main *script* (to find what it
    defines); ours need only this module, and a script that imports TensorFlow would cost
    every worker seconds. So the script's path is hidden while the workers start."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(getattr(main, "__spec__", None), "name", None):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def convert(train_cases: Sequence[volumes.Case], out_dir: str, config: ConvertConfig,
            test_cases: Sequence[volumes.Case] = (), converter_flags: Optional[dict] = None,
            overwrite: bool = False, progress: Callable = _log_progress,
            workers: Optional[int] = None, source_labels: Optional[dict] = None) -> dict:
    """Write the dataset to ``out_dir`` and return its ``dataset.json`` content.

    ``workers``: processes converting patients (default: all cores); the output does not
    depend on it. ``source_labels``: the label names of the input (nnU-Net dataset.json),
    recorded in dataset.json. Raises errors.InputDataError (bad data; names the file),
    errors.SettingsError (bad settings) or errors.OutputExistsError; nothing is left on disk.
    """
    config.validate()
    if not train_cases:
        raise volumes.InputError("no training cases found (expected imagesTr/ with images "
                                 "or a manifest with at least one row)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise errors.OutputExistsError(f"{out_dir}: already exists; choose another --out_dir "
                                       f"or pass --overwrite")
    all_cases = list(train_cases) + list(test_cases)
    volumes.check_unique_ids(all_cases)
    for case in all_cases:
        volumes.check_headers(case, config.patch_size)

    splits = split_patients([c.patient_id for c in train_cases], config.val_fraction,
                            config.seed)
    splits["test"] = sorted(c.patient_id for c in test_cases)
    split_of = {pid: split for split, ids in splits.items() for pid in ids}
    jobs = [(case, config) for case in all_cases]
    with atomic.staged_dir(out_dir, overwrite) as staging:
        writers = {split: shards.ShardWriter(staging, split, min(config.num_shards, len(ids)),
                                             config.compression)
                   for split, ids in splits.items() if ids}
        patients, warnings, start = {}, [], time.time()
        try:
            with _mapper(workers or default_workers(), len(jobs)) as mapper:
                for done, result in enumerate(mapper(convert_patient, jobs), start=1):
                    _check_not_duplicate(result, patients)
                    split = split_of[result.patient_id]
                    writers[split].write_chunk(splits[split].index(result.patient_id),
                                               result.chunk)
                    patients[result.patient_id] = dict(result.info, split=split)
                    for warning in result.warnings:
                        logging.warning("%s", warning)
                    warnings += result.warnings
                    progress(done, len(jobs), result.patient_id,
                             result.info["num_patches"], start)
        finally:
            for writer in writers.values():
                writer.close()
        info = _dataset_info(config, splits, patients, writers, converter_flags)
        info["warnings"] = warnings
        info["label"].update(vessel_labels=list(config.vessel_labels or []) or "every non-zero",
                             source_labels=source_labels)
        atomic.write_json_atomic(os.path.join(staging, shards.DATASET_JSON), info)
    return info


def _check_not_duplicate(result: PatientResult, patients: dict):
    """Refuse one patient under two ids (the same image file, by SHA-256): the privacy unit
    is the patient, and a copy would count one person twice (and leak test into train)."""
    digest = result.info["sha256"]["image"]
    for pid, other in patients.items():
        if other["sha256"]["image"] == digest:
            raise errors.InputDataError(
                f"{result.info['files']['image']}: the same image file (SHA-256 "
                f"{digest[:12]}...) as patient {pid!r} ({other['files']['image']}): one "
                f"patient under two ids would be counted twice; remove the copy")


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
