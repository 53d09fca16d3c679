"""Intensity normalisation of a volume to [-1, 1], and warnings about intensities that do not
look like a TOF-MRA magnitude image or a label that misses its bright vessels.

Normalisation maps raw intensities to [-1, 1] by an invertible affine map on a clip range:
  ``percentile``: per volume, [0, p] where p is the given percentile of the in-brain voxels
                  (depends only on that patient's own volume; stored per patient);
  ``fixed``:      a data-independent range [low, high] given by the user (the same for all).
Values outside the range are clipped, which is the only non-invertible part.
"""
import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from tfdpgan import errors

__all__ = ["NORMALIZATIONS", "Normalization", "fit_normalization", "intensity_warnings",
           "label_warnings", "PREMASKED_FRACTION", "NEGATIVE_FRACTION", "BRIGHT_OVERLAP_MIN"]

NORMALIZATIONS = ("percentile", "fixed")
# Warn when more than this share of the in-brain voxels sits exactly at the image minimum
# (a pre-masked image: its own mask zeroed most of "the brain"; it normalises to -1).
PREMASKED_FRACTION = 0.5
# Warn when more than this share of the voxels is negative (TOF-MRA magnitude images are
# non-negative; CT angiograms in Hounsfield units are not).
NEGATIVE_FRACTION = 0.01
# Warn when fewer than this share of the in-brain vessel voxels are among the brightest
# in-brain voxels (as many as there are vessel voxels): in TOF-MRA vessels are the bright
# structures, so a label drawn on another patient overlaps them only at chance level.
BRIGHT_OVERLAP_MIN = 0.1


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
    """The normalisation for one volume (see module docstring). A volume whose percentile
    is not positive raises InputDataError (the caller adds the file name)."""
    if method == "fixed":
        if fixed_range is None or not fixed_range[1] > fixed_range[0]:
            raise errors.SettingsError(f"fixed normalisation needs low < high, got {fixed_range}")
        return Normalization(float(fixed_range[0]), float(fixed_range[1]))
    if method != "percentile":
        raise errors.SettingsError(f"unknown normalisation {method!r}; choose from "
                                   f"{NORMALIZATIONS}")
    high = float(np.percentile(image[mask > 0], percentile))
    if not high > 0:
        raise errors.InputDataError(f"the {percentile} percentile of the in-brain intensities "
                                    f"is {high:g}; expected a positive intensity")
    return Normalization(0.0, high)


def intensity_warnings(image: np.ndarray, mask: np.ndarray) -> List[str]:
    """Plain-language warnings (without the file name) about a raw image: pre-masked (most
    in-brain voxels at the minimum) and negative-valued (CT-like) intensities."""
    out = []
    brain = image[mask > 0]
    at_min = float(np.mean(brain == image.min())) if brain.size else 0.0
    if at_min > PREMASKED_FRACTION:
        out.append(f"{100 * at_min:.0f} % of the in-brain voxels are at the image minimum "
                   f"({float(image.min()):g}): the image looks pre-masked, and these voxels "
                   f"all normalise to -1; give the unmasked image (and the mask in masksTr/)")
    negative = float(np.mean(image < 0))
    if negative > NEGATIVE_FRACTION:
        out.append(f"{100 * negative:.0f} % of the voxels are negative (minimum "
                   f"{float(image.min()):g}): TOF-MRA magnitude images are non-negative; "
                   f"is this a CT angiogram in Hounsfield units? Percentile normalisation "
                   f"clips negative values to -1")
    return out


def label_warnings(image: np.ndarray, label: np.ndarray, mask: np.ndarray) -> List[str]:
    """A warning (without the file name) if the vessel label does not lie on the bright
    voxels: of the n in-brain vessel voxels, the share that is among the n brightest in-brain
    voxels (chance level: n / in-brain voxels). Near zero for a label of another patient."""
    brain = mask > 0
    vessel = (label > 0) & brain
    n, n_brain = int(np.count_nonzero(vessel)), int(np.count_nonzero(brain))
    if n == 0:
        return ["no vessel voxel of the label lies inside the brain mask: is the label (or "
                "the mask) of another patient?"]
    threshold = np.partition(image[brain], n_brain - n)[n_brain - n]
    overlap = float(np.count_nonzero(image[vessel] >= threshold)) / n
    if overlap < BRIGHT_OVERLAP_MIN:
        return [f"only {100 * overlap:.0f} % of the label's vessel voxels are among the "
                f"{n} brightest in-brain voxels (chance level {100 * n / n_brain:.0f} %; "
                f"vessels are bright in TOF-MRA): is the label of another patient, or "
                f"misaligned?"]
    return []
