"""Whole-volume prediction from 2-D axial patches: tiling, batched prediction and stitching.

Volumes are [X, Y, Z] with axis 2 axial (volumes.py); a patch origin is the voxel index
(x, y, z) of its corner, as in patches.extract and the TFRecord ``origin``. Overlapping
predictions are averaged (sum / count, accumulated in float64, so stitching a volume's own
patches reproduces it exactly).
"""
from typing import Callable, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfdpgan.data import patches

__all__ = ["PredictFn", "tile_origins", "brain_origins", "stitch", "predict_volume",
           "keras_predict_fn", "segment_volume"]

PredictFn = Callable[[np.ndarray], np.ndarray]   # [n, P, P, 1] -> [n, P, P, 1]


def _axis_origins(length: int, patch_size: int, stride: int) -> np.ndarray:
    starts = np.arange(0, length - patch_size + 1, stride)
    return starts if starts[-1] == length - patch_size else np.append(starts, length - patch_size)


def tile_origins(shape_xy: Sequence[int], patch_size: int, overlap: float) -> np.ndarray:
    """In-plane origins [n, 2] of patches covering an X x Y slice completely.

    Neighbouring tiles overlap by about ``overlap`` (0 <= overlap < 1) of the patch (stride
    round(P * (1 - overlap)), at least 1); the last tile per axis is flush with the border.
    The slice must be at least one patch in each direction.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if min(shape_xy) < patch_size:
        raise ValueError(f"slice {tuple(shape_xy)} is smaller than the patch {patch_size}")
    stride = max(1, int(round(patch_size * (1.0 - overlap))))
    xs, ys = (_axis_origins(n, patch_size, stride) for n in shape_xy)
    return np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)


def brain_origins(mask: np.ndarray, patch_size: int, overlap: float) -> np.ndarray:
    """Origins [n, 3] of the tiles (tile_origins on every axial slice) that contain brain."""
    xy = tile_origins(mask.shape[:2], patch_size, overlap)
    # has_brain[i, z]: tile i of slice z holds a mask voxel (via a summed-area table).
    table = np.pad(np.cumsum(np.cumsum(mask > 0, axis=0, dtype=np.int64), axis=1),
                   ((1, 0), (1, 0), (0, 0)))
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = x0 + patch_size, y0 + patch_size
    has_brain = (table[x1, y1] - table[x0, y1] - table[x1, y0] + table[x0, y0]) > 0
    tile, z = np.nonzero(has_brain)
    return np.column_stack([xy[tile], z]).astype(np.int64)


def _accumulate(total: np.ndarray, count: np.ndarray, tiles: np.ndarray, origins: np.ndarray):
    size = tiles.shape[1]
    for tile, (x, y, z) in zip(tiles, origins):
        total[x:x + size, y:y + size, z] += tile
        count[x:x + size, y:y + size, z] += 1


def _average(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def stitch(tiles: np.ndarray, origins: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Volume of ``shape`` from patches [n, P, P] at ``origins`` [n, 3]: the mean of the
    patches covering each voxel, 0 where none does (the inverse of patches.extract)."""
    total, count = np.zeros(shape, np.float64), np.zeros(shape, np.int32)
    _accumulate(total, count, np.asarray(tiles), np.asarray(origins))
    return _average(total, count).astype(np.asarray(tiles).dtype)


def predict_volume(predict_fn: PredictFn, image_norm: np.ndarray, mask: np.ndarray,
                   patch_size: int, overlap: float = 0.5, batch_size: int = 64) -> np.ndarray:
    """Probability volume [X, Y, Z] float32 from a patch model.

    ``image_norm`` is normalised like the training patches. Every axial slice is tiled
    (tile_origins); tiles holding brain are predicted in batches of ``batch_size`` (mixing
    slices) and averaged where they overlap. Zero outside ``mask`` (so also on slices and
    tiles without brain, which are never predicted).
    """
    origins = brain_origins(mask, patch_size, overlap)
    total = np.zeros(image_norm.shape, np.float64)
    count = np.zeros(image_norm.shape, np.int32)
    half = np.array([patch_size // 2, patch_size // 2, 0])
    for start in range(0, len(origins), batch_size):
        batch = origins[start:start + batch_size]
        tiles, _ = patches.extract(image_norm, batch + half, patch_size)
        probs = np.asarray(predict_fn(tiles[..., None].astype(np.float32)))
        _accumulate(total, count, probs[..., 0], batch)
    return (_average(total, count) * (mask > 0)).astype(np.float32)


def keras_predict_fn(model: tf.keras.Model, patch_size: int) -> PredictFn:
    """``model`` in inference mode as a PredictFn, traced once for [None, P, P, 1]."""
    call = tf.function(lambda x: model(x, training=False), input_signature=[
        tf.TensorSpec([None, patch_size, patch_size, 1], tf.float32)])
    return lambda tiles: call(tiles).numpy()


def segment_volume(model: tf.keras.Model, volume, normalization: dict, patch_size: int,
                   overlap: float = 0.5, threshold: float = 0.5,
                   batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """(probability float32, binary uint8 = prob > threshold) volumes of a volumes.Volume.

    ``normalization`` is dataset.json's "normalization" entry, so the volume is normalised
    exactly like the training patches (its own percentile, or the fixed range).
    """
    norm = patches.fit_normalization(
        volume.image, volume.mask, normalization["method"], normalization["percentile"],
        normalization["fixed_range"])
    prob = predict_volume(keras_predict_fn(model, patch_size), norm.apply(volume.image),
                          volume.mask, patch_size, overlap, batch_size)
    return prob, (prob > threshold).astype(np.uint8)
