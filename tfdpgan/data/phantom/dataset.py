"""The phantom data set folder (nnU-Net style) and the per-patient seeds."""
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from typing import Callable, Dict, List, Optional

import nibabel as nib
import numpy as np
from absl import logging

from tfdpgan import atomic, errors

from . import volume
from .presets import PhantomConfig

__all__ = ["CASE_PREFIX", "SUBFOLDERS", "case_ids", "patient_seed", "save_nifti",
           "write_case", "write_dataset", "default_workers"]

CASE_PREFIX = "phantom_"
SUBFOLDERS = ("imagesTr", "labelsTr", "masksTr", "imagesTs", "labelsTs", "masksTs")
ROLES = ("image", "label", "mask")
# Volumes smaller than this are generated in the calling process (starting workers costs more).
PARALLEL_MIN_VOXELS = 2_000_000


def case_ids(num_patients: int, num_test: int) -> Dict[str, List[str]]:
    """Training ids phantom_000..phantom_{N-1}; test ids continue the numbering."""
    total = num_patients + num_test
    width = max(3, len(str(total - 1)))
    ids = [f"{CASE_PREFIX}{i:0{width}d}" for i in range(total)]
    return {"train": ids[:num_patients], "test": ids[num_patients:]}


def patient_seed(seed: int, index: int) -> int:
    """Volume seed of patient ``index`` (the number in its case id) of a dataset seeded ``seed``:
    the ``index``-th child of ``SeedSequence(seed)``, so patients get independent streams and a
    case keeps its volume whatever the numbers of patients are."""
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0])


def save_nifti(path: str, data: np.ndarray, affine: np.ndarray):
    """Write one volume with scanner-coordinate qform/sform (code 1) and mm units."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_data_dtype(data.dtype)
    nib.save(img, path)


def write_case(folder: str, entry: Dict[str, str], seed: int, config: PhantomConfig):
    """Generate one patient and write its image, label and mask under ``folder``."""
    vol = volume.make_volume(seed, config)
    for role in ROLES:
        save_nifti(os.path.join(folder, entry[role]), getattr(vol, role), vol.affine)


def _integer(name: str, value, minimum: int) -> int:
    """``value`` as an int, or a SettingsError naming the argument."""
    try:
        valid = int(value) == value and value >= minimum
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise errors.SettingsError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def default_workers(config: PhantomConfig, num_cases: int) -> int:
    """Worker processes for ``write_dataset``: one per core (at most 4 and one per case) for
    full-size volumes, none (1 = in process) for small ones."""
    if int(np.prod(config.shape)) < PARALLEL_MIN_VOXELS:
        return 1
    return max(1, min(os.cpu_count() or 1, 4, num_cases))


def _generate(tmp, entries, seeds, config, workers, progress):
    """Write every case (in ``workers`` spawned processes if > 1), calling ``progress`` in
    case order. Output is identical for any number of workers: each case depends only on its
    seed."""
    total = len(entries)

    def done(index):
        logging.info("phantom %d/%d: %s", index + 1, total, entries[index]["patient_id"])
        if progress is not None:
            progress(index + 1, total)

    if workers <= 1:
        for index, (entry, seed) in enumerate(zip(entries, seeds)):
            write_case(tmp, entry, seed, config)
            done(index)
        return
    context = multiprocessing.get_context("spawn")   # safe even after TensorFlow started
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(write_case, tmp, entry, seed, config)
                   for entry, seed in zip(entries, seeds)]
        for index, future in enumerate(futures):
            future.result()
            done(index)


def write_dataset(out_dir: str, num_patients: int, num_test: int = 4, seed: int = 0,
                  config: PhantomConfig = PhantomConfig(),
                  progress: Optional[Callable[[int, int], None]] = None,
                  overwrite: bool = False, workers: Optional[int] = None,
                  preset: Optional[str] = None) -> Dict[str, List[str]]:
    """Write an nnU-Net style phantom folder atomically; returns {"train": ids, "test": ids}.

    Layout: ``{images,labels,masks}{Tr,Ts}/<case>.nii.gz`` plus a Decathlon-like
    ``dataset.json`` (file lists, seed, config, preset name). Everything is written to a
    temporary sibling directory that is renamed to ``out_dir`` at the end, so ``out_dir``
    either does not exist or is complete. An existing ``out_dir`` raises OutputExistsError
    unless ``overwrite``. ``progress(done, total)`` is called after each patient.
    ``workers``: processes (default: ``default_workers``); the files do not depend on it.
    """
    num_patients = _integer("num_patients", num_patients, 1)
    num_test = _integer("num_test", num_test, 0)
    seed = _integer("seed", seed, 0)
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not overwrite:
        raise errors.OutputExistsError(f"{out_dir} already exists; pass overwrite=True "
                                       f"(--overwrite) to replace it")
    ids = case_ids(num_patients, num_test)
    cases = ids["train"] + ids["test"]
    entries = []
    for index, case in enumerate(cases):
        suffix = "Tr" if index < num_patients else "Ts"
        entries.append(dict({role: f"./{role}s{suffix}/{case}.nii.gz" for role in ROLES},
                            patient_id=case))
    seeds = [patient_seed(seed, index) for index in range(len(cases))]
    if workers is None:
        workers = default_workers(config, len(cases))
    with atomic.staged_dir(out_dir, overwrite) as tmp:
        for sub in SUBFOLDERS:
            os.mkdir(os.path.join(tmp, sub))
        _generate(tmp, entries, seeds, config, _integer("workers", workers, 1), progress)
        description = {
            "name": "tfdpgan-phantom",
            "description": "Synthetic TOF-MRA-like volumes with exact vessel labels",
            "tensorImageSize": "3D",
            "modality": {"0": "TOF-MRA"},
            "labels": {"0": "background", "1": "vessel"},
            "numTraining": num_patients,
            "numTest": num_test,
            "training": entries[:num_patients],
            "test": entries[num_patients:],
            "phantom": {"seed": seed, "preset": preset, "config": dataclasses.asdict(config),
                        "case_seeds": dict(zip(cases, seeds))},
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(description, f, indent=1)
    return ids
