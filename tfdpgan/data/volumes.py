"""Find, read and validate labelled NIfTI volumes (the only module that touches NIfTI input).

Input is either an nnU-Net style folder (``imagesTr/<case>.nii.gz``, ``labelsTr/<case>.nii.gz``,
optional ``masksTr/<case>.nii.gz``; ``Ts`` for held-out test patients) or a manifest CSV with
columns ``patient_id,image,label[,mask]``. ``<case>`` is the patient id.

Every problem raises :class:`InputError` with one message naming the file and the problem.
Volumes are reoriented to the closest canonical (RAS+) orientation, so axis 2 is the axial
(inferior-superior) axis everywhere downstream.
"""
import csv
import dataclasses
import gzip
import hashlib
import os
import zlib
from typing import List, Optional, Sequence

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Tolerance, in millimetres, for two affines to describe the same voxel grid.
AFFINE_ATOL_MM = 1e-3


class InputError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One patient: paths of its image, label and optional brain mask."""
    patient_id: str
    image: str
    label: str
    mask: Optional[str] = None


@dataclasses.dataclass
class Volume:
    """A validated case in RAS+ orientation. ``mask`` is the brain mask (all ones if absent)."""
    case: Case
    image: np.ndarray      # float32 [X, Y, Z]
    label: np.ndarray      # uint8 {0,1} [X, Y, Z]
    mask: np.ndarray       # uint8 {0,1} [X, Y, Z]
    affine: np.ndarray     # 4x4, voxel index -> RAS mm, of the reoriented arrays
    sha256: dict           # role ("image", "label", "mask") -> hex digest of the source file

    @property
    def spacing(self):
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def _case_id(filename: str) -> Optional[str]:
    for suffix in NIFTI_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return None


def _scan(folder: str) -> dict:
    """Map case id -> path for the NIfTI files in ``folder`` (empty if it does not exist)."""
    found = {}
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        case_id = _case_id(name)
        if case_id is None:
            continue
        path = os.path.join(folder, name)
        if case_id in found:
            raise InputError(f"{path}: duplicate patient id {case_id!r} "
                             f"(also {found[case_id]})")
        found[case_id] = path
    return found


def find_cases(data_dir: str, split: str = "Tr") -> List[Case]:
    """Cases of an nnU-Net style folder; ``split`` is "Tr" (training) or "Ts" (test).

    Returns [] if ``images<split>`` does not exist. Every image needs a label; a label or mask
    without an image is an error too (it usually means a misnamed file).
    """
    images = _scan(os.path.join(data_dir, f"images{split}"))
    labels = _scan(os.path.join(data_dir, f"labels{split}"))
    masks = _scan(os.path.join(data_dir, f"masks{split}"))
    for case_id, path in images.items():
        if case_id not in labels:
            raise InputError(f"{path}: no label found for this image "
                             f"(expected labels{split}/{case_id}.nii.gz)")
    for role, found in (("label", labels), ("mask", masks)):
        for case_id, path in found.items():
            if case_id not in images:
                raise InputError(f"{path}: {role} without an image "
                                 f"(expected images{split}/{case_id}.nii.gz)")
    return [Case(c, images[c], labels[c], masks.get(c)) for c in sorted(images)]


def read_manifest(csv_path: str) -> List[Case]:
    """Cases of a manifest CSV (``patient_id,image,label[,mask]``; relative paths are
    relative to the CSV's folder)."""
    base = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{csv_path}: cannot read manifest: {e}") from e
    required = {"patient_id", "image", "label"}
    if not rows or not required <= set(rows[0]):
        raise InputError(f"{csv_path}: manifest needs a header with columns "
                         f"patient_id,image,label[,mask] and at least one row")
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        pid = (row["patient_id"] or "").strip()
        if not pid or not row["image"] or not row["label"]:
            raise InputError(f"{csv_path}: line {line}: empty patient_id, image or label")
        if pid in seen:
            raise InputError(f"{csv_path}: line {line}: duplicate patient id {pid!r}")
        seen.add(pid)
        resolve = lambda p: p if os.path.isabs(p) else os.path.join(base, p)
        mask = (row.get("mask") or "").strip()
        cases.append(Case(pid, resolve(row["image"].strip()), resolve(row["label"].strip()),
                          resolve(mask) if mask else None))
    return cases


def _load_nifti(path: str, header_only: bool = False):
    """Load a NIfTI file; returns (image, sha256 of the file bytes or None if header_only)."""
    try:
        if header_only:
            return nib.load(path), None
        with open(path, "rb") as f:
            raw = f.read()
        digest = hashlib.sha256(raw).hexdigest()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        img = nib.Nifti1Image.from_bytes(data)
        img.get_fdata(dtype=np.float32)  # force a full read so truncation shows here
        return img, digest
    except FileNotFoundError as e:
        raise InputError(f"{path}: file not found") from e
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError,
            nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as e:
        raise InputError(f"{path}: unreadable or truncated NIfTI ({type(e).__name__}: {e})") from e


def _check_geometry(case: Case, imgs: dict, patch_size: Optional[int]):
    """Shape, dimensionality, affine and orientation agreement between image, label, mask."""
    ref = imgs["image"]
    for role, img in imgs.items():
        path = getattr(case, role)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise InputError(f"{path}: expected a 3-D volume, got shape {img.shape}")
        if role != "image":
            if shape != ref.shape[:3]:
                raise InputError(f"{path}: {role} shape {shape} does not match the image "
                                 f"shape {ref.shape[:3]} ({case.image})")
            if nib.aff2axcodes(img.affine) != nib.aff2axcodes(ref.affine):
                raise InputError(
                    f"{path}: {role} orientation {''.join(nib.aff2axcodes(img.affine))} does "
                    f"not match the image orientation {''.join(nib.aff2axcodes(ref.affine))}")
            if not np.allclose(img.affine, ref.affine, atol=AFFINE_ATOL_MM):
                raise InputError(f"{path}: {role} affine does not match the image affine "
                                 f"({case.image}): the voxel grids differ")
    if patch_size is not None:
        canonical = nib.as_closest_canonical(ref)
        x, y = canonical.shape[:2]
        if patch_size > min(x, y):
            raise InputError(f"{case.image}: patch size {patch_size} is larger than the "
                             f"axial slice ({x}x{y} voxels)")


def check_headers(case: Case, patch_size: Optional[int] = None):
    """Cheap validation from headers only (no voxel data read)."""
    imgs = {"image": _load_nifti(case.image, True)[0], "label": _load_nifti(case.label, True)[0]}
    if case.mask:
        imgs["mask"] = _load_nifti(case.mask, True)[0]
    _check_geometry(case, imgs, patch_size)


def _binary(path: str, role: str, data: np.ndarray) -> np.ndarray:
    values = np.unique(data)
    if not np.all(np.isin(values, (0.0, 1.0))):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise InputError(f"{path}: {role} is not binary (values {shown}); expected 0 and 1")
    return data.astype(np.uint8)


def load_volume(case: Case, patch_size: Optional[int] = None) -> Volume:
    """Read and fully validate one case; returns arrays in RAS+ orientation."""
    loaded = {"image": _load_nifti(case.image), "label": _load_nifti(case.label)}
    if case.mask:
        loaded["mask"] = _load_nifti(case.mask)
    imgs = {role: img for role, (img, _) in loaded.items()}
    _check_geometry(case, imgs, patch_size)
    arrays = {}
    for role, img in imgs.items():
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.get_fdata(dtype=np.float32))
        if data.ndim == 4:
            data = data[..., 0]
        if not np.all(np.isfinite(data)):
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise InputError(f"{getattr(case, role)}: {bad} NaN/Inf voxels in the {role}")
        arrays[role] = data
        affine = canonical.affine
    label = _binary(case.label, "label", arrays["label"])
    if not label.any():
        raise InputError(f"{case.label}: label is empty (no vessel voxel)")
    if "mask" in arrays:
        mask = _binary(case.mask, "mask", arrays["mask"])
        if not mask.any():
            raise InputError(f"{case.mask}: brain mask is empty")
    else:
        mask = np.ones_like(label)
    return Volume(case=case, image=arrays["image"], label=label, mask=mask,
                  affine=np.asarray(affine, dtype=np.float64),
                  sha256={role: digest for role, (_, digest) in loaded.items()})


def check_unique_ids(cases: Sequence[Case]):
    """Patient ids must be unique across all given cases (e.g. train and test folders)."""
    seen = {}
    for case in cases:
        if case.patient_id in seen:
            raise InputError(f"{case.image}: duplicate patient id {case.patient_id!r} "
                             f"(also {seen[case.patient_id]})")
        seen[case.patient_id] = case.image
