"""Synthetic TOF-MRA head volumes with expert-like vessel labels (the default data).

Real patient data cannot ship with the code, so every command can run on these phantoms. One
patient is a head-sized axial slab like a clinical 3-D TOF protocol: skull, scalp and orbital
fat, skull base, dark CSF spaces (sulci, cisterns, ventricles), grey/white matter texture, the
cerebellum, dural venous sinuses and unlabelled cortical veins; a Circle of Willis with
per-patient normal variants feeding tapering, tortuous cortical branches, rare stenoses and
aneurysms; inflow enhancement with saturation along the path, slab profile, coil bias and
Rician noise. The label holds the arteries visible in the image inside the brain mask,
without specks (see ``labels``). Modules:

- ``presets``: ``PhantomConfig`` (all parameters) and the named site presets.
- ``anatomy``: head geometry and tissues; ``vessels``: the artery tree and veins.
- ``labels``: rasterisation and the expert-like label; ``appearance``: textures, slab, bias,
  noise; ``volume``: one patient; ``dataset``: the nnU-Net style folder.

Geometry: world coordinates are RAS+ millimetres with the origin at the centre of the voxel
grid; axis 2 is axial (the slab direction). Deterministic: a volume depends only on its seed
and config (byte-identical files).
"""
from .dataset import (CASE_PREFIX, SUBFOLDERS, case_ids, default_workers, patient_seed,
                      save_nifti, write_dataset)
from .presets import PRESETS, PhantomConfig, preset, with_shape
from .volume import Phantom, affine_for, make_volume

__all__ = ["GENERATOR_VERSION", "CASE_PREFIX", "SUBFOLDERS", "PRESETS", "PhantomConfig",
           "Phantom", "affine_for", "case_ids", "default_workers", "make_volume",
           "patient_seed", "preset", "save_nifti", "with_shape", "write_dataset"]

# Bump when the generator's output changes for the same seed and config (invalidates caches).
GENERATOR_VERSION = 4
