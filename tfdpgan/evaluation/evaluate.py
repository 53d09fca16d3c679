"""Utility of a synthetic data set: a U-Net trained on it, scored on real test patients.

Follows Kossen et al. (2022). :func:`evaluate` runs, in this order:

1. **Training sets** (``select``). ``num_synthetic`` pairs sampled from ``W/generator``, or the
   synthetic TFRecords of ``synthetic`` (tfdpgan.sample output, same schema); synthetic labels
   are binarised at ``label_threshold``. Extra rows: ``real_train=REC`` trains the same U-Net on
   REC's real training patches (upper bound); ``threshold_baseline`` is a global intensity
   threshold on the normalised image; a run started from a public prior (run.json's
   ``init_from``) gets a ``prior`` row sampled from the prior alone (``prior_row``).
2. **Model selection** (selection.py): epoch and grid point of each U-Net row (default: a
   2-point learning-rate grid, collapse detection with restarts, see unet.py) and the
   threshold row's threshold, on a validation set that is never the test set
   (``synthetic_val``, the default and privacy-free, or ``real_val``, the paper's way, which
   uses private data outside the DP guarantee and is flagged so in the report). With
   ``repeats`` = K, each U-Net row trains K U-Nets (repeat k: seed + k); scores are their mean.
3. **Test** (``score_test``, only after every selection is final): each test patient's whole
   volume is segmented (stitching.segment_volume, tiles overlapping by ``overlap``),
   thresholded at 0.5 and scored with DSC and the 95 % Hausdorff distance in mm (anisotropic
   spacing); predictions are saved as uint8 NIfTI with the input's affine and orientation.
4. **FID** (``compute_fid``; tfdpgan.evaluation.fid): ``fid`` = synthetic images vs real TEST
   patches sampled from the test volumes like the data set's patches (same patch size,
   normalisation and vessel fraction); ``fid_real_floor`` = real TRAIN patches vs the same test
   patches. Failing to load the network is an error, never a silent skip.
5. **Report** (report.py), written atomically: ``W/private/eval/report.json``,
   ``W/private/eval/REPORT.md``, ``W/private/eval/predictions/<case>.nii.gz`` (the first U-Net
   row; baselines in ``predictions_<row>/``). Selected U-Nets are kept in
   ``W/private/eval_models/`` and reused. Both sit under the run's ``private/``
   (tfdpgan.workdir): they are computed from real test (and, for baselines, training) data
   outside the DP guarantee. An old flat workdir keeps ``W/eval/``.
"""
import dataclasses
import json
import math
import os
import time
from typing import List, Optional

import nibabel as nib
import numpy as np
from absl import logging

import tfdpgan
from tfdpgan import atomic, errors, workdir
from tfdpgan.data import patches, volumes
from tfdpgan.evaluation import inputs, report as report_lib, seg_metrics, selection, stitching
from tfdpgan.evaluation.config import EvalConfig
from tfdpgan.evaluation.fid import cache as fid_cache, network as fid_network

__all__ = ["EVAL_DIR", "EvalConfig", "EvaluationError", "Selected", "load_fid_network",
           "settings_of", "read_report", "select", "score_test", "compute_fid", "evaluate",
           "to_input_orientation"]

EVAL_DIR = workdir.EVAL
EvaluationError = errors.EvaluationError
read_report = report_lib.read_report


@dataclasses.dataclass
class Selected:
    """The outcome of model selection (no test data read yet)."""
    models: dict                    # row -> selected Keras U-Net (repeat 0)
    selections: dict                # row -> selection dict (report)
    threshold: Optional[float]      # threshold row's threshold (None without that row)
    train_sets: dict                # row -> (images, labels)
    val_cases: List[volumes.Case]   # real validation patients (used only by real_val)
    repeats: dict = dataclasses.field(default_factory=dict)   # row -> U-Nets of repeats 1..K-1

    @property
    def rows(self) -> List[str]:
        return list(self.models) + (["threshold"] if self.threshold is not None else [])

    @property
    def primary(self) -> str:
        return next(iter(self.models), "threshold")


def load_fid_network(config: EvalConfig) -> fid_network.Network:
    """The FID network; any failure is an EvaluationError (never a silent skip)."""
    try:
        return fid_network.load_network(weights=config.fid_weights)
    except Exception as e:  # noqa: BLE001 - any loading problem becomes one clear message
        raise EvaluationError(
            f"--fid=true but the FID network could not be loaded (weights="
            f"{config.fid_weights or 'default'}): {type(e).__name__}: {e}. Pass --fid_weights="
            f"PATH (or a reachable TF-Hub handle), or --fid=false to skip FID") from e


def settings_of(config: EvalConfig, run: inputs.Run) -> dict:
    """What a report depends on (compared by the sweep to skip finished evaluations)."""
    flat = json.loads(json.dumps(dataclasses.asdict(config)))
    return {"flags": flat, "data": run.rec_dir, "data_created": run.info.get("created"),
            "source_sha256": run.source_sha256, "tfdpgan_version": tfdpgan.__version__}


def _real_val_scorer(config: EvalConfig, run: inputs.Run, val_cases):
    if not val_cases:
        raise EvaluationError(f"{run.rec_dir}: no validation patients (split 'val' is empty);"
                              f" use --selection=synthetic_val")
    inputs.check_exists(val_cases, "validation")
    return selection.VolumeScorer([volumes.load_volume(case) for case in val_cases],
                                  run.info["normalization"], run.patch_size,
                                  config.selection_overlap, config.unet.threshold,
                                  config.predict_batch_size)


def select(config: EvalConfig, run: inputs.Run, timing: dict) -> Selected:
    """Steps 1-2: training sets and model selection. Reads no test data."""
    val_cases = inputs.split_cases(run.info, "val")
    scorer = _real_val_scorer(config, run, val_cases) if config.selection == "real_val" else None
    # row -> its training arrays under given settings (a repeat draws synthetic pairs anew;
    # a --synthetic folder and real patches are the same for every repeat)
    loaders = {}
    if run.generator_dir or config.synthetic:
        loaders["synthetic"] = lambda c: inputs.synthetic_arrays(c, run)
    if run.prior:
        loaders["prior"] = lambda c: inputs.prior_arrays(c, run)
    if config.real_train:
        real = inputs.real_arrays(config.real_train, run.patch_size)
        loaders["real_train"] = lambda c: real
    train_sets = {}
    for row, load in loaders.items():
        t = time.time()
        train_sets[row] = load(config)
        if row == "synthetic":
            timing["synthetic_seconds"] = time.time() - t
    models_root = workdir.path(config.workdir, selection.MODELS_DIR)
    models, selections, threshold, repeats = {}, {}, None, {}
    for row, arrays in train_sets.items():
        t = time.time()
        models[row], selections[row] = selection.train_selected(config, run, row, arrays,
                                                                scorer, models_root)
        repeats[row], keys = [], [selections[row]["key"]]
        for k in range(1, config.repeats):
            again = config.repeat(k)
            model, chosen = selection.train_selected(again, run, row, loaders[row](again),
                                                     scorer, models_root)
            repeats[row].append(model)
            keys.append(chosen["key"])
        if config.repeats > 1:
            selections[row]["repeat_keys"] = keys
        timing[f"{row}_unet_seconds"] = time.time() - t
    if config.threshold_baseline:
        # A real-data baseline (like real_train): its threshold is chosen on the real
        # validation volumes whenever there are any, whatever the U-Net selection; on
        # synthetic patches it would measure the generator, not the threshold.
        if scorer is None and val_cases:
            scorer = _real_val_scorer(config, run, val_cases)
        threshold, selections["threshold"] = selection.threshold_selection(config, scorer,
                                                                           train_sets)
        selections["threshold"]["threshold"] = report_lib.finite(threshold)
        if scorer is not None:
            selections["threshold"]["volumes"] = f"validation patients of {run.rec_dir}"
            if config.test_data:
                # e.g. a prior trained on another site, scored on this site's volumes
                selections["threshold"]["caveat"] = (
                    "the test volumes (--test_data) are not from this data set: across a site "
                    "shift this threshold is not the test site's own best threshold")
    return Selected(models, selections, threshold, train_sets, val_cases, repeats)


def to_input_orientation(binary: np.ndarray, vol: volumes.Volume) -> nib.Nifti1Image:
    """A NIfTI image of ``binary`` (RAS+ arrays of volumes.load_volume) on the input image's
    own voxel grid: the input's orientation and affine (also for MetaImage/NRRD/DICOM input,
    whose affine volumes.load_volume keeps as ``source_affine``)."""
    codes = (1, 1)
    source_affine = vol.source_affine
    if str(vol.case.image).endswith((".nii", ".nii.gz")):
        source = nib.load(vol.case.image)
        source_affine = source.affine
        codes = (int(source.header["qform_code"]) or 1, int(source.header["sform_code"]) or 1)
    if source_affine is None:
        source_affine = vol.affine
    transform = nib.orientations.ornt_transform(nib.io_orientation(vol.affine),
                                                nib.io_orientation(source_affine))
    data = nib.orientations.apply_orientation(binary, transform).astype(np.uint8)
    image = nib.Nifti1Image(data, source_affine)
    image.set_qform(source_affine, codes[0])
    image.set_sform(source_affine, codes[1])
    return image


def _segment(config: EvalConfig, run: inputs.Run, model, vol: volumes.Volume) -> np.ndarray:
    _, binary = stitching.segment_volume(model, vol, run.info["normalization"],
                                         run.patch_size, config.overlap, config.unet.threshold,
                                         config.predict_batch_size)
    return binary


def _score_row(config: EvalConfig, run: inputs.Run, sel: Selected, row: str, vol):
    """(binary of repeat 0, per-patient entry): DSC and HD95 averaged over the row's repeats
    (HD95 over those where it is defined), each repeat's value kept."""
    if row == "threshold":
        norm = inputs.normalised(vol, run.info["normalization"])
        binaries = [((norm >= sel.threshold) & (vol.mask > 0)).astype(np.uint8)]
    else:
        binaries = [_segment(config, run, model, vol)
                    for model in [sel.models[row], *sel.repeats.get(row, [])]]
    dsc = [seg_metrics.dice(b, vol.label) for b in binaries]
    hd = [report_lib.finite(seg_metrics.hausdorff95(b, vol.label, vol.spacing))
          for b in binaries]
    defined = [h for h in hd if h is not None]
    entry = {"dsc": float(np.mean(dsc)),
             "hd95_mm": float(np.mean(defined)) if defined else None}
    if len(binaries) > 1:
        entry.update(dsc_repeats=dsc, hd95_repeats_mm=hd)
    return binaries[0], entry


def _fid_test_patches(config: EvalConfig, run: inputs.Run, vol, num: int, index: int):
    centres = patches.sample_centres(vol.label, vol.mask, num,
                                     float(run.info.get("vessel_fraction", 0.5)),
                                     run.patch_size, np.random.default_rng([config.seed, 11, index]))
    return patches.extract(inputs.normalised(vol, run.info["normalization"]), centres,
                           run.patch_size)[0]


def score_test(config: EvalConfig, run: inputs.Run, cases, sel: Selected, staging: str):
    """Step 3: segment and score every test patient (first read here); predictions into
    ``staging``. Returns (per_patient by row, FID test patches or None)."""
    per_patient = {row: [] for row in sel.rows}
    folders = {row: os.path.join(staging, "predictions" if row == sel.primary
                                 else f"predictions_{row}") for row in sel.rows}
    for folder in folders.values():
        os.makedirs(folder)
    fid_test, n_fid = [], math.ceil(config.fid_samples / len(cases))
    train_sha = {p.get("sha256", {}).get("image") for p in run.info["patients"].values()
                 if p.get("split") in ("train", "val")}
    for i, case in enumerate(cases):
        vol = volumes.load_volume(case, run.patch_size)
        if vol.sha256.get("image") in train_sha:
            raise EvaluationError(f"{case.image}: this test image is a training/validation "
                                  f"image of {run.rec_dir} (same SHA-256)")
        for row in sel.rows:
            binary, entry = _score_row(config, run, sel, row, vol)
            per_patient[row].append(dict(patient_id=case.patient_id, **entry))
            nib.save(to_input_orientation(binary, vol),
                     os.path.join(folders[row], f"{case.patient_id}.nii.gz"))
        if config.fid:
            fid_test.append(_fid_test_patches(config, run, vol, n_fid, i))
        logging.info("test patient %d/%d %s: %s", i + 1, len(cases), case.patient_id,
                     ", ".join(f"{row} DSC {per_patient[row][-1]['dsc']:.4f}"
                               for row in sel.rows))
    return per_patient, (np.concatenate(fid_test) if config.fid else None)


def _subset(n: int, k: int, seed: int, salt: int) -> np.ndarray:
    return np.sort(np.random.default_rng([seed, salt]).permutation(n)[:k])


def compute_fid(config: EvalConfig, run: inputs.Run, cases, network, test_images,
                sel: Selected) -> dict:
    """Step 4: FID of the synthetic row and the real-vs-real floor, both against the same
    real test patches (real-patch activations and the floor cached by key)."""
    if len(test_images) > config.fid_samples:
        test_images = test_images[_subset(len(test_images), config.fid_samples, config.seed, 12)]
    test_key = {"kind": "test", "cases": [[c.patient_id, c.image, os.path.getmtime(c.image)]
                                          for c in cases],
                "n": int(len(test_images)), "seed": config.seed, "patch": run.patch_size,
                "normalization": run.info["normalization"],
                "vessel_fraction": run.info.get("vessel_fraction")}
    cache_dir = config.fid_cache_dir
    a_test = fid_cache.cached_activations(network, test_images, cache_dir, test_key)
    real_images = (sel.train_sets["real_train"] if _same_data(config, run)
                   else inputs.real_arrays(run.rec_dir, run.patch_size))[0]
    pick = _subset(len(real_images), config.fid_samples, config.seed, 13)
    train_key = {"kind": "train", "data": run.rec_dir, "created": run.info.get("created"),
                 "n": int(len(pick)), "seed": config.seed}
    a_real = fid_cache.cached_activations(network, np.asarray(real_images[pick]), cache_dir,
                                          train_key)
    info = {"fid": None,
            "fid_real_floor": fid_cache.cached_distance(
                a_real, a_test, cache_dir, {"floor": [train_key, test_key],
                                            "network": network.name}),
            "fid_network": network.name}
    n_syn = None
    for row, key in (("synthetic", "fid"), ("prior", "fid_prior")):
        if row in sel.train_sets:
            syn = sel.train_sets[row][0]
            n_syn = min(len(syn), config.fid_samples)
            a_syn = fid_cache.cached_activations(network, np.asarray(syn[:n_syn]), None, None)
            info[key] = float(fid_cache.distance.frechet_distance(a_syn, a_test))
    info["fid_samples"] = {"synthetic": n_syn, "real_test": int(len(test_images)),
                           "real_train": int(len(pick))}
    return info


def _same_data(config: EvalConfig, run: inputs.Run) -> bool:
    return bool(config.real_train) and os.path.abspath(config.real_train) == run.rec_dir


def _report(config, run, cases, test_where, sel: Selected, per_patient, fid_info, settings,
            timing) -> dict:
    """Step 5: report.json's object from the phases' results."""
    rows = {row: dict(report_lib.summary(per_patient[row]), per_patient=per_patient[row],
                      selection=sel.selections[row]) for row in sel.rows}
    if "real_train" in rows:   # real training patches vs real test patches: the floor
        rows["real_train"]["fid"] = fid_info["fid_real_floor"] if _same_data(config, run) else None
    if "synthetic" in rows:
        rows["synthetic"]["fid"] = fid_info["fid"]
    if "prior" in rows:
        rows["prior"]["fid"] = fid_info.get("fid_prior")
        rows["prior"]["source"] = run.prior
    real_val = config.selection == "real_val"
    primary_selection = dict(
        sel.selections[sel.primary], uses_private_data=real_val,
        note=report_lib.PRIVACY_NOTE_REAL_VAL if real_val else report_lib.PRIVACY_NOTE_SYNTHETIC_VAL,
        val_patients=[c.patient_id for c in sel.val_cases] if real_val else [])
    return report_lib.build_report(
        rows=rows, primary=sel.primary, fid_info=fid_info,
        privacy=report_lib.privacy_summary(run.card) if sel.primary == "synthetic" else None,
        selection=primary_selection,
        test_set={"source": test_where, "patients": [c.patient_id for c in cases],
                  "num_patients": len(cases)},
        settings=settings, timing=timing,
        conventions_=report_lib.conventions(config.unet.threshold, config.overlap,
                                            config.label_threshold))


def evaluate(config: EvalConfig, reuse: bool = False) -> dict:
    """Run the evaluation described in the module docstring; returns report.json's content.

    With ``reuse`` an existing report with identical settings is returned without work.
    Outputs are written into a staging folder that replaces the output folder only when
    complete, so a failed evaluation leaves the previous one (or nothing) behind.
    """
    config.validate()
    start = time.time()
    out_dir = config.out_dir or workdir.path(config.workdir, EVAL_DIR)
    run = inputs.load_run(config)
    settings = settings_of(config, run)
    if reuse:
        old = read_report(out_dir)
        if old is not None and old.get("settings") == settings:
            logging.info("%s: finished evaluation with the same settings; not redone", out_dir)
            return old
    cases, test_where = inputs.test_cases(config, run)
    network = load_fid_network(config) if config.fid else None   # fail before long work
    timing = {}
    sel = select(config, run, timing)
    logging.info("model selection finished (%.0f s); reading the %d test patients now",
                 time.time() - start, len(cases))
    with atomic.staged_dir(out_dir, overwrite=True) as staging:
        t = time.time()
        per_patient, fid_test = score_test(config, run, cases, sel, staging)
        timing["test_seconds"] = time.time() - t
        fid_info = {"fid": None, "fid_real_floor": None, "fid_network": None,
                    "fid_samples": None}
        if config.fid:
            t = time.time()
            fid_info = compute_fid(config, run, cases, network, fid_test, sel)
            timing["fid_seconds"] = time.time() - t
        timing["total_seconds"] = time.time() - start
        report = _report(config, run, cases, test_where, sel, per_patient, fid_info, settings,
                         timing)
        report_lib.write_report(staging, report)
    _secure_private(config, out_dir)
    logging.info("evaluation written to %s (%.0f s)", out_dir, time.time() - start)
    return report


def _secure_private(config: EvalConfig, out_dir: str):
    """Outputs under the run's private/ become owner-only like the rest of it (the report
    and predictions are computed from real test data; tfdpgan.workdir)."""
    private = os.path.abspath(workdir.private_dir(config.workdir))
    for folder in (out_dir, workdir.path(config.workdir, selection.MODELS_DIR)):
        folder = os.path.abspath(folder)
        if os.path.commonpath([folder, private]) == private:
            workdir.secure(folder)
