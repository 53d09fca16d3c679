"""Read and validate labelled volumes: the only module that reads image voxels.

Which files make up a case, and what a file really is, is cases.py (its ``Case``,
``find_cases``, ``read_manifest``, ``read_nnunet_json``, ``check_unique_ids`` and
``describe_file`` are re-exported here). Formats: NIfTI (``.nii.gz``/``.nii``, read with
nibabel), MetaImage (``.mha``, ``.mhd`` + data file) and NRRD (``.nrrd``, ``.nhdr``) read with
SimpleITK, and a DICOM series as a folder per patient (SimpleITK's ImageSeriesReader).

Every problem raises ``InputError`` (= errors.InputDataError; a missing file
errors.MissingFileError) with one message naming the file and the problem. Volumes are
reoriented to the closest canonical (RAS+) orientation, so axis 2 is the axial axis everywhere
downstream; image, label and mask must lie on the same world grid after that reorientation
(their orientation codes in the files may differ: an LPS image and a RAS label on one grid
are fine).

Labels: ``vessel_labels`` lists the label values that mean vessel. Default (None): every
non-zero value (multi-class labels such as TopCoW's 0-12, and 0/255 masks), except that a
label whose only non-zero value is neither 1 nor 255 is refused as ambiguous (name the value).
Brain masks: every non-zero voxel is brain. Also refused: complex or RGB voxels, a constant
image, a label without background (every voxel vessel), a label file identical to the image.
Nothing is resampled: an oblique grid is kept as it is (patches follow the acquisition slab).
"""
import contextlib
import dataclasses
import gzip
import hashlib
import locale
import os
import zlib
from typing import List, Optional, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from tfdpgan import errors
from tfdpgan.data import cases
from tfdpgan.data.cases import (NIFTI_SUFFIXES, SITK_SUFFIXES, Case, check_unique_ids,
                                describe_file, find_cases, read_manifest, read_nnunet_json)

__all__ = ["InputError", "Case", "Volume", "Header", "NIFTI_SUFFIXES", "SITK_SUFFIXES",
           "AFFINE_ATOL_MM", "find_cases", "read_manifest", "read_nnunet_json", "read_header",
           "check_headers", "load_volume", "check_unique_ids", "describe_file"]

InputError = errors.InputDataError
# Tolerance, in millimetres, for two affines to describe the same voxel grid.
AFFINE_ATOL_MM = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ROLES = ("image", "label", "mask")


@dataclasses.dataclass
class Volume:
    """A validated case in RAS+ orientation. ``mask`` is the brain mask (all ones if absent)."""
    case: Case
    image: np.ndarray      # float32 [X, Y, Z]
    label: np.ndarray      # uint8 {0,1} [X, Y, Z]: the vessel voxels
    mask: np.ndarray       # uint8 {0,1} [X, Y, Z]
    affine: np.ndarray     # 4x4, voxel index -> RAS mm, of the reoriented arrays
    sha256: dict           # role ("image", "label", "mask") -> hex digest of the source
    label_values: tuple = ()          # the distinct values of the label file
    source_affine: Optional[np.ndarray] = None   # the image file's own affine (RAS mm)

    @property
    def spacing(self):
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


@dataclasses.dataclass(frozen=True)
class Header:
    """What a file's header says: array shape (file axes) and voxel -> RAS mm affine."""
    shape: tuple
    affine: np.ndarray


# --- reading ------------------------------------------------------------------------------

def _check_name(path: str):
    if not os.path.exists(path):
        if os.path.islink(path):
            raise errors.MissingFileError(f"{path}: broken symbolic link (points to "
                                          f"{os.readlink(path)}, which does not exist)")
        raise errors.MissingFileError(f"{path}: file not found")
    if os.path.isdir(path):
        return
    advice = describe_file(path)
    if advice:
        raise InputError(f"{path}: {advice}")


def _sitk_affine(image) -> np.ndarray:
    """Voxel (x, y, z) -> RAS mm of a SimpleITK image (which states LPS)."""
    dim = image.GetDimension()
    direction = np.reshape(image.GetDirection(), (dim, dim))[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing()[:3])
    affine[:3, 3] = image.GetOrigin()[:3]
    return _LPS_TO_RAS @ affine


def _check_sitk(path: str, shape: tuple, components: int):
    if components != 1:
        raise InputError(f"{path}: expected a scalar image, got {components} components "
                         f"per voxel")
    if len(shape) < 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {shape}")


@contextlib.contextmanager
def _keep_locale():
    """SimpleITK's DICOM I/O (GDCM) switches the process's C locale to "C"; afterwards every
    text file Python opens would default to ASCII (PRIVACY.md with "ε" fails). Restore it."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _dicom_files(folder: str) -> List[str]:
    reader = sitk.ImageSeriesReader
    with _keep_locale():
        series = reader.GetGDCMSeriesIDs(folder)
    if len(series) != 1:
        found = f"{len(series)} DICOM series" if series else "no DICOM series"
        raise InputError(f"{folder}: {found} found; expected one series per patient folder")
    with _keep_locale():
        files = list(reader.GetGDCMSeriesFileNames(folder, series[0]))
    extra = sorted(set(os.listdir(folder)) - {os.path.basename(f) for f in files})
    if extra:
        path = os.path.join(folder, extra[0])
        raise InputError(f"{path}: not part of the DICOM series of {folder} "
                         f"({describe_file(path) or 'an image file'}); move it out")
    return files


def _sitk_read(path: str, header_only: bool):
    if os.path.isdir(path):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_dicom_files(path))
        with _keep_locale():
            return reader.Execute()
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    if header_only:
        reader.ReadImageInformation()
        return reader
    return reader.Execute()


_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, RuntimeError, ValueError,
                nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError)


@contextlib.contextmanager
def _reading(path: str, what: str):
    """Turn a reader's exception (nibabel, zlib, SimpleITK) into one InputError line."""
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        kind = "NIfTI" if path.lower().endswith(NIFTI_SUFFIXES) else "image"
        raise InputError(f"{path}: {what} {kind} ({type(e).__name__}: {last})") from e


def read_header(path: str) -> Header:
    """Shape and affine from the header (a DICOM series is read in full)."""
    _check_name(path)
    with _reading(path, "unreadable header of the"):
        if path.lower().endswith(NIFTI_SUFFIXES):
            img = nib.load(path)
            return Header(tuple(img.shape), np.asarray(img.affine, np.float64))
        info = _sitk_read(path, header_only=True)
        components = info.GetNumberOfComponents() if isinstance(info, sitk.ImageFileReader) \
            else info.GetNumberOfComponentsPerPixel()
        _check_sitk(path, tuple(info.GetSize()), components)
        return Header(tuple(info.GetSize()), _sitk_affine(info))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    paths = _dicom_files(path) if os.path.isdir(path) else [path]
    if path.lower().endswith((".mhd", ".nhdr")):
        folder = os.path.dirname(path)
        paths += [os.path.join(folder, n) for n in sorted(cases.data_files(folder, [
            os.path.basename(path)])) if os.path.isfile(os.path.join(folder, n))]
    for p in paths:
        if len(paths) > 1:
            digest.update(os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _as_read(array: np.ndarray, role: str) -> np.ndarray:
    """Images as float32; labels and masks keep an integer dtype (faster checks, less
    memory), other dtypes become float32."""
    if role != "image" and np.issubdtype(array.dtype, np.integer):
        return array
    return np.asarray(array, np.float32)


def _read_nifti(path: str, role: str):
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    klass = nib.Nifti2Image if int.from_bytes(data[:4], "little") == 540 or \
        int.from_bytes(data[:4], "big") == 540 else nib.Nifti1Image
    img = klass.from_bytes(data)
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {dtype} is not one real number per voxel "
                         f"(complex or RGB data); give the magnitude image as a scalar "
                         f"integer or float NIfTI")
    array = img.get_fdata(dtype=np.float32) if role == "image" else np.asanyarray(img.dataobj)
    return _as_read(array, role), np.asarray(img.affine, np.float64), digest


def _read(path: str, role: str):
    """(array in file axes, affine RAS, sha256) of one file or DICOM folder."""
    _check_name(path)
    with _reading(path, "unreadable or truncated"):
        if path.lower().endswith(NIFTI_SUFFIXES):
            return _read_nifti(path, role)
        image = _sitk_read(path, header_only=False)
        _check_sitk(path, tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel())
        array = _as_read(sitk.GetArrayFromImage(image), role)
        return array.transpose(tuple(range(array.ndim))[::-1]), _sitk_affine(image), \
            _sha256(path)


# --- geometry -----------------------------------------------------------------------------

def _squeeze_shape(path: str, shape: tuple) -> tuple:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {shape}")
    return tuple(int(s) for s in shape)


def _canonical(shape: tuple, affine: np.ndarray):
    """(orientation, shape, affine) of the closest canonical (RAS+) reorientation."""
    ornt = nib.orientations.io_orientation(affine)
    new_shape = tuple(np.asarray(shape)[np.argsort(ornt[:, 0])])
    return ornt, new_shape, affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def _codes(affine) -> str:
    return "".join(nib.aff2axcodes(affine))


def _check_geometry(case: Case, headers: dict, patch_size: Optional[int]):
    """Image, label and mask on the same world grid (after reorientation to RAS+)."""
    grids = {}
    for role, header in headers.items():
        shape = _squeeze_shape(getattr(case, role), header.shape)
        grids[role] = (shape, header.affine) + _canonical(shape, header.affine)[1:]
    _, _, ref_shape, ref_affine = grids["image"]
    for role, (shape, affine, c_shape, c_affine) in grids.items():
        path = getattr(case, role)
        if role == "image":
            continue
        if c_shape != ref_shape:
            raise InputError(f"{path}: {role} shape {c_shape} does not match the image "
                             f"shape {ref_shape} after reorientation to RAS+ ({case.image})")
        if not np.allclose(c_affine, ref_affine, atol=AFFINE_ATOL_MM):
            raise InputError(
                f"{path}: {role} affine does not match the image affine after reorientation "
                f"to RAS+ ({role} orientation {_codes(affine)}, image orientation "
                f"{_codes(grids['image'][1])}; {case.image}): the voxel grids differ")
    if patch_size is not None and patch_size > min(ref_shape[:2]):
        raise InputError(f"{case.image}: patch size {patch_size} is larger than the "
                         f"axial slice ({ref_shape[0]}x{ref_shape[1]} voxels)")


def check_headers(case: Case, patch_size: Optional[int] = None):
    """Cheap validation from headers only (no voxel data read, except DICOM series)."""
    headers = {role: read_header(getattr(case, role)) for role in _ROLES
               if getattr(case, role)}
    _check_geometry(case, headers, patch_size)


def _distinct(data: np.ndarray) -> np.ndarray:
    """Sorted distinct values, without sorting the volume for the usual labels (two values,
    or small non-negative integers)."""
    if not data.size:
        return np.unique(data)
    low, high = data.min(), data.max()
    integer = np.issubdtype(data.dtype, np.integer)
    if low == high or (integer and int(high) - int(low) <= 1) or (
            not integer and not np.count_nonzero((data != low) & (data != high))):
        return np.unique(np.array([low, high], data.dtype))
    if integer and low >= 0 and high < 1 << 16:
        return np.flatnonzero(np.bincount(data.ravel(), minlength=int(high) + 1))
    return np.unique(data)


def _vessels(path: str, data: np.ndarray, vessel_labels: Optional[Sequence[int]]):
    """(uint8 vessel mask, distinct label values) of a label volume."""
    values = _distinct(data)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    if not np.all(values == np.round(values)):
        soft = " (a probability map? threshold it, e.g. at 0.5, and save 0/1)" \
            if values[0] >= 0 and values[-1] <= 1 else ""
        raise InputError(f"{path}: label is not binary and not integer-valued (values "
                         f"{shown}){soft}; expected 0 and 1, or integer class values")
    if vessel_labels is None:
        nonzero = values[values != 0]
        if len(nonzero) == 1 and nonzero[0] not in (1, 255):
            raise InputError(f"{path}: label is not binary (values {shown}); expected 0 and 1 "
                             f"(or 0/255, or a multi-class label); if {nonzero[0]:g} marks "
                             f"vessels say so with --vessel_labels={nonzero[0]:g}")
        vessel = data != 0
    else:
        vessel = np.isin(data, np.asarray(vessel_labels, data.dtype if np.issubdtype(
            data.dtype, np.integer) else np.float32))
    if not vessel.any():
        which = "" if vessel_labels is None else \
            f" with a value in --vessel_labels={','.join(map(str, vessel_labels))}"
        raise InputError(f"{path}: label is empty (no vessel voxel{which}; values {shown})")
    if vessel.all():
        raise InputError(f"{path}: every voxel of the label is vessel (values {shown}; no "
                         f"background 0): is it an image, or a label with scl_inter set?")
    return vessel.view(np.uint8), tuple(int(v) for v in values)


def _reoriented(case: Case, loaded: dict) -> dict:
    """The arrays of ``loaded`` in RAS+ orientation, checked finite."""
    arrays = {}
    for role, (data, affine, _) in loaded.items():
        path = getattr(case, role)
        shape = _squeeze_shape(path, data.shape)
        ornt = _canonical(shape, affine)[0]
        data = nib.orientations.apply_orientation(data.reshape(shape), ornt)
        if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise InputError(f"{path}: {bad} NaN/Inf voxels in the {role}")
        arrays[role] = np.ascontiguousarray(data)
    return arrays


def load_volume(case: Case, patch_size: Optional[int] = None,
                vessel_labels: Optional[Sequence[int]] = None) -> Volume:
    """Read and fully validate one case; returns arrays in RAS+ orientation."""
    loaded = {role: _read(getattr(case, role), role) for role in _ROLES if getattr(case, role)}
    _check_geometry(case, {r: Header(a.shape, aff) for r, (a, aff, _) in loaded.items()},
                    patch_size)
    if loaded["label"][2] == loaded["image"][2]:
        raise InputError(f"{case.label}: the label file has the same content (SHA-256) as "
                         f"the image {case.image}; give the vessel segmentation")
    arrays = _reoriented(case, loaded)
    low, high = float(arrays["image"].min()), float(arrays["image"].max())
    if low == high:
        raise InputError(f"{case.image}: the image is constant (every voxel {low:g}): "
                         f"nothing to learn from; an empty or failed export?")
    image_shape = _squeeze_shape(case.image, loaded["image"][0].shape)
    out_affine = _canonical(image_shape, loaded["image"][1])[2]
    label, values = _vessels(case.label, arrays["label"], vessel_labels)
    if "mask" in arrays:
        if np.issubdtype(arrays["mask"].dtype, np.floating) and \
                not np.all(arrays["mask"] == np.round(arrays["mask"])):
            raise InputError(f"{case.mask}: brain mask has fractional values; expected a "
                             f"binary mask (every non-zero voxel is brain)")
        mask = (arrays["mask"] != 0).view(np.uint8)
        if not mask.any():
            raise InputError(f"{case.mask}: brain mask is empty")
    else:
        mask = np.ones_like(label)
    return Volume(case=case, image=arrays["image"], label=label, mask=mask,
                  affine=np.asarray(out_affine, dtype=np.float64),
                  sha256={role: digest for role, (_, _, digest) in loaded.items()},
                  label_values=values, source_affine=loaded["image"][1])
