"""Activations and the Fréchet distance (TF-GAN's, float64, unbiased covariances).

FID is biased in the sample size: compare only FIDs computed from equally many images. Our
images are single-channel MRA patches (replicated to RGB, upsampled from 64 or 96 px), far from
ImageNet: the numbers are comparable between our runs, not with FIDs of natural images.
"""
import numpy as np
import tensorflow as tf
import tensorflow_gan as tfgan

from tfdpgan.evaluation.fid.network import FEATURE_DIM, Network

__all__ = ["to_inception_range", "activations", "frechet_distance", "fid"]


def to_inception_range(normalised) -> np.ndarray:
    """Patches normalised to [-1, 1] (the TFRecord scale), [N, P, P] or [N, P, P, 1] ->
    [N, P, P, 1] float32 in [0, 255] (clipped to [-1, 1] first)."""
    x = np.asarray(normalised, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected [N, P, P] or [N, P, P, 1] patches, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("patches contain NaN or infinite values")
    return ((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.float32)


def activations(network: Network, images, batch_size: int = 50) -> np.ndarray:
    """pool3 activations [N, 2048] float64 of ``images`` [N, H, W, C] in [0, 255]
    (C = 1, replicated to RGB, or 3); resized and scaled inside."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 1 or 3], got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = np.zeros((images.shape[0], FEATURE_DIM), np.float64)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        if not np.all(np.isfinite(batch)) or batch.min() < 0.0 or batch.max() > 255.0:
            raise ValueError(
                f"images must be finite and in [0, 255] (got [{np.nanmin(batch)}, "
                f"{np.nanmax(batch)}] in images {start}..{start + len(batch) - 1}); "
                f"for patches normalised to [-1, 1] use to_inception_range() first")
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        out[start:start + len(batch)] = network.features(tf.constant(batch)).numpy()
    return out


def frechet_distance(act_a, act_b) -> float:
    """FID between two activation sets [N, D] (float64, unbiased covariances), with TF-GAN's
    ``frechet_classifier_distance_from_activations``."""
    a, b = np.asarray(act_a, np.float64), np.asarray(act_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected activations [N, D] with equal D, got {a.shape}, {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least two activations per set for a covariance")
    return float(tfgan.eval.frechet_classifier_distance_from_activations(
        tf.constant(a), tf.constant(b)).numpy())


def fid(network: Network, images_a, images_b, batch_size: int = 50) -> float:
    """FID between two image sets [N, H, W, C] in [0, 255]."""
    return frechet_distance(activations(network, images_a, batch_size),
                            activations(network, images_b, batch_size))
