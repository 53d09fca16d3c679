"""Vessels on the voxel grid, and the label an expert would draw from the image.

``rasterize`` turns centre lines into partial-volume occupancy (analytic coverage of a box
voxel by a tube) and inflow signal. ``visible_label`` keeps, of the voxels a vessel touches,
those where it adds a visible amount of signal to the noise-free image (at least
``visibility_sigmas`` noise standard deviations) and makes the voxel bright (at least
1 + ``visibility_fraction`` times the local white-matter level). So the label holds exactly
the vessel voxels that stand out in the image (sub-voxel arteries that vanish in the noise are
not labelled, as an annotator would not see them), and
components smaller than ``min_component_voxels`` (specks) are removed: what remains is a set of
connected vessel pieces.
"""
import math
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

from .presets import PhantomConfig
from .vessels import Vessel

__all__ = ["rasterize", "visible_label", "remove_specks"]


def rasterize(vessels: Sequence[Vessel], config: PhantomConfig, axes,
              brightness: float) -> Tuple[np.ndarray, np.ndarray]:
    """(occupancy, signal) float32 volumes: occupancy in [0, 1] (1 inside thick vessels,
    ~0.5 at their border, ~(r/h)^2 at the centre of a sub-voxel vessel, h = half voxel), signal
    = occupancy x ``brightness`` x the vessel's gain x an in-plane-flow factor (through-slab
    flow is fresher). Voxels take the maximum over overlapping vessels. Each centre-line
    segment is a capsule; only voxels in its bounding box are visited."""
    shape, spacing = config.shape, np.asarray(config.spacing)
    half_voxel = 0.5 * float(np.prod(spacing)) ** (1.0 / 3.0)
    origin = np.array([a[0] for a in axes])
    occupancy = np.zeros(shape, dtype=np.float32)
    signal = np.zeros(shape, dtype=np.float32)
    for vessel in vessels:
        starts, ends = vessel.points[:-1], vessel.points[1:]
        reach = np.maximum(vessel.radii[:-1], vessel.radii[1:])[:, None] + half_voxel
        los = np.maximum(np.ceil((np.minimum(starts, ends) - reach - origin) / spacing), 0)
        his = np.minimum(np.floor((np.maximum(starts, ends) + reach - origin) / spacing) + 1,
                         shape)
        for i in np.flatnonzero(np.all(his > los, axis=1)):
            px, py, pz = starts[i].tolist()
            vx, vy, vz = (ends[i] - starts[i]).tolist()
            norm2 = max(vx * vx + vy * vy + vz * vz, 1e-12)
            r0, r1 = float(vessel.radii[i]), float(vessel.radii[i + 1])
            box = tuple(slice(int(a), int(b)) for a, b in zip(los[i], his[i]))
            x = (axes[0][box[0]] - px)[:, None, None]
            y = (axes[1][box[1]] - py)[None, :, None]
            z = (axes[2][box[2]] - pz)[None, None, :]
            t = (x * vx + y * vy + z * vz) / norm2
            np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
            dist = np.sqrt((x - t * vx) ** 2 + (y - t * vy) ** 2 + (z - t * vz) ** 2)
            radius = r0 + t * (r1 - r0)
            overlap = np.minimum(dist + radius, half_voxel) - np.maximum(dist - radius, -half_voxel)
            cover = np.maximum(overlap, 0.0, out=overlap)
            cover *= np.minimum(radius, half_voxel) / (2.0 * half_voxel ** 2)
            gain = 0.5 * float(vessel.gain[i] + vessel.gain[i + 1])
            bright = brightness * gain * (0.75 + 0.25 * abs(vz) / math.sqrt(norm2))
            np.maximum(occupancy[box], cover, out=occupancy[box])
            np.maximum(signal[box], cover * bright, out=signal[box])
    return occupancy, signal


def remove_specks(label: np.ndarray, min_voxels: int) -> np.ndarray:
    """``label`` without its 26-connected components smaller than ``min_voxels``; on a grid so
    coarse that no component is that large, the largest one is kept (a label is never
    emptied by this rule)."""
    if min_voxels <= 1 or not label.any():
        return label
    components, n = ndimage.label(label, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = sizes >= min(min_voxels, int(sizes.max()))
    return keep[components]


def visible_label(touched: np.ndarray, added: np.ndarray, clean: np.ndarray,
                  reference: np.ndarray, mask: np.ndarray, sigma: float,
                  config: PhantomConfig) -> np.ndarray:
    """Expert-like vessel label (bool): voxels a vessel touches (``touched``) inside the brain
    ``mask`` where the vessel adds at least ``visibility_sigmas`` x ``sigma`` to the noise-free
    image and the noise-free voxel (``clean``) is at least (1 + ``visibility_fraction``) x the
    local white-matter level ``reference`` (so it stands out as bright, not merely brighter
    than dark CSF around it); without specks."""
    label = touched & mask & (added >= config.visibility_sigmas * sigma)
    label &= clean >= (1.0 + config.visibility_fraction) * reference
    return remove_specks(label, config.min_component_voxels)
