"""Sample 2-D axial patches from a volume and normalise intensities.

Patches follow Kossen et al. (2022): square axial patches, a share centred on a random vessel
voxel and the rest on a random in-brain voxel, all distinct, each fully inside the volume
(centres keep a half-patch margin from the in-plane borders). Axis 2 is axial (see volumes.py).

Normalisation maps raw intensities to [-1, 1] by an invertible affine map on a clip range:
  ``percentile``: per volume, [0, p] where p is the given percentile of the in-brain voxels
                  (depends only on that patient's own volume; stored per patient);
  ``fixed``:      a data-independent range [low, high] given by the user (the same for all).
Values outside the range are clipped, which is the only non-invertible part.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np

NORMALIZATIONS = ("percentile", "fixed")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Affine map raw [low, high] -> [-1, 1] (clipped)."""
    low: float
    high: float

    def apply(self, raw: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(raw, np.float32) - self.low) / (self.high - self.low)
        return (2.0 * np.clip(scaled, 0.0, 1.0) - 1.0).astype(np.float32)

    def invert(self, normalised: np.ndarray) -> np.ndarray:
        return ((np.asarray(normalised, np.float32) + 1.0) / 2.0
                * (self.high - self.low) + self.low).astype(np.float32)


def fit_normalization(image: np.ndarray, mask: np.ndarray, method: str,
                      percentile: float = 99.95,
                      fixed_range: Optional[Tuple[float, float]] = None) -> Normalization:
    """The normalisation for one volume (see module docstring)."""
    if method == "fixed":
        if fixed_range is None or not fixed_range[1] > fixed_range[0]:
            raise ValueError(f"fixed normalisation needs low < high, got {fixed_range}")
        return Normalization(float(fixed_range[0]), float(fixed_range[1]))
    if method != "percentile":
        raise ValueError(f"unknown normalisation {method!r}; choose from {NORMALIZATIONS}")
    high = float(np.percentile(image[mask > 0], percentile))
    if not high > 0:
        raise ValueError(f"the {percentile} percentile of the in-brain intensities is "
                         f"{high:g}; expected a positive intensity")
    return Normalization(0.0, high)


def _candidates(where: np.ndarray, patch_size: int) -> np.ndarray:
    """Flat indices of voxels in ``where`` whose patch fits inside the slice."""
    half = patch_size // 2
    x, y, _ = where.shape
    margin = np.zeros_like(where, dtype=bool)
    margin[half:x - (patch_size - half) + 1, half:y - (patch_size - half) + 1, :] = True
    return np.flatnonzero(where & margin)


def sample_centres(label: np.ndarray, mask: np.ndarray, num: int, vessel_fraction: float,
                   patch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct patch centres [n, 3] (x, y, z), about ``vessel_fraction`` of them on vessel
    voxels and the rest on in-brain voxels. n < num only if the volume has fewer candidate
    voxels; vessel-centred picks are topped up from in-brain voxels if vessels are scarce."""
    vessel = _candidates(label > 0, patch_size)
    brain = _candidates(mask > 0, patch_size)
    n_vessel = min(int(round(num * vessel_fraction)), vessel.size)
    picked = rng.choice(vessel, size=n_vessel, replace=False)
    rest = np.setdiff1d(brain, picked, assume_unique=True)
    picked = np.concatenate([picked, rng.choice(rest, size=min(num - n_vessel, rest.size),
                                                replace=False)])
    return np.stack(np.unravel_index(picked, label.shape), axis=1).astype(np.int64)


def extract(volume: np.ndarray, centres: np.ndarray, patch_size: int):
    """Patches [n, P, P] of ``volume`` at ``centres``; returns (patches, origins [n, 3])."""
    half = patch_size // 2
    origins = centres - np.array([half, half, 0])
    patches = np.stack([volume[x:x + patch_size, y:y + patch_size, z]
                        for x, y, z in origins]) if len(origins) else \
        np.zeros((0, patch_size, patch_size), volume.dtype)
    return patches, origins
