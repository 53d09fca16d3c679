"""One phantom patient: anatomy + arteries + appearance + expert-like label."""
import dataclasses

import numpy as np
from scipy import interpolate, ndimage

from . import anatomy, appearance, labels, vessels
from .presets import PhantomConfig

__all__ = ["Phantom", "affine_for", "grid_axes", "make_volume"]


@dataclasses.dataclass(frozen=True)
class Phantom:
    """One synthetic patient: arrays indexed [x, y, z], ``affine`` maps voxel index -> RAS mm."""
    image: np.ndarray   # float32 magnitude image of the whole slab (head, air and noise)
    label: np.ndarray   # uint8 {0, 1}: visible arteries inside the brain mask
    mask: np.ndarray    # uint8 {0, 1}: brain (intracranial cavity)
    affine: np.ndarray  # 4x4 float64


def affine_for(config: PhantomConfig) -> np.ndarray:
    """RAS+ affine with the given spacing whose world origin is the centre of the grid."""
    spacing = np.asarray(config.spacing, dtype=np.float64)
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = -(np.asarray(config.shape) - 1) / 2.0 * spacing
    return affine


def grid_axes(config: PhantomConfig):
    """World coordinates (mm, float64) of the voxel centres along x, y, z."""
    spacing = np.asarray(config.spacing)
    return [(np.arange(n) - (n - 1) / 2.0) * spacing[a] for a, n in enumerate(config.shape)]


def make_volume(seed: int, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """One synthetic patient, fully determined by ``seed`` (a non-negative int) and config.
    Independent random streams for head, tree, textures, sinuses, bias and noise, so changing
    one part of the model leaves the others as they were."""
    head_ss, tree_ss, tex_ss, sinus_ss, bias_ss, noise_ss = np.random.SeedSequence(seed).spawn(6)
    axes = grid_axes(config)
    head = anatomy.make_head(np.random.default_rng(head_ss), config)
    tex_rng = np.random.default_rng(tex_ss)
    fine = appearance.random_field(tex_rng, config.shape, config.spacing, 0.9)
    coarse = appearance.random_field(tex_rng, config.shape, config.spacing, 3.0)
    tissue, depth = anatomy.tissue_map(head, config, axes, fine, coarse)
    del fine, coarse
    mask = depth > 0
    z_entry = float(axes[2][0])
    tree = vessels.build_tree(
        np.random.default_rng(tree_ss), config, head.origin, z_entry,
        lambda p: anatomy.point_depth(head, p),
        lambda p, territory: anatomy.cortex_point(head, p, territory))
    occupancy, signal = labels.rasterize(tree, config, axes, config.vessel_contrast)
    sinus_rng = np.random.default_rng(sinus_ss)
    sinuses = [vessels.Vessel(pts, np.full(len(pts), r), np.full(len(pts), b))
               for pts, r, b in anatomy.sinus_centrelines(sinus_rng, head)]
    sinuses = _densify(sinuses)
    sinus_occ, sinus_sig = labels.rasterize(sinuses, config, axes, config.sinus_contrast)
    if config.vein_contrast > 0 and config.max_veins > 0:
        roots = [v.points[i] for v in sinuses[:3]
                 for i in range(2, len(v.points) - 2, 6)]
        veins = vessels.build_veins(sinus_rng, config, roots,
                                    lambda p: anatomy.point_depth(head, p),
                                    lambda p, territory: anatomy.cortex_point(head, p, territory,
                                                                              2.0),
                                    config.max_veins)
        vein_occ, vein_sig = labels.rasterize(veins, config, axes, config.vein_contrast)
        np.maximum(sinus_occ, vein_occ, out=sinus_occ)
        np.maximum(sinus_sig, vein_sig, out=sinus_sig)
    if config.psf_sigma_voxels > 0:
        blur = dict(sigma=config.psf_sigma_voxels, truncate=3.0)
        occupancy, signal = ndimage.gaussian_filter(occupancy, **blur), \
            ndimage.gaussian_filter(signal, **blur)
    touched = occupancy >= 0.05      # the vessel's footprint in the (blurred) image
    background = tissue * (1.0 - sinus_occ) + sinus_sig
    scale = config.tissue_intensity * appearance.slab_profile(config, axes) * \
        appearance.bias_field(np.random.default_rng(bias_ss), config, axes, head.origin)
    vessel_part = signal - background * occupancy
    clean = (background + vessel_part) * scale
    sigma = config.tissue_intensity / config.snr
    label = labels.visible_label(touched, vessel_part * scale, clean,
                                 scale, mask, sigma, config)
    image = appearance.rician(np.random.default_rng(noise_ss), clean, sigma)
    return Phantom(image=image.astype(np.float32, copy=False), label=label.astype(np.uint8),
                   mask=mask.astype(np.uint8), affine=affine_for(config))


def _densify(tubes, step: float = 1.5):
    """Sinus centre lines as smooth curves (cubic spline through their far-apart way points)
    sampled every ``step`` mm."""
    out = []
    for v in tubes:
        seg = np.linalg.norm(np.diff(v.points, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        t = np.linspace(0.0, s[-1], max(2, int(s[-1] / step) + 1))
        pts = interpolate.CubicSpline(s, v.points, bc_type="natural")(t)
        out.append(vessels.Vessel(pts, np.interp(t, s, v.radii), np.interp(t, s, v.gain)))
    return out
