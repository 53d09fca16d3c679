"""TOF appearance: random textures, the slab profile, the coil bias field and Rician noise.

Signal model of one voxel (before noise): ``T x [tissue x (1 - occupancy) + vessel signal]
x slab(z) x bias(x, y, z)`` with ``T`` the white-matter intensity; the noise is Rician (the
magnitude of a complex signal with Gaussian noise of std ``T / snr`` in each channel), so air
outside the head shows the Rayleigh noise floor, as in a real magnitude image.
"""
import math

import numpy as np
from scipy import fft, ndimage

from .presets import PhantomConfig

__all__ = ["random_field", "upsample", "slab_profile", "bias_field", "rician"]


def random_field(rng: np.random.Generator, shape, spacing, correlation_mm: float) -> np.ndarray:
    """Stationary Gaussian random field (zero mean, unit std, float32) with Gaussian correlation
    of the given length, by FFT filtering of white noise. Smooth fields are made on a grid
    coarsened to about a third of the correlation length and interpolated (the same field
    statistics, a fraction of the cost)."""
    spacing = np.asarray(spacing, float)
    if correlation_mm < 2.5 * float(spacing.min()):
        # Short correlation: a separable Gaussian filter is cheaper than an FFT.
        white = rng.standard_normal(tuple(shape), dtype=np.float32)
        field = ndimage.gaussian_filter(white, correlation_mm / spacing / math.sqrt(2.0),
                                        mode="wrap")
        field -= field.mean()
        field /= max(float(field.std()), 1e-12)
        return field
    factor = np.maximum(1, np.floor(correlation_mm / (3.0 * spacing))).astype(int)
    small = tuple(int(math.ceil(n / f)) + 1 for n, f in zip(shape, factor))
    step = spacing * factor
    spectrum = fft.rfftn(rng.standard_normal(small, dtype=np.float32))
    freqs = [fft.fftfreq(small[0], step[0]), fft.fftfreq(small[1], step[1]),
             fft.rfftfreq(small[2], step[2])]
    for axis, f in enumerate(freqs):
        gain = np.exp(-2.0 * (math.pi * correlation_mm * f) ** 2).astype(np.float32)
        spectrum *= gain.reshape([-1 if a == axis else 1 for a in range(3)])
    field = fft.irfftn(spectrum, s=small).astype(np.float32)
    field = upsample(field, factor, shape)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


def upsample(field: np.ndarray, factor, shape) -> np.ndarray:
    """Separable linear interpolation of a coarse grid onto ``shape`` (one axis at a time)."""
    for axis, (f, n) in enumerate(zip(factor, shape)):
        if f == 1:
            field = np.take(field, np.arange(n), axis=axis)
            continue
        pos = np.arange(n, dtype=np.float32) / f
        lo = np.minimum(np.floor(pos).astype(int), field.shape[axis] - 1)
        hi = np.minimum(lo + 1, field.shape[axis] - 1)
        w = (pos - lo).reshape([-1 if a == axis else 1 for a in range(3)])
        field = (np.take(field, lo, axis=axis) * (1 - w)
                 + np.take(field, hi, axis=axis) * w).astype(np.float32)
    return field


def slab_profile(config: PhantomConfig, axes) -> np.ndarray:
    """Excitation profile of the slab along z (1 in the middle, ``1 - slab_edge_loss`` at the
    top and bottom faces), shape (1, 1, nz)."""
    z = axes[2]
    s = (z - z.mean()) / max(float(np.abs(z - z.mean()).max()), 1e-9)
    profile = 1.0 - config.slab_edge_loss * np.abs(s) ** 4
    return profile.astype(np.float32)[None, None, :]


def bias_field(rng: np.random.Generator, config: PhantomConfig, axes, centre) -> np.ndarray:
    """Smooth multiplicative receive field: brighter towards the coil elements at the head
    periphery, a random low-order tilt, and a per-patient receiver gain; log std
    ``bias_strength`` over the field of view (float32, broadcast shape)."""
    half = np.array([max(float(np.abs(a).max()), 1e-9) for a in axes])
    x = ((axes[0] - centre[0]) / half[0]).astype(np.float32)[:, None, None]
    y = ((axes[1] - centre[1]) / half[1]).astype(np.float32)[None, :, None]
    z = ((axes[2] - centre[2]) / half[2]).astype(np.float32)[None, None, :]
    k = rng.normal(0.0, 1.0, 6)
    field = (rng.uniform(0.6, 1.2) * (x * x + y * y) + 0.4 * k[0] * x + 0.4 * k[1] * y
             + 0.5 * k[2] * z + 0.3 * k[3] * x * y + 0.3 * k[4] * z * z + 0.3 * k[5] * x * z)
    field -= field.mean()
    field *= config.bias_strength / max(float(field.std()), 1e-12)
    return np.exp(field + np.float32(rng.normal(0.0, 0.05))).astype(np.float32)


def rician(rng: np.random.Generator, clean: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``clean`` plus complex Gaussian noise of std ``sigma`` per channel."""
    sigma = np.float32(sigma)
    real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)
