"""Utility of a synthetic data set: a U-Net trained on it, scored on real test patients.

  python -m tfdpgan.evaluate --workdir=W                    # the run in W, its own test patients
  python -m tfdpgan.evaluate --workdir=W --test_data=DIR    # DIR/imagesTs, labelsTs[, masksTs]
  python -m tfdpgan.evaluate --workdir=W --grid='lr=1e-4,3e-4;dropout=0,0.1;augment=0,1'
  python -m tfdpgan.evaluate --workdir=W --real_train=REC --threshold_baseline   # + baselines

Follows Kossen et al. (2022). Steps, in this order:

1. **Training set.** ``--num_synthetic`` pairs sampled from ``W/generator`` (export.py), or
   the synthetic TFRecords of ``--synthetic`` (sample.py output, same schema). Extra rows:
   ``--real_train=REC`` trains the same U-Net on REC's real training patches (upper bound);
   ``--threshold_baseline`` is a global intensity threshold on the normalised image.
2. **Model selection** (epoch and grid point of ``--grid``; the threshold of the threshold
   row) on a VALIDATION set that is never the test set:
     ``real_val``:      the real validation patients of the run's data set (split "val" of
                        dataset.json), as WHOLE volumes: every in-brain axial slice tiled
                        (``--selection_overlap``), stitched, thresholded at 0.5, Dice inside
                        the brain mask, mean over patients. This is what the paper does, and
                        it is a use of private data outside the DP guarantee: the selected
                        U-Net and the reported numbers depend on the validation patients.
     ``synthetic_val``: a held-out share (``--synthetic_val_fraction``) of the training
                        patches of each row (synthetic patches for the synthetic row), Dice
                        pooled over the patches. Privacy-free for the synthetic row.
3. **Test** (only after every selection is final): each test patient's whole volume is
   segmented (stitching.segment_volume, tiles overlapping by ``--overlap``), thresholded at
   0.5 and scored with DSC and the 95 % Hausdorff distance in mm (anisotropic spacing);
   predictions are saved as uint8 NIfTI with the input's affine and orientation.
4. **FID** (``--fid``, default on; tfdpgan.fid): ``fid`` = synthetic images vs real TEST
   patches sampled from the test volumes like the data set's patches (same patch size,
   normalisation and vessel fraction); ``fid_real_floor`` = real TRAIN patches vs the same
   test patches (the value two real samples reach). Failing to load the network is an error.

Output (atomically): ``W/eval/report.json`` (keys in DESIGN.md), ``W/eval/REPORT.md``,
``W/eval/predictions/<case>.nii.gz`` (the first U-Net row; baselines in
``predictions_<row>/``). The selected U-Nets are kept in ``W/eval_models/`` and reused by an
evaluation with the same training settings (e.g. on another test set).

Conventions: SD is the sample SD over patients (ddof=1; null for one patient). HD95 follows
seg_metrics.hausdorff95: an empty prediction of a non-empty label has no finite HD95; it is
reported as null per patient, left out of the mean/SD and counted in ``hd95_num_undefined``.
DSC of an empty prediction is 0 (test labels are never empty; volumes.load_volume refuses
them).
"""
import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags, logging

import tfdpgan
from tfdpgan import atomic
from tfdpgan.evaluation import seg_metrics, stitching
from tfdpgan.data import patches, records, volumes
from tfdpgan.evaluation import unet as unet_lib

EVAL_DIR = "eval"
MODELS_DIR = "eval_models"
REPORT_JSON = "report.json"
REPORT_MD = "REPORT.md"
SELECTIONS = ("real_val", "synthetic_val")
# CPU-sized U-Net training (the paper: base 32, grid, more epochs; flags/sweep_paper.cfg).
DEFAULT_UNET = unet_lib.UNetConfig(base_filters=16, depth=4, dropout=0.0, learning_rate=3e-4,
                               batch_size=32, augment=True, epochs=8, steps_per_epoch=50)
PRIVACY_NOTE_REAL_VAL = (
    "Model selection (training epoch, grid point and the threshold baseline's threshold) used "
    "the real validation patients' volumes. That is private data used outside the DP "
    "guarantee (Kossen et al. 2022 select the same way): the selected U-Net and these numbers "
    "are not covered by the generator's (epsilon, delta). Use --selection=synthetic_val for a "
    "privacy-free selection on held-out synthetic patches.")
PRIVACY_NOTE_SYNTHETIC_VAL = (
    "Model selection used held-out synthetic patches only (privacy-free post-processing of the "
    "generator); for the real_train row it used held-out real training patches.")
PRIVACY_NOTE_TEST = (
    "The test metrics and FID are computed from real test patients (and FID's floor from real "
    "training patches): this report is itself derived from private data and is for internal "
    "use; it is not covered by the generator's privacy guarantee.")


class EvaluationError(ValueError):
    """A problem with the inputs or settings of an evaluation (one readable message)."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    workdir: str                              # training run (generator/, run.json)
    out_dir: Optional[str] = None             # default <workdir>/eval
    data: Optional[str] = None                # the run's TFRecord data set (default: run.json)
    test_data: Optional[str] = None           # imagesTs/labelsTs[/masksTs]; default: the data
                                              # set's own test patients (split "test")
    synthetic: Optional[str] = None           # synthetic TFRecord folder instead of sampling
    num_synthetic: int = 4000
    real_train: Optional[str] = None          # TFRecord folder: extra row on real patches
    threshold_baseline: bool = False
    selection: str = "real_val"
    synthetic_val_fraction: float = 0.1
    grid: str = ""                            # e.g. "lr=1e-4,3e-4;dropout=0,0.1;augment=0,1"
    unet: unet_lib.UNetConfig = DEFAULT_UNET
    overlap: float = 0.5                      # tile overlap on test volumes
    selection_overlap: float = 0.0            # tile overlap on validation volumes (per epoch)
    predict_batch_size: int = 64
    fid: bool = True
    fid_weights: Optional[str] = None         # path or TF-Hub handle (tfdpgan.fid)
    fid_samples: int = 1000
    fid_cache_dir: Optional[str] = None       # cache of real-patch activations (keyed)
    seed: int = 0

    def validate(self):
        if self.selection not in SELECTIONS:
            raise EvaluationError(f"--selection must be one of {SELECTIONS}, "
                                  f"got {self.selection!r}")
        if not 0.0 < self.synthetic_val_fraction < 1.0:
            raise EvaluationError(f"--synthetic_val_fraction must be in (0, 1), got "
                                  f"{self.synthetic_val_fraction}")
        if self.num_synthetic < 2 and not self.synthetic:
            raise EvaluationError(f"--num_synthetic must be at least 2, "
                                  f"got {self.num_synthetic}")
        if self.fid and self.fid_samples < 2:
            raise EvaluationError(f"--fid_samples must be at least 2, got {self.fid_samples}")
        for name in ("overlap", "selection_overlap"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise EvaluationError(f"--{name} must be in [0, 1)")
        grid_configs(self.unet, self.grid)


# --- grid ----------------------------------------------------------------------------------

def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


GRID_KEYS = {"lr": ("learning_rate", float), "learning_rate": ("learning_rate", float),
             "dropout": ("dropout", float), "augment": ("augment", _bool),
             "base_filters": ("base_filters", int), "batch_size": ("batch_size", int),
             "epochs": ("epochs", int), "steps_per_epoch": ("steps_per_epoch", int)}


def parse_grid(text: str) -> List[dict]:
    """``"lr=1e-4,3e-4;dropout=0,0.1;augment=0,1"`` -> the product as UNetConfig overrides
    ([{}] for an empty grid: the single base setting)."""
    axes = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or key not in GRID_KEYS or not values.strip():
            raise EvaluationError(f"--grid: cannot parse {part.strip()!r}; expected "
                                  f"key=v1,v2 with key in {sorted(GRID_KEYS)}")
        field, kind = GRID_KEYS[key]
        try:
            parsed = [kind(v) for v in values.split(",") if v.strip()]
        except ValueError as e:
            raise EvaluationError(f"--grid: {part.strip()!r}: {e}") from e
        if any(field == f for f, _ in axes):
            raise EvaluationError(f"--grid: {field} given twice")
        axes.append((field, parsed))
    return [dict(zip([f for f, _ in axes], combo))
            for combo in itertools.product(*[v for _, v in axes])]


def grid_configs(base: unet_lib.UNetConfig, text: str) -> List[unet_lib.UNetConfig]:
    return [dataclasses.replace(base, **overrides) for overrides in parse_grid(text)]


# --- inputs --------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    rec_dir: str
    info: dict                     # dataset.json of the run's data
    patch_size: int
    card: Optional[dict]           # privacy card of the generator (None: no generator)
    generator_dir: Optional[str]   # None when training on --synthetic or only baselines
    source_sha256: Optional[str]   # identity of the synthetic source (generator or folder)


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


def load_run(config: EvalConfig) -> Run:
    """The run's data set, privacy card and synthetic source (nothing patient data read)."""
    rec_dir = config.data
    if rec_dir is None:
        run_json = os.path.join(config.workdir, "run.json")
        if not os.path.isfile(run_json):
            raise EvaluationError(f"{run_json}: not found; is {config.workdir} a training "
                                  f"workdir? (or pass --data=REC, the run's data set)")
        with open(run_json) as f:
            rec_dir = json.load(f).get("data")
        if not rec_dir:
            raise EvaluationError(f"{run_json} names no data set; pass --data=REC")
    try:
        info = records.read_dataset_json(rec_dir)
    except FileNotFoundError as e:
        raise EvaluationError(str(e)) from e
    generator_dir = os.path.join(config.workdir, "generator")
    card, source_sha = None, None
    if config.synthetic:
        syn_info = _read_dataset(config.synthetic, "--synthetic")
        if syn_info["patch_size"] != info["patch_size"]:
            raise EvaluationError(
                f"{config.synthetic}: synthetic patch size {syn_info['patch_size']} differs "
                f"from the data set's {info['patch_size']} ({rec_dir})")
        card = _read_json(os.path.join(config.synthetic, "privacy.json"))
        source_sha = _sha256_files(
            records.shard_paths(config.synthetic, "train")
            + [os.path.join(config.synthetic, records.DATASET_JSON)], config.synthetic)
        generator_dir = None
    elif os.path.isfile(os.path.join(generator_dir, "saved_model.pb")):
        card = _read_json(os.path.join(generator_dir, "assets.extra", "privacy.json"))
        source_sha = _sha256_files(_tree_files(generator_dir), generator_dir)
    elif config.real_train:
        generator_dir = None   # baselines only
    else:
        raise EvaluationError(f"{generator_dir}: no exported generator (saved_model.pb); "
                              f"train first, or pass --synthetic=DIR or --real_train=REC")
    if card is None and os.path.isfile(os.path.join(config.workdir, "privacy.json")):
        card = _read_json(os.path.join(config.workdir, "privacy.json"))
    return Run(os.path.abspath(rec_dir), info, int(info["patch_size"]), card, generator_dir,
               source_sha)


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_dataset(rec_dir: str, what: str) -> dict:
    try:
        return records.read_dataset_json(rec_dir)
    except FileNotFoundError as e:
        raise EvaluationError(f"{what}: {e}") from e


def split_cases(info: dict, split: str) -> List[volumes.Case]:
    """The NIfTI cases of a split of a converted data set (dataset.json "files")."""
    cases = []
    for pid in info["splits"].get(split, {}).get("patients", []):
        files = info["patients"][pid].get("files")
        if not files:
            raise EvaluationError(f"dataset.json lists no source files for patient {pid}")
        cases.append(volumes.Case(pid, files["image"], files["label"], files.get("mask")))
    return cases


def _check_exists(cases: Sequence[volumes.Case], what: str):
    """File existence only (no data read; test data stays untouched until the test phase)."""
    for case in cases:
        for path in (case.image, case.label, case.mask):
            if path and not os.path.isfile(path):
                raise EvaluationError(f"{what} patient {case.patient_id}: {path}: not found")


def test_cases(config: EvalConfig, run: Run) -> Tuple[List[volumes.Case], str]:
    """(cases, description) of the test patients, disjoint from the run's train/val ids."""
    if config.test_data:
        try:
            cases = volumes.find_cases(config.test_data, "Ts")
        except volumes.InputError as e:
            raise EvaluationError(str(e)) from e
        where = os.path.abspath(config.test_data)
        if not cases:
            raise EvaluationError(f"{config.test_data}: no test cases (expected "
                                  f"imagesTs/<case>.nii.gz and labelsTs/<case>.nii.gz)")
    else:
        cases = split_cases(run.info, "test")
        where = f"test split of {run.rec_dir}"
        if not cases:
            raise EvaluationError(f"{run.rec_dir}: the data set has no test patients; pass "
                                  f"--test_data=DIR (imagesTs/ labelsTs/ [masksTs/])")
    seen = {pid for split in ("train", "val")
            for pid in run.info["splits"].get(split, {}).get("patients", [])}
    leaked = sorted(c.patient_id for c in cases if c.patient_id in seen)
    if leaked:
        raise EvaluationError(f"test patients {', '.join(leaked)} are training/validation "
                              f"patients of {run.rec_dir}")
    _check_exists(cases, "test")
    return cases, where


# --- training sets and selection -----------------------------------------------------------

def _holdout(images, labels, fraction: float, seed: int):
    """((train images, labels), (val images, labels)) with a seeded share held out."""
    n = len(images)
    n_val = min(max(1, int(round(fraction * n))), n - 1)
    order = np.random.default_rng([seed, 7]).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (images[train], labels[train]), (images[val], labels[val])


class VolumeScorer:
    """Validation score of a model: mean whole-volume Dice inside the brain mask over the
    validation volumes (every in-brain slice tiled, stitched, prob > threshold)."""

    def __init__(self, vols: Sequence[volumes.Volume], normalization: dict, patch_size: int,
                 overlap: float, threshold: float, batch_size: int):
        self.items = []
        for vol in vols:
            self.items.append((_normalised(vol, normalization), vol.mask, vol.label))
        self.patch_size, self.overlap = patch_size, overlap
        self.threshold, self.batch_size = threshold, batch_size

    def __call__(self, model) -> float:
        predict = stitching.keras_predict_fn(model, self.patch_size)
        scores = [seg_metrics.dice(stitching.predict_volume(predict, image, mask, self.patch_size,
                                                        self.overlap, self.batch_size)
                               > self.threshold, label)
                  for image, mask, label in self.items]
        return float(np.mean(scores))


def _choose_threshold(val_images: Sequence[np.ndarray], val_labels, val_masks) -> float:
    """Global threshold on the normalised intensity maximising Dice pooled over the given
    validation images (never test data)."""
    image = np.concatenate([np.ravel(v) for v in val_images])
    label = np.concatenate([np.ravel(v) for v in val_labels])
    mask = np.concatenate([np.ravel(v) for v in val_masks])
    threshold, _ = seg_metrics.best_threshold_dice(image, label, mask)
    return threshold


def _row_key(config: EvalConfig, run: Run, row: str) -> str:
    """Identity of a trained+selected U-Net: everything its weights depend on."""
    identity = {
        "row": row, "data": run.rec_dir, "data_created": run.info.get("created"),
        "source_sha256": run.source_sha256 if row == "synthetic" else None,
        "real_train": [os.path.abspath(config.real_train),
                       _read_dataset(config.real_train, "--real_train").get("created")]
        if row == "real_train" else None,
        "num_synthetic": config.num_synthetic if row == "synthetic" and not config.synthetic
        else None,
        "selection": config.selection, "selection_overlap": config.selection_overlap,
        "synthetic_val_fraction": config.synthetic_val_fraction, "grid": config.grid,
        "unet": dataclasses.asdict(config.unet), "seed": config.seed,
        "tfdpgan_version": tfdpgan.__version__}
    text = json.dumps(identity, sort_keys=True)
    return f"{row}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _history_json(history: dict, config: unet_lib.UNetConfig) -> dict:
    return {"config": dataclasses.asdict(config),
            "best_epoch": history["best_epoch"] + 1,
            "best_val_dice": history["best_val_dice"],
            "val_dice": history["val_dice"], "loss": history["loss"]}


def train_selected(config: EvalConfig, run: Run, row: str, train_arrays, scorer,
                   models_root: str):
    """Train the grid for one row and select (epoch, grid point) on the validation set;
    returns (model, selection dict). Reuses a model saved by an identical earlier call."""
    key = _row_key(config, run, row)
    folder = os.path.join(models_root, key)
    saved = _read_json(os.path.join(folder, "selection.json"))
    if saved is not None:
        chosen = unet_lib.UNetConfig(**saved["chosen"])
        model = unet_lib.build_unet(None, chosen.base_filters, chosen.depth, chosen.dropout)
        model.load_weights(os.path.join(folder, "weights")).expect_partial()
        logging.info("%s: reusing the U-Net selected earlier (%s)", row, folder)
        return model, dict(saved, reused=True)
    images, labels = train_arrays
    if config.selection == "synthetic_val":
        (images, labels), val = _holdout(images, labels, config.synthetic_val_fraction,
                                         config.seed)
    else:
        val = scorer
    configs = grid_configs(config.unet, config.grid)
    logging.info("%s: training %d U-Net setting(s) on %d patches, selecting on %s", row,
                 len(configs), len(images), config.selection)
    start = time.time()
    model, chosen, results = unet_lib.train_unet_grid((images, labels), val, configs)
    selection = {
        "row": row, "method": config.selection, "num_train_patches": int(len(images)),
        "num_val_patches": None if callable(val) else int(len(val[0])),
        "chosen": dataclasses.asdict(chosen),
        "best_val_dice": max(h["best_val_dice"] for _, h in results),
        "grid": [_history_json(h, c) for c, h in results],
        "train_seconds": time.time() - start, "key": key}
    with atomic.staged_dir(folder, overwrite=True) as staging:
        model.save_weights(os.path.join(staging, "weights"))
        atomic.write_json_atomic(os.path.join(staging, "selection.json"), selection)
    return model, dict(selection, reused=False)


# --- test ----------------------------------------------------------------------------------

def _to_input_orientation(binary: np.ndarray, vol: volumes.Volume):
    """A NIfTI image of ``binary`` (RAS+ arrays of volumes.load_volume) on the input image's
    own voxel grid: the input's orientation and affine."""
    import nibabel as nib
    source = nib.load(vol.case.image)
    transform = nib.orientations.ornt_transform(nib.io_orientation(vol.affine),
                                                nib.io_orientation(source.affine))
    data = nib.orientations.apply_orientation(binary, transform).astype(np.uint8)
    image = nib.Nifti1Image(data, source.affine)
    image.set_qform(source.affine, int(source.header["qform_code"]) or 1)
    image.set_sform(source.affine, int(source.header["sform_code"]) or 1)
    return image


def _summary(per_patient: List[dict]) -> dict:
    dsc = np.array([p["dsc"] for p in per_patient], np.float64)
    hd = np.array([p["hd95_mm"] for p in per_patient if p["hd95_mm"] is not None], np.float64)
    sd = lambda x: float(np.std(x, ddof=1)) if len(x) >= 2 else None
    return {"dsc_mean": float(np.mean(dsc)), "dsc_sd": sd(dsc),
            "hd95_mean_mm": float(np.mean(hd)) if len(hd) else None, "hd95_sd_mm": sd(hd),
            "hd95_num_undefined": int(len(per_patient) - len(hd)),
            "num_patients": len(per_patient)}


def _finite(x) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def _normalised(vol: volumes.Volume, normalization: dict) -> np.ndarray:
    """The volume's image normalised like the data set's patches (dataset.json's entry)."""
    return patches.fit_normalization(
        vol.image, vol.mask, normalization["method"], normalization["percentile"],
        normalization["fixed_range"]).apply(vol.image)


def _threshold_segment(vol: volumes.Volume, normalization: dict, threshold: float):
    return ((_normalised(vol, normalization) >= threshold) & (vol.mask > 0)).astype(np.uint8)


def _test_patches(vol, normalization: dict, patch_size: int, num: int, vessel_fraction: float,
                  rng) -> np.ndarray:
    centres = patches.sample_centres(vol.label, vol.mask, num, vessel_fraction, patch_size, rng)
    return patches.extract(_normalised(vol, normalization), centres, patch_size)[0]


# --- FID -----------------------------------------------------------------------------------

def load_fid_network(config: EvalConfig):
    """tfdpgan.fid's network; any failure is an EvaluationError (never a silent skip)."""
    try:
        from tfdpgan.evaluation import fid as fid_lib
    except ImportError as e:
        raise EvaluationError(f"--fid=true but tfdpgan.fid cannot be imported ({e}); pass "
                              f"--fid=false to evaluate without FID") from e
    try:
        return fid_lib, fid_lib.load_network(weights=config.fid_weights)
    except Exception as e:  # noqa: BLE001 - any loading problem becomes one clear message
        raise EvaluationError(
            f"--fid=true but the FID network could not be loaded (weights="
            f"{config.fid_weights or 'default'}): {type(e).__name__}: {e}. Pass --fid_weights="
            f"PATH (or a reachable TF-Hub handle), or --fid=false to skip FID") from e


def _activations(fid_lib, network, images: np.ndarray, cache_dir: Optional[str],
                 key: Optional[dict]) -> np.ndarray:
    """Inception activations of normalised patches, cached under ``cache_dir`` by ``key``."""
    path = None
    if cache_dir and key is not None:
        name = hashlib.sha256(json.dumps(dict(key, network=network.name),
                                         sort_keys=True).encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"activations-{name}.npy")
        if os.path.isfile(path):
            return np.load(path)
    acts = np.asarray(fid_lib.activations(network, fid_lib.to_inception_range(images)))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, acts)
        os.replace(tmp, path)
    return acts


def _cached_distance(fid_lib, a, b, cache_dir: Optional[str], key: dict) -> float:
    """frechet_distance(a, b), cached like the activations (the real-vs-real floor is the
    same for every run of a sweep, and a 2048-d distance takes a while on a CPU)."""
    path = None
    if cache_dir:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"distance-{name}.json")
        cached = _read_json(path)
        if cached is not None:
            return float(cached["frechet_distance"])
    value = float(fid_lib.frechet_distance(a, b))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        atomic.write_json_atomic(path, {"frechet_distance": value, "key": key})
    return value


def _subset(n: int, k: int, seed: int, salt: int) -> np.ndarray:
    return np.sort(np.random.default_rng([seed, salt]).permutation(n)[:k])


# --- the evaluation ------------------------------------------------------------------------

def settings_of(config: EvalConfig, run: Run) -> dict:
    """What a report depends on (compared by the sweep to skip finished evaluations)."""
    flat = json.loads(json.dumps(dataclasses.asdict(config)))
    return {"flags": flat, "data": run.rec_dir, "data_created": run.info.get("created"),
            "source_sha256": run.source_sha256, "tfdpgan_version": tfdpgan.__version__}


def read_report(out_dir: str) -> Optional[dict]:
    return _read_json(os.path.join(out_dir, REPORT_JSON))


def evaluate(config: EvalConfig, reuse: bool = False) -> dict:
    """Run the evaluation described in the module docstring; returns report.json's content.

    With ``reuse`` an existing report with identical settings is returned without work.
    """
    import nibabel as nib
    config.validate()
    start = time.time()
    out_dir = config.out_dir or os.path.join(config.workdir, EVAL_DIR)
    run = load_run(config)
    settings = settings_of(config, run)
    if reuse:
        old = read_report(out_dir)
        if old is not None and old.get("settings") == settings:
            logging.info("%s: finished evaluation with the same settings; not redone", out_dir)
            return old
    cases, test_where = test_cases(config, run)
    fid_lib = network = None
    if config.fid:
        fid_lib, network = load_fid_network(config)   # fail before any long work
    normalization = run.info["normalization"]
    patch = run.patch_size
    timing = {}

    # 1-2. Training sets, model selection. No test data is read in this block.
    scorer, val_threshold_data = None, None
    val_cases = split_cases(run.info, "val")
    if config.selection == "real_val":
        if not val_cases:
            raise EvaluationError(f"{run.rec_dir}: no validation patients (split 'val' is "
                                  f"empty); use --selection=synthetic_val")
        _check_exists(val_cases, "validation")
        val_vols = [volumes.load_volume(case) for case in val_cases]
        scorer = VolumeScorer(val_vols, normalization, patch, config.selection_overlap,
                              config.unet.threshold, config.predict_batch_size)
        val_threshold_data = ([img for img, _, _ in scorer.items],
                              [lab for _, _, lab in scorer.items],
                              [msk for _, msk, _ in scorer.items])
        del val_vols
    train_sets = {}
    if run.generator_dir or config.synthetic:
        t = time.time()
        train_sets["synthetic"] = _synthetic_arrays(config, run)
        timing["synthetic_seconds"] = time.time() - t
    real_train_arrays = None
    if config.real_train:
        real_train_arrays = _real_arrays(config.real_train, patch)
        train_sets["real_train"] = real_train_arrays
    models_root = os.path.join(config.workdir, MODELS_DIR)
    models, selections = {}, {}
    for row, arrays in train_sets.items():
        t = time.time()
        models[row], selections[row] = train_selected(config, run, row, arrays, scorer,
                                                      models_root)
        timing[f"{row}_unet_seconds"] = time.time() - t
    threshold = None
    if config.threshold_baseline:
        if val_threshold_data is None:   # synthetic_val: held-out training patches
            images, labels = next(iter(train_sets.values()))
            _, (vi, vl) = _holdout(images, labels, config.synthetic_val_fraction, config.seed)
            val_threshold_data = ([vi], [vl], [np.ones_like(vl)])
        threshold = _choose_threshold(*val_threshold_data)
        selections["threshold"] = {"row": "threshold", "method": config.selection,
                                   "threshold": _finite(threshold),
                                   "scale": "normalised intensity ([-1, 1])"}
    val_threshold_data = scorer = None
    logging.info("model selection finished (%.0f s); reading the %d test patients now",
                 time.time() - start, len(cases))

    primary = next(iter(models), "threshold")
    same_data = False
    # Outputs are written into a staging folder that replaces out_dir only when complete.
    with atomic.staged_dir(out_dir, overwrite=True) as staging:
        # 3. Test patients (first read here).
        t = time.time()
        row_names = list(models) + (["threshold"] if config.threshold_baseline else [])
        per_patient = {row: [] for row in row_names}
        folders = {row: os.path.join(staging, "predictions" if row == primary
                                     else f"predictions_{row}") for row in row_names}
        for folder in folders.values():
            os.makedirs(folder)
        fid_test, n_fid = [], math.ceil(config.fid_samples / len(cases))
        train_sha = {p.get("sha256", {}).get("image") for p in run.info["patients"].values()
                     if p.get("split") in ("train", "val")}
        for i, case in enumerate(cases):
            vol = volumes.load_volume(case, patch)
            if vol.sha256.get("image") in train_sha:
                raise EvaluationError(f"{case.image}: this test image is a training/validation "
                                      f"image of {run.rec_dir} (same SHA-256)")
            for row in row_names:
                if row == "threshold":
                    binary = _threshold_segment(vol, normalization, threshold)
                else:
                    _, binary = stitching.segment_volume(
                        models[row], vol, normalization, patch, config.overlap,
                        config.unet.threshold, config.predict_batch_size)
                hd = seg_metrics.hausdorff95(binary, vol.label, vol.spacing)
                per_patient[row].append({"patient_id": case.patient_id,
                                         "dsc": seg_metrics.dice(binary, vol.label),
                                         "hd95_mm": _finite(hd)})
                nib.save(_to_input_orientation(binary, vol),
                         os.path.join(folders[row], f"{case.patient_id}.nii.gz"))
            if config.fid:
                fid_test.append(_test_patches(vol, normalization, patch, n_fid,
                                              float(run.info.get("vessel_fraction", 0.5)),
                                              np.random.default_rng([config.seed, 11, i])))
            logging.info("test patient %d/%d %s: %s", i + 1, len(cases), case.patient_id,
                         ", ".join(f"{row} DSC {per_patient[row][-1]['dsc']:.4f}"
                                   for row in row_names))
        timing["test_seconds"] = time.time() - t

        # 4. FID.
        fid_info = {"fid": None, "fid_real_floor": None, "fid_network": None, "fid_samples": None}
        if config.fid:
            t = time.time()
            test_images = np.concatenate(fid_test)
            del fid_test
            if len(test_images) > config.fid_samples:
                test_images = test_images[_subset(len(test_images), config.fid_samples,
                                                  config.seed, 12)]
            test_key = {"kind": "test", "cases": [[c.patient_id, c.image, _mtime(c.image)]
                                                   for c in cases],
                        "n": int(len(test_images)), "seed": config.seed, "patch": patch,
                        "normalization": normalization,
                        "vessel_fraction": run.info.get("vessel_fraction")}
            a_test = _activations(fid_lib, network, test_images, config.fid_cache_dir, test_key)
            same_data = (config.real_train and os.path.abspath(config.real_train) == run.rec_dir)
            real_images = (real_train_arrays if same_data else _real_arrays(run.rec_dir, patch))[0]
            pick = _subset(len(real_images), config.fid_samples, config.seed, 13)
            train_key = {"kind": "train", "data": run.rec_dir, "created": run.info.get("created"),
                         "n": int(len(pick)), "seed": config.seed}
            a_real = _activations(fid_lib, network, np.asarray(real_images[pick]),
                                  config.fid_cache_dir, train_key)
            fid_info["fid_real_floor"] = _cached_distance(
                fid_lib, a_real, a_test, config.fid_cache_dir,
                {"floor": [train_key, test_key], "network": network.name})
            n_syn = None
            if "synthetic" in train_sets:
                syn = train_sets["synthetic"][0]
                n_syn = min(len(syn), config.fid_samples)
                a_syn = _activations(fid_lib, network, np.asarray(syn[:n_syn]), None, None)
                fid_info["fid"] = float(fid_lib.frechet_distance(a_syn, a_test))
            fid_info["fid_network"] = network.name
            fid_info["fid_samples"] = {"synthetic": n_syn, "real_test": int(len(test_images)),
                                       "real_train": int(len(pick))}
            timing["fid_seconds"] = time.time() - t

        # 5. Report.
        rows = {}
        for row in row_names:
            rows[row] = dict(_summary(per_patient[row]), per_patient=per_patient[row],
                             selection=selections[row])
        if "real_train" in rows:   # real training patches vs real test patches: the floor
            rows["real_train"]["fid"] = fid_info["fid_real_floor"] if same_data else None
        if "synthetic" in rows:
            rows["synthetic"]["fid"] = fid_info["fid"]
        timing["total_seconds"] = time.time() - start
        report = {
            **fid_info,
            **{k: v for k, v in rows[primary].items() if k != "selection"},
            "source": primary,
            "privacy": _privacy_summary(run.card) if primary == "synthetic" else None,
            "selection": dict(selections[primary], uses_private_data=config.selection == "real_val",
                              note=(PRIVACY_NOTE_REAL_VAL if config.selection == "real_val"
                                    else PRIVACY_NOTE_SYNTHETIC_VAL),
                              val_patients=[c.patient_id for c in val_cases]
                              if config.selection == "real_val" else []),
            "baselines": {row: rows[row] for row in row_names if row != primary},
            "test_set": {"source": test_where, "patients": [c.patient_id for c in cases],
                         "num_patients": len(cases)},
            "privacy_note": PRIVACY_NOTE_TEST,
            "flags": settings["flags"],
            "settings": settings,
            "conventions": {
                "sd": "sample SD over patients (ddof=1); null for fewer than 2 patients",
                "hd95": "95th percentile of symmetric surface distances in mm (anisotropic "
                        "spacing); null when undefined (empty prediction), excluded from mean/SD "
                        "and counted in hd95_num_undefined",
                "dsc": "inside the whole volume, prediction restricted to the brain mask; both "
                       "empty = 1, one empty = 0",
                "probability_threshold": config.unet.threshold,
                "tile_overlap": config.overlap},
            "timing": timing,
            "tfdpgan_version": tfdpgan.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        atomic.write_json_atomic(os.path.join(staging, REPORT_JSON), report)
        atomic.write_text_atomic(os.path.join(staging, REPORT_MD), render_markdown(report))
    logging.info("evaluation written to %s (%.0f s)", out_dir, time.time() - start)
    return report


def _mtime(path: str) -> float:
    return os.path.getmtime(path)


def _synthetic_arrays(config: EvalConfig, run: Run):
    if config.synthetic:
        from tfdpgan.data import pipeline
        arrays = pipeline.load_arrays(config.synthetic, "train")
        return np.asarray(arrays.images), np.asarray(arrays.labels)
    from tfdpgan.gan import export, sample
    fn, latent_dim, patch = export.load_generator(run.generator_dir)
    if patch != run.patch_size:
        raise EvaluationError(f"{run.generator_dir}: generator patch size {patch} differs from "
                              f"the data set's {run.patch_size} ({run.rec_dir})")
    logging.info("sampling %d synthetic pairs from %s", config.num_synthetic, run.generator_dir)
    return sample.generate(fn, latent_dim, config.num_synthetic, config.seed)


def _real_arrays(rec_dir: str, patch_size: int):
    from tfdpgan.data import pipeline
    info = _read_dataset(rec_dir, "--real_train")
    if info["patch_size"] != patch_size:
        raise EvaluationError(f"{rec_dir}: patch size {info['patch_size']} differs from the "
                              f"evaluated data set's {patch_size}")
    arrays = pipeline.load_arrays(rec_dir, "train")
    return arrays.images, arrays.labels


def _privacy_summary(card: Optional[dict]) -> Optional[dict]:
    if card is None:
        return None
    keys = ("private", "epsilon", "delta", "target_epsilon", "accountant", "noise_multiplier",
            "critic_steps", "sampling_rate", "patches_per_patient")
    return dict({k: card.get(k) for k in keys}, unit=card.get("privacy_unit"))


# --- REPORT.md -----------------------------------------------------------------------------

def format_mean_sd(mean, sd, digits=3) -> str:
    """'m ± s' ('m' without an SD, 'n/a' without a mean)."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def format_number(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


ROW_TITLES = {"synthetic": "U-Net trained on synthetic data",
              "real_train": "U-Net trained on real training patches (upper bound)",
              "threshold": "global intensity threshold (chosen on validation)"}


def render_markdown(report: dict) -> str:
    rows = {report["source"]: report, **report["baselines"]}
    privacy = report.get("privacy")
    if privacy is None:
        eps = "n/a (no generator)"
    elif not privacy.get("private"):
        eps = "∞ (not private)"
    else:
        eps = f"{privacy['epsilon']:.3g} per {privacy['unit']} (δ = {privacy['delta']:.3g})"
    flags_used = report["flags"]
    lines = [
        "# Evaluation report", "",
        f"- Run: `{flags_used['workdir']}`; privacy of the generator: ε = {eps}",
        f"- Test set: {report['test_set']['num_patients']} patient"
        f"{'' if report['test_set']['num_patients'] == 1 else 's'} "
        f"({report['test_set']['source']})",
        f"- FID network: {report['fid_network'] or 'not computed'}", "",
        "| row | DSC (mean ± SD) | HD95 mm (mean ± SD) | undefined HD95 | FID |",
        "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {ROW_TITLES.get(name, name)} | {format_mean_sd(row['dsc_mean'], row['dsc_sd'])} "
                     f"| {format_mean_sd(row['hd95_mean_mm'], row['hd95_sd_mm'], 2)} | "
                     f"{row['hd95_num_undefined']} | {format_number(row.get('fid'))} |")
    lines += ["", f"FID of real training vs real test patches (floor): "
                  f"{format_number(report['fid_real_floor'])}", "",
              "## Per patient", "",
              "| patient | " + " | ".join(f"{n} DSC | {n} HD95 mm" for n in rows) + " |",
              "|---|" + "---|---|" * len(rows)]
    for i, entry in enumerate(report["per_patient"]):
        cells = []
        for row in rows.values():
            p = row["per_patient"][i]
            cells += [f"{p['dsc']:.4f}", format_number(p["hd95_mm"])]
        lines.append(f"| {entry['patient_id']} | " + " | ".join(cells) + " |")
    sel = report["selection"]
    lines += ["", "## Model selection", "",
              f"Method: `{sel['method']}`. {sel['note']}", ""]
    for name, row in rows.items():
        s = row["selection"] if name != report["source"] else sel
        if "grid" in s:
            best = next(g for g in s["grid"] if g["config"] == s["chosen"])
            lines.append(f"- {name}: {len(s['grid'])} grid point(s); chosen learning rate "
                         f"{s['chosen']['learning_rate']:g}, dropout {s['chosen']['dropout']:g}"
                         f", augment {s['chosen']['augment']}, best validation Dice "
                         f"{s['best_val_dice']:.4f} after epoch {best['best_epoch']} of "
                         f"{s['chosen']['epochs']}")
        elif "threshold" in s:
            lines.append(f"- {name}: threshold {format_number(s['threshold'], 4)} on the "
                         f"{s['scale']}")
    lines += ["", "## Privacy", "", report["privacy_note"], "",
              "## Conventions", ""]
    lines += [f"- {k}: {v}" for k, v in report["conventions"].items()]
    lines += ["", "## Flags", "", "```", json.dumps(flags_used, indent=2, sort_keys=True), "```",
              "", f"tfdpgan {report['tfdpgan_version']}"]
    return "\n".join(lines) + "\n"


# --- command line --------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS, sweep: bool = False):
    """The evaluation flags. With ``sweep`` (tfdpgan.sweep, which also defines train's flags)
    --workdir/--data/--out_dir are left to the sweep and --test_data takes a list."""
    d = EvalConfig(workdir="")
    u = d.unet
    define = lambda kind, *a, **k: getattr(flags, f"DEFINE_{kind}")(*a, flag_values=fv, **k)
    if not sweep:
        define("string", "workdir", None, "Training workdir to evaluate (its generator/).")
        define("string", "out_dir", None, "Output folder (default: WORKDIR/eval).")
        define("string", "data", None, "The run's TFRecord data set (default: run.json's).")
        define("string", "test_data", None, "Folder with imagesTs/ labelsTs/ [masksTs/] "
               "(default: the test patients of the run's data set).")
    else:
        define("list", "test_data", [], "Test folders (imagesTs/ labelsTs/ [masksTs/]), one "
               "evaluation each (default: the test patients of the data set).")
    define("string", "synthetic", None, "Synthetic TFRecord folder (sample.py) to train on "
           "instead of sampling --num_synthetic from the generator.")
    define("integer", "num_synthetic", d.num_synthetic, "Synthetic pairs to sample.")
    define("string", "real_train", None, "Also train the U-Net on this TFRecord folder's real "
           "training patches (upper-bound row).")
    define("boolean", "threshold_baseline", d.threshold_baseline, "Also report a global "
           "intensity threshold chosen on the validation set.")
    define("enum", "selection", d.selection, list(SELECTIONS), "real_val: select on the real "
           "validation patients' whole volumes (private data outside DP, as the paper); "
           "synthetic_val: on held-out synthetic patches (privacy-free).")
    define("float", "synthetic_val_fraction", d.synthetic_val_fraction, "Share held out for "
           "--selection=synthetic_val.")
    define("string", "grid", d.grid, "U-Net grid, e.g. 'lr=1e-4,3e-4;dropout=0,0.1;augment=0,1'"
           f" (keys: {', '.join(sorted(GRID_KEYS))}); empty: the single --unet_* setting.")
    define("integer", "unet_base_filters", u.base_filters, "U-Net width (paper: 32).")
    define("integer", "unet_depth", u.depth, "U-Net pooling levels (paper: 4).")
    define("float", "unet_lr", u.learning_rate, "U-Net Adam learning rate.")
    define("float", "unet_dropout", u.dropout, "U-Net dropout.")
    define("boolean", "unet_augment", u.augment, "Random flips / 90-degree rotations.")
    define("integer", "unet_batch_size", u.batch_size, "U-Net batch size.")
    define("integer", "unet_epochs", u.epochs, "Epochs (each followed by validation).")
    define("integer", "unet_steps_per_epoch", u.steps_per_epoch, "Steps per epoch "
           "(0: one pass over the training patches).")
    define("integer", "unet_seed", u.seed, "U-Net initialisation/shuffling seed.")
    define("float", "overlap", d.overlap, "Tile overlap on test volumes.")
    define("float", "selection_overlap", d.selection_overlap, "Tile overlap on validation "
           "volumes (every epoch).")
    define("boolean", "fid", d.fid, "Compute FID (fails if the network cannot be loaded).")
    define("string", "fid_weights", d.fid_weights, "FID network weights: path or TF-Hub "
           "handle (default: tfdpgan.fid's).")
    define("integer", "fid_samples", d.fid_samples, "Images per FID set.")
    define("string", "fid_cache_dir", None, "Cache of real-patch FID activations.")
    define("integer", "eval_seed", d.seed, "Seed of synthetic sampling, hold-outs and FID "
           "patch sampling.")


def config_from_flags(fv: flags.FlagValues = FLAGS, **overrides) -> EvalConfig:
    base = unet_lib.UNetConfig(
        base_filters=fv.unet_base_filters, depth=fv.unet_depth, learning_rate=fv.unet_lr,
        dropout=fv.unet_dropout, augment=fv.unet_augment, batch_size=fv.unet_batch_size,
        epochs=fv.unet_epochs, steps_per_epoch=fv.unet_steps_per_epoch or None,
        seed=fv.unet_seed)
    values = dict(
        synthetic=fv.synthetic, num_synthetic=fv.num_synthetic, real_train=fv.real_train,
        threshold_baseline=fv.threshold_baseline, selection=fv.selection,
        synthetic_val_fraction=fv.synthetic_val_fraction, grid=fv.grid, unet=base,
        overlap=fv.overlap, selection_overlap=fv.selection_overlap, fid=fv.fid,
        fid_weights=fv.fid_weights, fid_samples=fv.fid_samples,
        fid_cache_dir=fv.fid_cache_dir, seed=fv.eval_seed)
    if "out_dir" in fv:
        values.update(workdir=fv.workdir, out_dir=fv.out_dir, data=fv.data,
                      test_data=fv.test_data)
    values.update(overrides)
    return EvalConfig(**values)


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    config = config_from_flags()
    try:
        report = evaluate(config)
    except (EvaluationError, volumes.InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out_dir = config.out_dir or os.path.join(config.workdir, EVAL_DIR)
    print(f"{report['source']}: DSC {format_mean_sd(report['dsc_mean'], report['dsc_sd'])}, HD95 "
          f"{format_mean_sd(report['hd95_mean_mm'], report['hd95_sd_mm'], 2)} mm, FID "
          f"{format_number(report['fid'])} (real floor {format_number(report['fid_real_floor'])}) on "
          f"{report['test_set']['num_patients']} test patients")
    for name, row in report["baselines"].items():
        print(f"{name}: DSC {format_mean_sd(row['dsc_mean'], row['dsc_sd'])}, HD95 "
              f"{format_mean_sd(row['hd95_mean_mm'], row['hd95_sd_mm'], 2)} mm")
    print(f"report: {os.path.join(out_dir, REPORT_JSON)} and {REPORT_MD}; predictions in "
          f"{os.path.join(out_dir, 'predictions')}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
