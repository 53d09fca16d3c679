"""Segmentation metrics on binary volumes (numpy/scipy only).

Conventions for empty masks (a patient without any predicted vessel does happen with weak
models, so the numbers are defined rather than NaN):
  dice:        both empty -> 1.0, exactly one empty -> 0.0;
  hausdorff95: both empty -> 0.0, exactly one empty -> inf (callers report how many).
"""
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["dice", "hausdorff95", "best_threshold_dice"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient 2|P∩T| / (|P| + |T|) of two binary arrays (nonzero = 1)."""
    pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances, in the units of ``spacing`` (mm).

    Like medpy's ``hd95``: the distances from every surface voxel of ``pred`` to the nearest
    surface voxel of ``truth`` and vice versa are pooled, and their 95th percentile returned.
    Surfaces use face connectivity; ``spacing`` is the voxel size per axis (anisotropic).
    """
    pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
    if not pred.any() or not truth.any():
        return 0.0 if not pred.any() and not truth.any() else float("inf")
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    distances = np.concatenate([to_truth[pred_surface], to_pred[truth_surface]])
    return float(np.percentile(distances, 95))


def best_threshold_dice(image: np.ndarray, truth: np.ndarray,
                        mask: np.ndarray) -> Tuple[float, float]:
    """Oracle global intensity threshold: (threshold, dice) maximising
    ``dice((image >= threshold) & mask, truth)``.

    Exhaustive over every distinct in-mask intensity (so over every quantile): with the in-mask
    voxels sorted by decreasing intensity, predicting the top k gives TP = cumsum(truth)[k].
    Uses the truth it is scored on, so it is an upper bound for any global threshold.
    Returns (inf, dice of an empty prediction) if predicting nothing is best. ``mask`` must not
    be empty; truth outside it counts as missed.
    """
    inside = np.asarray(mask) != 0
    truth = np.asarray(truth) != 0
    values = np.asarray(image)[inside]
    order = np.argsort(-values, kind="stable")
    values = values[order]
    tp = np.cumsum(truth[inside][order])
    n_truth = int(truth.sum())
    k = np.arange(1, values.size + 1)
    # Top-k is a threshold set only where the next intensity is strictly lower.
    valid = np.append(values[:-1] > values[1:], True)
    scores = np.where(valid, 2.0 * tp / (k + n_truth), -1.0)
    best = int(np.argmax(scores))
    empty = 1.0 if n_truth == 0 else 0.0
    if scores[best] <= empty:
        return float("inf"), empty
    return float(values[best]), float(scores[best])
