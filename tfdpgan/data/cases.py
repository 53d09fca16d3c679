"""Which cases an input folder or manifest holds, and what each file really is.

Input is either a folder in nnU-Net layout or a manifest CSV (``patient_id,image,label[,mask]``).
Folder: ``imagesTr/<case>``, ``labelsTr/<case>``, optional ``masksTr/<case>`` (brain mask);
``Ts`` for held-out test patients. nnU-Net v2 raw folders are read as they are: images named
``<case>_0000<ending>`` (one channel) and a ``dataset.json`` whose ``file_ending`` every file
must have. A patient's file is NIfTI (``.nii.gz``, ``.nii``), MetaImage (``.mha``, ``.mhd`` +
its data file), NRRD (``.nrrd``, ``.nhdr``) or a folder holding one DICOM series.

No file is skipped silently: anything else in an input folder is an error naming it, unless
it matches an ``ignore`` glob. Files are recognised by their first bytes as well as their
name, so a misnamed file gets a message saying what it really is (``describe_file``). Voxel
data is read by volumes.py only.
"""
import csv
import dataclasses
import fnmatch
import json
import os
import re
import zlib
from typing import List, Optional, Sequence

from tfdpgan import errors

__all__ = ["Case", "NIFTI_SUFFIXES", "SITK_SUFFIXES", "describe_file", "split_suffix",
           "data_files", "find_cases", "read_manifest", "read_nnunet_json",
           "check_unique_ids"]

InputError = errors.InputDataError
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


@dataclasses.dataclass(frozen=True)
class Case:
    """One patient: paths of its image, label and optional brain mask (files or DICOM
    folders)."""
    patient_id: str
    image: str
    label: str
    mask: Optional[str] = None


def _inner_kind(head: bytes) -> str:
    if len(head) >= 4 and (int.from_bytes(head[:4], "little") in (348, 540)
                           or int.from_bytes(head[:4], "big") in (348, 540)):
        return "nifti"
    if re.match(rb"\s*(ObjectType|NDims|ndims|DimSize)\s*=", head):
        return "metaimage"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head[128:132] == b"DICM":
        return "dicom"
    return "unknown"


def _sniff(path: str):
    """(gzip-compressed?, content kind) of a file, from its first bytes."""
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    if raw[:2] != b"\x1f\x8b":
        return False, _inner_kind(raw[:1024]) if raw else "empty"
    try:
        inner = zlib.decompressobj(31).decompress(raw, 1024)
    except zlib.error:
        return True, "corrupt"
    return True, _inner_kind(inner)


_WHAT = {"metaimage": "MetaImage header found; name it .mha",
         "nrrd": "NRRD header found; name it .nrrd",
         "dicom": "a DICOM file; put each patient's DICOM series into its own folder "
                  "(e.g. imagesTr/<case>/)",
         "empty": "the file is empty"}


def describe_file(path: str) -> str:
    """What the content of ``path`` really is, as advice ('' if it is what its name says)."""
    name = path.lower()
    try:
        compressed, kind = _sniff(path)
    except OSError as e:
        return f"cannot read it ({e})"
    if kind == "nifti" and name.endswith((".hdr", ".img")):
        return ("the header of an Analyze / NIfTI .hdr+.img pair; save each pair as one "
                ".nii.gz (e.g. nibabel.save(nibabel.load('x.hdr'), 'x.nii.gz'))")
    if kind == "nifti":
        right = ".nii.gz" if compressed else ".nii"
        if name.endswith(right) and not (right == ".nii" and name.endswith(".nii.gz")):
            return ""
        if name.endswith(".nii.gz"):
            return "an uncompressed NIfTI named .nii.gz; rename it to .nii (or gzip it)"
        return f"{'a gzip-compressed' if compressed else 'an'} NIfTI; name it {right}"
    if kind == "metaimage" and name.endswith((".mha", ".mhd")):
        return ""
    if kind == "nrrd" and name.endswith((".nrrd", ".nhdr")):
        return ""
    if kind in _WHAT:
        return _WHAT[kind]
    if name.endswith(NIFTI_SUFFIXES):
        detail = "a gzip file without a NIfTI header" if compressed else \
            "neither gzip nor a NIfTI header"
        return f"unreadable or truncated NIfTI ({detail})"
    return "not an image volume tfdpgan can read (NIfTI, MetaImage, NRRD or a DICOM folder)"


def split_suffix(name: str):
    """(stem, suffix) for a known image suffix, else None."""
    for suffix in NIFTI_SUFFIXES + SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def data_files(folder: str, names: Sequence[str]) -> set:
    """Data files named by the .mhd / .nhdr headers in ``folder`` (they belong to them)."""
    out = set()
    for name in names:
        if name.lower().endswith((".mhd", ".nhdr")):
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    text = f.read(1 << 14).decode("latin-1")
            except OSError:
                continue
            for m in re.finditer(r"^(?:ElementDataFile\s*=|data ?file\s*:)\s*(\S+)\s*$", text,
                                 re.M | re.I):
                out.add(os.path.basename(m.group(1)))
    return out


def _ignored(rel: str, ignore: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p)
               for p in ignore)


def _scan(folder: str, ignore: Sequence[str], file_ending: Optional[str]) -> dict:
    """Map case name -> path for the image files and DICOM folders in ``folder`` (empty if
    the folder does not exist). Any other entry is an error, unless ignored."""
    found = {}
    if not os.path.isdir(folder):
        return found
    names = sorted(os.listdir(folder))
    companions = data_files(folder, names)
    sub = os.path.basename(folder)
    for name in names:
        path = os.path.join(folder, name)
        if _ignored(f"{sub}/{name}", ignore) or name in companions:
            continue
        split = None if os.path.isdir(path) else split_suffix(name)
        if os.path.isdir(path):
            case_name = name
        elif split is None:
            raise InputError(f"{path}: unknown file in {sub}/ ({describe_file(path)}); "
                             f"remove it or pass --ignore='{name}'")
        elif file_ending and not name.endswith(file_ending):
            raise InputError(f"{path}: does not end with {file_ending!r}, the file_ending of "
                             f"the folder's dataset.json")
        else:
            case_name = split[0]
        if case_name in found:
            raise InputError(f"{path}: duplicate patient id {case_name!r} "
                             f"(also {found[case_name]})")
        found[case_name] = path
    return found


def read_nnunet_json(data_dir: str) -> Optional[dict]:
    """The nnU-Net v2 ``dataset.json`` of an input folder (None if there is none)."""
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable nnU-Net dataset.json ({e})") from e
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected a JSON object (nnU-Net dataset.json)")
    ending = info.get("file_ending")
    if ending is not None and not (isinstance(ending, str) and split_suffix("x" + ending)):
        raise InputError(f"{path}: file_ending {ending!r} is not a format tfdpgan reads "
                         f"({', '.join(NIFTI_SUFFIXES + SITK_SUFFIXES)})")
    return info


def _image_ids(images: dict, labels: dict, nnunet: bool) -> dict:
    """Case id -> image path: nnU-Net channel suffixes (``_0000``) are removed."""
    out = {}
    for name, path in images.items():
        m = re.fullmatch(r"(.+)_(\d{4})", name)
        if m and name not in labels and (nnunet or m.group(1) in labels):
            if m.group(2) != "0000":
                raise InputError(f"{path}: input channel {m.group(2)} of case {m.group(1)!r}; "
                                 f"tfdpgan uses one image per patient (channel _0000): "
                                 f"remove the other channels or --ignore them")
            name = m.group(1)
        if name in out:
            raise InputError(f"{path}: duplicate patient id {name!r} (also {out[name]})")
        out[name] = path
    return out


def find_cases(data_dir: str, split: str = "Tr", ignore: Sequence[str] = ()) -> List[Case]:
    """Cases of an nnU-Net style folder; ``split`` is "Tr" (training) or "Ts" (test).

    Returns [] if ``images<split>`` does not exist. Every image needs a label; a label or mask
    without an image is an error too. ``ignore``: glob patterns (``name`` or
    ``imagesTr/name``) of files to leave out on purpose.
    """
    nnunet = read_nnunet_json(data_dir)
    ending = (nnunet or {}).get("file_ending")
    labels = _scan(os.path.join(data_dir, f"labels{split}"), ignore, ending)
    masks = _scan(os.path.join(data_dir, f"masks{split}"), ignore, ending)
    images = _image_ids(_scan(os.path.join(data_dir, f"images{split}"), ignore, ending),
                        labels, nnunet is not None)
    for case_id, path in images.items():
        if case_id not in labels:
            suffix = (split_suffix(os.path.basename(path)) or ("", ""))[1]
            raise InputError(f"{path}: no label found for this image "
                             f"(expected labels{split}/{case_id}{ending or suffix})")
    for role, found in (("label", labels), ("mask", masks)):
        for case_id, path in found.items():
            if case_id not in images:
                raise InputError(f"{path}: {role} without an image (expected "
                                 f"images{split}/{case_id}{'_0000' if nnunet else ''}"
                                 f"{ending or ''})")
    return [Case(c, images[c], labels[c], masks.get(c)) for c in sorted(images)]


def read_manifest(csv_path: str) -> List[Case]:
    """Cases of a manifest CSV (``patient_id,image,label[,mask]``; relative paths are
    relative to the CSV's folder)."""
    base = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:   # Excel writes a BOM
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise errors.MissingFileError(f"{csv_path}: manifest not found") from e
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


def check_unique_ids(cases: Sequence[Case]):
    """Patient ids must be unique across all given cases (e.g. train and test folders)."""
    seen = {}
    for case in cases:
        if case.patient_id in seen:
            raise InputError(f"{case.image}: duplicate patient id {case.patient_id!r} "
                             f"(also {seen[case.patient_id]})")
        seen[case.patient_id] = case.image
