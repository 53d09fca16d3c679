"""What an evaluation reads: the run (data set, privacy card, synthetic source), the
validation and test cases, and the training arrays of each row.

Nothing here reads patient image data except real_arrays (the real training patches of the
``real_train`` row and of FID's floor); test volumes are only located and checked to exist.
"""
import dataclasses
import hashlib
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tfdpgan import errors, workdir
from tfdpgan.data import patches, pipeline, records, volumes
from tfdpgan.evaluation.config import EvalConfig
from tfdpgan.gan import export, priors, sample

__all__ = ["Run", "load_run", "read_json_or_none", "read_dataset", "split_cases",
           "check_exists", "test_cases", "synthetic_arrays", "prior_arrays", "binarize_labels",
           "real_arrays", "real_sample", "normalised"]


@dataclasses.dataclass
class Run:
    rec_dir: str
    info: dict                     # dataset.json of the run's data
    patch_size: int
    card: Optional[dict]           # privacy card of the generator (None: no generator)
    generator_dir: Optional[str]   # None when training on --synthetic or only baselines
    source_sha256: Optional[str]   # identity of the synthetic source (generator or folder)
    prior: Optional[str] = None    # the generator's public prior (--init_from), if any
    prior_sha256: Optional[str] = None   # identity of the prior's released generator


def read_json_or_none(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_dataset(rec_dir: str, what: str) -> dict:
    """dataset.json of a TFRecord folder; EvaluationError naming the flag if missing."""
    try:
        return records.read_dataset_json(rec_dir)
    except FileNotFoundError as e:
        raise errors.EvaluationError(f"{what}: {e}") from e


def _sha256_files(paths: Sequence[str], root: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _tree_files(root: str) -> List[str]:
    return [os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names]


def _run_data(config: EvalConfig) -> str:
    if config.data is not None:
        return config.data
    if not workdir.has_run(config.workdir):
        raise errors.EvaluationError(
            f"{workdir.path(config.workdir, workdir.RUN_JSON)}: not found; is {config.workdir}"
            f" a training workdir? (or pass --data=REC, the run's data set)")
    rec_dir = workdir.read_run(config.workdir).get("data")
    if not rec_dir:
        raise errors.EvaluationError(f"{workdir.path(config.workdir, workdir.RUN_JSON)} names "
                                     f"no data set; pass --data=REC")
    return rec_dir


def _generator_sha256(generator_dir: str) -> Optional[str]:
    """Identity of an exported generator (its files), None if there is no saved_model.pb."""
    if not os.path.isfile(os.path.join(generator_dir, "saved_model.pb")):
        return None
    return _sha256_files(_tree_files(generator_dir), generator_dir)


def _synthetic_source(config: EvalConfig, info: dict, rec_dir: str):
    """(card, generator_dir, source_sha256) of the synthetic row's source."""
    generator_dir = workdir.path(config.workdir, workdir.GENERATOR)
    if config.synthetic:
        syn_info = read_dataset(config.synthetic, "--synthetic")
        if syn_info["patch_size"] != info["patch_size"]:
            raise errors.EvaluationError(
                f"{config.synthetic}: synthetic patch size {syn_info['patch_size']} differs "
                f"from the data set's {info['patch_size']} ({rec_dir})")
        card = read_json_or_none(os.path.join(config.synthetic, workdir.PRIVACY_JSON))
        sha = _sha256_files(records.shard_paths(config.synthetic, "train")
                            + [os.path.join(config.synthetic, records.DATASET_JSON)],
                            config.synthetic)
        return card, None, sha
    sha = _generator_sha256(generator_dir)
    if sha is not None:
        card = read_json_or_none(workdir.generator_card_path(generator_dir))
        return card, generator_dir, sha
    if config.real_train:
        return None, None, None   # baselines only
    raise errors.EvaluationError(f"{generator_dir}: no exported generator (saved_model.pb); "
                                 f"train first, or pass --synthetic=DIR or --real_train=REC")


def load_run(config: EvalConfig) -> Run:
    """The run's data set, privacy card and synthetic source (no patient data read)."""
    rec_dir = _run_data(config)
    try:
        info = records.read_dataset_json(rec_dir)
    except FileNotFoundError as e:
        raise errors.EvaluationError(str(e)) from e
    card, generator_dir, source_sha = _synthetic_source(config, info, rec_dir)
    run_card = workdir.path(config.workdir, workdir.PRIVACY_JSON)
    if card is None and os.path.isfile(run_card):
        card = read_json_or_none(run_card)
    prior, prior_sha = _prior_source(config) if generator_dir else (None, None)
    return Run(os.path.abspath(rec_dir), info, int(info["patch_size"]), card, generator_dir,
               source_sha, prior, prior_sha)


def _prior_source(config: EvalConfig):
    """(source, identity) of the public prior the run started from (run.json's init_from;
    (None, None) without one, or with ``prior_row`` off)."""
    source = (workdir.read_run(config.workdir).get("init_from")
              if config.prior_row and workdir.has_run(config.workdir) else None)
    if not source:
        return None, None
    if priors.is_builtin(source):
        return source, priors.read_builtin()["weights_sha256"]
    generator_dir = workdir.path(source, workdir.GENERATOR)
    sha = _generator_sha256(generator_dir)
    if sha is None:
        raise errors.EvaluationError(
            f"{config.workdir} started from the public prior {source}, but {generator_dir} "
            f"holds no exported generator (run from the folder the run was started in, or "
            f"pass --noprior_row to leave the prior's own row out)")
    return source, sha


def split_cases(info: dict, split: str) -> List[volumes.Case]:
    """The NIfTI cases of a split of a converted data set (dataset.json "files")."""
    cases = []
    for pid in info["splits"].get(split, {}).get("patients", []):
        files = info["patients"][pid].get("files")
        if not files:
            raise errors.EvaluationError(f"dataset.json lists no source files for patient {pid}")
        cases.append(volumes.Case(pid, files["image"], files["label"], files.get("mask")))
    return cases


def check_exists(cases: Sequence[volumes.Case], what: str):
    """File existence only (no data read; test data stays untouched until the test phase)."""
    for case in cases:
        for path in (case.image, case.label, case.mask):
            if path and not os.path.isfile(path):
                raise errors.EvaluationError(f"{what} patient {case.patient_id}: {path}: "
                                             f"not found")


def test_cases(config: EvalConfig, run: Run) -> Tuple[List[volumes.Case], str]:
    """(cases, description) of the test patients, disjoint from the run's train/val ids."""
    if config.test_data:
        try:
            cases = volumes.find_cases(config.test_data, "Ts")
        except volumes.InputError as e:
            raise errors.EvaluationError(str(e)) from e
        where = os.path.abspath(config.test_data)
        if not cases:
            raise errors.EvaluationError(f"{config.test_data}: no test cases (expected "
                                         f"imagesTs/<case>.nii.gz and labelsTs/<case>.nii.gz)")
    else:
        cases = split_cases(run.info, "test")
        where = f"test split of {run.rec_dir}"
        if not cases:
            raise errors.EvaluationError(f"{run.rec_dir}: the data set has no test patients; "
                                         f"pass --test_data=DIR (imagesTs/ labelsTs/ [masksTs/])")
    seen = {pid for split in ("train", "val")
            for pid in run.info["splits"].get(split, {}).get("patients", [])}
    leaked = sorted(c.patient_id for c in cases if c.patient_id in seen)
    if leaked:
        raise errors.EvaluationError(f"test patients {', '.join(leaked)} are training/"
                                     f"validation patients of {run.rec_dir}")
    check_exists(cases, "test")
    return cases, where


def binarize_labels(labels, threshold: float) -> np.ndarray:
    """uint8 {0, 1}: label >= threshold (labels on the {0, 1} scale; 0/255 masks are divided
    by 255 first)."""
    labels = np.asarray(labels)
    scale = 255.0 if labels.dtype == np.uint8 and labels.max(initial=0) > 1 else 1.0
    return (labels.astype(np.float32) / scale >= threshold).astype(np.uint8)


def synthetic_arrays(config: EvalConfig, run: Run) -> Tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the synthetic row, labels binarised at config.label_threshold."""
    if config.synthetic:
        arrays = pipeline.load_arrays(config.synthetic, "train")
        images, labels = np.asarray(arrays.images), np.asarray(arrays.labels)
    else:
        fn, latent_dim, patch = export.load_generator(run.generator_dir)
        if patch != run.patch_size:
            raise errors.EvaluationError(
                f"{run.generator_dir}: generator patch size {patch} differs from the data "
                f"set's {run.patch_size} ({run.rec_dir})")
        images, labels = sample.generate(fn, latent_dim, config.num_synthetic, config.seed)
    return images, binarize_labels(labels, config.label_threshold)


def prior_arrays(config: EvalConfig, run: Run) -> Tuple[np.ndarray, np.ndarray]:
    """(images, labels) sampled from the run's public prior alone, like synthetic_arrays:
    the row that shows what the prior knew before any private data."""
    fn, latent_dim, patch = priors.sampler(run.prior)
    if patch != run.patch_size:
        raise errors.EvaluationError(f"the prior {run.prior}: generator patch size {patch} "
                                     f"differs from the data set's {run.patch_size}")
    images, labels = sample.generate(fn, latent_dim, config.num_synthetic, config.seed)
    return images, binarize_labels(labels, config.label_threshold)


def real_arrays(rec_dir: str, patch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """The real training patches of a TFRecord folder (memory-mapped when cached)."""
    info = read_dataset(rec_dir, "--real_train")
    if info["patch_size"] != patch_size:
        raise errors.EvaluationError(f"{rec_dir}: patch size {info['patch_size']} differs from "
                                     f"the evaluated data set's {patch_size}")
    arrays = pipeline.load_arrays(rec_dir, "train")
    return arrays.images, arrays.labels


def real_sample(rec_dir: str, patch_size: int, count: int,
                seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` distinct real training patches (images, labels) in a fixed random order.

    The order depends only on ``seed`` and the number of patches, so a benchmark that splits
    the sample (e.g. FID reference vs floor set) gets the same disjoint halves every run.
    """
    images, labels = real_arrays(rec_dir, patch_size)
    if len(images) < count:
        raise errors.EvaluationError(f"{rec_dir}: {len(images)} training patches, "
                                     f"fewer than the {count} asked for")
    pick = np.random.default_rng(seed).permutation(len(images))[:count]
    return np.asarray(images)[pick], np.asarray(labels)[pick]


def normalised(vol: volumes.Volume, normalization: dict) -> np.ndarray:
    """The volume's image normalised like the data set's patches (dataset.json's entry)."""
    return patches.fit_normalization(
        vol.image, vol.mask, normalization["method"], normalization["percentile"],
        normalization["fixed_range"]).apply(vol.image)
