"""Model selection on a VALIDATION set that is never the test set: the epoch and grid point
of each U-Net row, and the threshold of the threshold baseline.

``real_val``:      the real validation patients of the run's data set (split "val" of
                   dataset.json) as WHOLE volumes: every in-brain axial slice tiled
                   (``selection_overlap``), stitched, thresholded, Dice inside the brain mask,
                   mean over patients. The paper's way; it uses private data outside the DP
                   guarantee (the selected U-Net and the reported numbers depend on the
                   validation patients), and the report says so.
``synthetic_val``: a held-out share (``synthetic_val_fraction``) of each row's training
                   patches (synthetic patches for the synthetic row), Dice pooled over the
                   patches. Privacy-free for the synthetic row (post-processing).
Selected U-Nets are kept in ``<workdir>/eval_models/<row>-<hash>/`` keyed by everything their
weights depend on, and reused by an evaluation with the same training settings.
"""
import dataclasses
import hashlib
import json
import os
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

import tfdpgan
from tfdpgan import atomic, workdir
from tfdpgan.data import volumes
from tfdpgan.evaluation import seg_metrics, stitching
from tfdpgan.evaluation import unet as unet_lib
from tfdpgan.evaluation.config import EvalConfig, grid_configs
from tfdpgan.evaluation.inputs import Run, normalised, read_dataset, read_json_or_none

__all__ = ["MODELS_DIR", "SELECTION_JSON", "holdout", "VolumeScorer", "choose_threshold",
           "row_key", "history_json", "train_selected", "threshold_selection"]

# Folder of the selected U-Nets inside the training workdir.
MODELS_DIR = workdir.EVAL_MODELS
SELECTION_JSON = "selection.json"


def holdout(images, labels, fraction: float, seed: int):
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
        self.items = [(normalised(vol, normalization), vol.mask, vol.label) for vol in vols]
        self.patch_size, self.overlap = patch_size, overlap
        self.threshold, self.batch_size = threshold, batch_size

    def __call__(self, model) -> float:
        predict = stitching.keras_predict_fn(model, self.patch_size)
        scores = [seg_metrics.dice(stitching.predict_volume(
            predict, image, mask, self.patch_size, self.overlap, self.batch_size)
            > self.threshold, label) for image, mask, label in self.items]
        return float(np.mean(scores))

    def threshold_data(self):
        """(images, labels, masks) of the validation volumes, for choose_threshold."""
        return ([img for img, _, _ in self.items], [lab for _, _, lab in self.items],
                [msk for _, msk, _ in self.items])


def choose_threshold(val_images: Sequence[np.ndarray], val_labels, val_masks) -> float:
    """Global threshold on the normalised intensity maximising Dice pooled over the given
    validation images (never test data)."""
    image = np.concatenate([np.ravel(v) for v in val_images])
    label = np.concatenate([np.ravel(v) for v in val_labels])
    mask = np.concatenate([np.ravel(v) for v in val_masks])
    threshold, _ = seg_metrics.best_threshold_dice(image, label, mask)
    return threshold


def row_key(config: EvalConfig, run: Run, row: str) -> str:
    """Identity of a trained+selected U-Net: everything its weights depend on."""
    identity = {
        "row": row, "data": run.rec_dir, "data_created": run.info.get("created"),
        "source_sha256": {"synthetic": run.source_sha256, "prior": run.prior_sha256}.get(row),
        "real_train": [os.path.abspath(config.real_train),
                       read_dataset(config.real_train, "--real_train").get("created")]
        if row == "real_train" else None,
        "num_synthetic": config.num_synthetic if row == "prior" or (
            row == "synthetic" and not config.synthetic) else None,
        "label_threshold": config.label_threshold if row in ("synthetic", "prior") else None,
        "selection": config.selection, "selection_overlap": config.selection_overlap,
        "synthetic_val_fraction": config.synthetic_val_fraction, "grid": config.grid,
        "unet": dataclasses.asdict(config.unet), "seed": config.seed,
        "tfdpgan_version": tfdpgan.__version__}
    text = json.dumps(identity, sort_keys=True)
    return f"{row}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def history_json(history: dict, config: unet_lib.UNetConfig) -> dict:
    """One grid point of selection.json (epochs 1-based)."""
    return {"config": dataclasses.asdict(config),
            "best_epoch": history["best_epoch"] + 1,
            "best_val_dice": history["best_val_dice"],
            "val_dice": history["val_dice"], "loss": history["loss"],
            "label_prior": history["label_prior"], "restarts": history["restarts"],
            "collapsed": history["collapsed"],
            "attempts": [dict(a, settings=dict(a["settings"])) for a in history["attempts"]]}


def _load_selected(folder: str, saved: dict):
    chosen = unet_lib.UNetConfig(**saved["chosen"])
    model = unet_lib.build_unet(None, chosen.base_filters, chosen.depth, chosen.dropout)
    model.load_weights(os.path.join(folder, "weights")).expect_partial()
    return model


def train_selected(config: EvalConfig, run: Run, row: str, train_arrays, scorer,
                   models_root: str):
    """Train the grid for one row and select (epoch, grid point) on the validation set;
    returns (model, selection dict). Reuses a model saved by an identical earlier call."""
    key = row_key(config, run, row)
    folder = os.path.join(models_root, key)
    saved = read_json_or_none(os.path.join(folder, SELECTION_JSON))
    if saved is not None:
        logging.info("%s: reusing the U-Net selected earlier (%s)", row, folder)
        return _load_selected(folder, saved), dict(saved, reused=True)
    images, labels = train_arrays
    val = scorer
    if config.selection == "synthetic_val":
        (images, labels), val = holdout(images, labels, config.synthetic_val_fraction,
                                        config.seed)
    configs = grid_configs(config.unet, config.grid)
    logging.info("%s: training %d U-Net setting(s) on %d patches, selecting on %s", row,
                 len(configs), len(images), config.selection)
    start = time.time()
    model, chosen, results = unet_lib.train_unet_grid((images, labels), val, configs)
    chosen_history = next(h for c, h in results if c == chosen)
    selection = {
        "row": row, "method": config.selection, "num_train_patches": int(len(images)),
        "num_val_patches": None if callable(val) else int(len(val[0])),
        "chosen": dataclasses.asdict(chosen),
        "best_val_dice": chosen_history["best_val_dice"],
        "collapse": {"restarts": sum(h["restarts"] for _, h in results),
                     "chosen_collapsed": chosen_history["collapsed"]},
        "grid": [history_json(h, c) for c, h in results],
        "train_seconds": time.time() - start, "key": key}
    with atomic.staged_dir(folder, overwrite=True) as staging:
        model.save_weights(os.path.join(staging, "weights"))
        atomic.write_json_atomic(os.path.join(staging, SELECTION_JSON), selection)
    return model, dict(selection, reused=False)


def threshold_selection(config: EvalConfig, scorer: Optional[VolumeScorer],
                        train_sets: dict) -> Tuple[float, dict]:
    """The threshold baseline's threshold, chosen on the real validation volumes of
    ``scorer`` (the evaluation passes them whenever the data set has validation patients) or,
    without them, on the held-out share of the first row's training patches."""
    if scorer is not None:
        data = scorer.threshold_data()
    else:
        images, labels = next(iter(train_sets.values()))
        _, (vi, vl) = holdout(images, labels, config.synthetic_val_fraction, config.seed)
        data = ([vi], [vl], [np.ones_like(vl)])
    threshold = choose_threshold(*data)
    return threshold, {"row": "threshold",
                       "method": "real_val" if scorer is not None else "synthetic_val",
                       "scale": "normalised intensity ([-1, 1])"}

