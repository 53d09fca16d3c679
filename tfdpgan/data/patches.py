"""Sample 2-D axial patches from a volume and normalise intensities.

Patches follow Kossen et al. (2022): square axial patches, a share centred on a random vessel
voxel and the rest on a random in-brain voxel, all distinct, each fully inside the volume
(centres keep a half-patch margin from the in-plane borders). Axis 2 is axial (see volumes.py).

Normalisation lives in normalization.py (``Normalization``, ``fit_normalization`` and
``NORMALIZATIONS`` are re-exported here for the callers that import them from patches).
"""
from typing import List

import numpy as np

from tfdpgan.data.normalization import NORMALIZATIONS, Normalization, fit_normalization

__all__ = ["NORMALIZATIONS", "Normalization", "fit_normalization", "sample_centres", "extract",
           "field_of_view_warnings", "SMALL_FOV_FACTOR"]

# Warn when the axial slice is less than this many patch sides wide: patches then overlap
# heavily and show the same anatomy again and again.
SMALL_FOV_FACTOR = 1.5

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


def field_of_view_warnings(shape, patch_size: int) -> List[str]:
    """A warning (without the file name) if the axial slice is small relative to the patch."""
    x, y = int(shape[0]), int(shape[1])
    if min(x, y) < SMALL_FOV_FACTOR * patch_size:
        return [f"the axial slice ({x}x{y} voxels) is less than {SMALL_FOV_FACTOR:g} patch "
                f"sides ({patch_size}) wide: patches overlap heavily (a crop barely larger "
                f"than the patch)"]
    return []
