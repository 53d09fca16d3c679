"""Phantom parameters (one dataclass) and named scanner/site presets.

A preset stands for one site's TOF protocol: field strength, voxel size, slab coverage, vessel
contrast, noise and coil bias. ``default`` is a 3 T site; ``site_b`` is a *shifted* 1.5 T site
(thicker slices, a higher and thinner slab, weaker background suppression so arteries are
relatively dimmer, lower SNR, stronger bias and fatter-looking fat), meant for benchmarks that
pretrain on one site and fine-tune on another. ``small`` is the default protocol on a coarse
grid over the same field of view, for fast tests.

Voxel size of ``default``: clinical TOF is reconstructed at about 0.3-0.5 mm in-plane and
0.5-0.8 mm slices. The default uses 0.6 x 0.6 x 0.8 mm over a 168 x 202 x 83 mm field of view
(280 x 336 x 104 voxels, 9.8 M) so that one volume generates in a few seconds and the default
data set (24 volumes) in about a minute on a 2-core machine; 0.5 mm in-plane would cost 44 %
more voxels and time. Its point-spread blur (0.8 voxel) stands for an acquired resolution
coarser than the reconstructed voxel (zero-filled interpolation), as in clinical TOF. Use
``--spacing``/``--shape`` (or ``dataclasses.replace``) for finer grids.
"""
import dataclasses
from typing import Dict, Tuple

from tfdpgan import errors

__all__ = ["PhantomConfig", "PRESETS", "preset", "with_shape"]


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    """Geometry, anatomy and appearance of the phantom. Intensities are relative to the
    white-matter signal (``tissue_intensity``, arbitrary scanner-like units)."""
    shape: Tuple[int, int, int] = (280, 336, 104)          # voxels (x, y in-plane; z axial)
    spacing: Tuple[float, float, float] = (0.6, 0.6, 0.8)  # mm
    field_strength: float = 3.0        # tesla; recorded in dataset.json (sets nothing by itself)
    cow_level: float = 0.3             # height of the Circle of Willis as a fraction of the slab
    head_scale: float = 1.0            # anatomy size (1 = adult head; radii scale with it)
    min_radius_mm: float = 0.15        # thinnest vessel grown; branching stops below it
    max_branches: int = 2200            # cap on free-growing cortical branches per volume
    tortuosity: float = 1.0            # scales centre-line wiggle (0 = smooth curves)
    tissue_intensity: float = 100.0    # white matter; grey matter, CSF, fat relative to it
    vessel_contrast: float = 10.0      # fully occupied proximal artery / white matter
    sinus_contrast: float = 5.5        # venous sinus (partly saturated) / white matter
    vein_contrast: float = 3.0         # cortical vein (slow flow, mostly saturated) / white matter
    max_veins: int = 160               # cap on cortical vein branches (0: no veins)
    fat_contrast: float = 1.9          # subcutaneous, orbital and marrow fat / white matter
    gm_contrast: float = 0.86          # grey matter / white matter
    csf_contrast: float = 0.3          # CSF / white matter
    snr: float = 14.0                  # white matter / std of each Gaussian noise channel
    bias_strength: float = 0.35        # std over the brain of the log of the coil bias field
    slab_edge_loss: float = 0.4        # signal lost at the top/bottom slab faces (profile)
    saturation_per_mm: float = 0.003   # relative arterial signal loss per mm of path in slab
    psf_sigma_voxels: float = 0.8      # point-spread blur (acquired voxel > reconstructed)
    visibility_sigmas: float = 3.0     # label a voxel if the vessel adds >= this many noise SDs
    visibility_fraction: float = 0.9   # ... and be >= (1 + this) x the local white matter
    min_component_voxels: int = 10     # label components smaller than this are removed
    stenosis_prob: float = 0.15        # per patient: one focal stenosis of a large artery
    aneurysm_prob: float = 0.1         # per patient: one saccular dilation at a CoW branching

    def __post_init__(self):
        if len(self.shape) != 3 or any(int(n) != n or n < 8 for n in self.shape):
            raise errors.SettingsError(f"shape must be three integers >= 8, got {self.shape}")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise errors.SettingsError(
                f"spacing must be three positive numbers (mm), got {self.spacing}")
        for name in ("field_strength", "head_scale", "min_radius_mm", "tissue_intensity",
                     "vessel_contrast", "snr"):
            if not getattr(self, name) > 0:
                raise errors.SettingsError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_branches", "tortuosity", "sinus_contrast", "fat_contrast",
                     "gm_contrast", "csf_contrast", "bias_strength", "saturation_per_mm",
                     "psf_sigma_voxels", "visibility_sigmas", "vein_contrast", "max_veins",
                     "visibility_fraction",
                     "min_component_voxels"):
            if getattr(self, name) < 0:
                raise errors.SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("cow_level", "slab_edge_loss", "stenosis_prob", "aneurysm_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise errors.SettingsError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        # Normalise so equal configs compare (and serialise) equal.
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    @property
    def fov_mm(self) -> Tuple[float, float, float]:
        """Field of view (mm) per axis: shape times spacing."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing))


def with_shape(config: PhantomConfig, shape) -> PhantomConfig:
    """``config`` on a grid of ``shape`` voxels over the same field of view (the spacing
    follows), so a smaller grid is a coarser scan of the same head, never a crop."""
    shape = tuple(shape)
    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise errors.SettingsError(f"shape must be three integers >= 8, got {shape}")
    if shape == config.shape:
        return config
    spacing = tuple(round(f / n, 6) for f, n in zip(config.fov_mm, shape))
    return dataclasses.replace(config, shape=shape, spacing=spacing)


PRESETS: Dict[str, PhantomConfig] = {
    "default": PhantomConfig(),
    # A 1.5 T site with another protocol: 0.8 x 0.8 x 1.0 mm, a slab placed higher (the CoW
    # lower in it) and thinner, less background suppression, lower SNR, more coil bias.
    "site_b": PhantomConfig(
        shape=(220, 240, 80), spacing=(0.8, 0.8, 1.0), field_strength=1.5, cow_level=0.22,
        vessel_contrast=7.5, sinus_contrast=4.0, vein_contrast=2.6, fat_contrast=2.6,
        gm_contrast=0.9, csf_contrast=0.4, snr=9.0, bias_strength=0.45, slab_edge_loss=0.45,
        saturation_per_mm=0.005, psf_sigma_voxels=0.7),
    # The default protocol on a coarse grid (fast tests; the same head and field of view).
    "small": dataclasses.replace(with_shape(PhantomConfig(), (80, 96, 40)), max_branches=300),
}


def preset(name: str) -> PhantomConfig:
    """The named preset; SettingsError listing the names if unknown."""
    if name not in PRESETS:
        raise errors.SettingsError(f"unknown phantom preset {name!r}; choose from "
                                   f"{', '.join(sorted(PRESETS))}")
    return PRESETS[name]
