"""Inputs as hospitals and challenges have them: nnU-Net v2 folders, multi-class and 0/255
labels, MetaImage / NRRD / DICOM, world-grid compatibility, misnamed and unknown files,
warnings. Every bad case: one message naming the file, nothing on disk."""
import gzip
import json
import locale
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SPACING, write_case
from tfdpgan.data import convert, records, volumes

CONFIG = convert.ConvertConfig(patch_size=16, patches_per_patient=30, val_fraction=0.25,
                               num_shards=2, seed=5)
QUIET = dict(progress=lambda *a: None, workers=1)
AFFINE = np.diag([*SPACING, 1.0])


def _case_arrays(seed, shape=(40, 40, 12), classes=1):
    """(image, label, mask) like conftest.write_case; label values 1..classes."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    for k in range(3):
        x, y = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        label[x - 1:x + 2, y - 1:y + 2, :] = 1 + k % classes
    mask = np.zeros(shape, np.uint8)
    mask[2:-2, 2:-2, :] = 1
    image = ((100 + 20 * rng.standard_normal(shape) + 600 * (label > 0)) * mask)
    return image.astype(np.float32), label, mask


def _write_sitk(path, array, affine=AFFINE):
    """Write an [x, y, z] array with a RAS affine through SimpleITK (which stores LPS)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(img, path)
    return img


def _write_nifti(path, array, affine=AFFINE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _nnunet(root, ending=".nii.gz", n=3, classes=12, labels_json=None):
    """An nnU-Net v2 raw folder (TopCoW-like multi-class labels)."""
    write = _write_nifti if ending.startswith(".nii") else _write_sitk
    for i in range(n):
        image, label, mask = _case_arrays(i, classes=classes)
        write(os.path.join(root, "imagesTr", f"topcow_{i:03d}_0000{ending}"), image)
        write(os.path.join(root, "labelsTr", f"topcow_{i:03d}{ending}"), label)
    labels_json = labels_json or {"background": 0, **{f"artery_{k}": k
                                                      for k in range(1, classes + 1)}}
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "TOF"}, "labels": labels_json,
                   "numTraining": n, "file_ending": ending}, f)
    return root


def _shard_bytes(rec):
    return {name: open(os.path.join(rec, name), "rb").read()
            for name in sorted(os.listdir(rec)) if name.endswith(".gz")}


def _labels_of(rec, split="train"):
    import tensorflow as tf
    parse = records.make_parser(records.read_dataset_json(rec)["patch_size"])
    ds = tf.data.TFRecordDataset(records.shard_paths(rec, split), records.COMPRESSION)
    return next(ds.batch(10_000).map(parse).as_numpy_iterator())


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_nnunet_v2_topcow_folder(tmp_path, ending):
    data = _nnunet(str(tmp_path / "nnunet"), ending)
    cases = volumes.find_cases(data)
    assert [c.patient_id for c in cases] == ["topcow_000", "topcow_001", "topcow_002"]
    info = convert.convert(cases, str(tmp_path / "rec"), CONFIG,
                           source_labels=volumes.read_nnunet_json(data)["labels"], **QUIET)
    assert info["label"]["vessel_labels"] == "every non-zero"
    assert info["label"]["source_labels"]["artery_12"] == 12
    assert sorted(info["patients"]) == [c.patient_id for c in cases]
    assert all(max(p["label_values"]) > 1 for p in info["patients"].values())
    ex = _labels_of(str(tmp_path / "rec"))
    assert set(np.unique(ex["label"])) == {0.0, 1.0}          # multi-class -> binary vessel


def test_metaimage_gives_the_same_records_as_nifti(tmp_path):
    """The same arrays and world grid as .mha (SimpleITK, LPS) and .nii.gz (nibabel, RAS):
    identical shards."""
    a = _nnunet(str(tmp_path / "a"), ".nii.gz", classes=1)
    b = _nnunet(str(tmp_path / "b"), ".mha", classes=1)
    for data, out in ((a, "ra"), (b, "rb")):
        convert.convert(volumes.find_cases(data), str(tmp_path / out), CONFIG, **QUIET)
    assert _shard_bytes(str(tmp_path / "ra")) == _shard_bytes(str(tmp_path / "rb"))


def test_nrrd_and_mhd_read_like_nifti(tmp_path):
    image, label, mask = _case_arrays(3)
    affine = AFFINE.copy()
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    ref_root, root = str(tmp_path / "nii"), str(tmp_path / "other")
    for role, arr in (("images", image), ("labels", label), ("masks", mask)):
        _write_nifti(os.path.join(ref_root, f"{role}Tr", "p.nii.gz"), arr, affine)
    _write_sitk(os.path.join(root, "imagesTr", "p.nrrd"), image, affine)
    _write_sitk(os.path.join(root, "labelsTr", "p.mhd"), label, affine)   # + p.raw/.zraw
    _write_sitk(os.path.join(root, "masksTr", "p.mha"), mask, affine)
    ref = volumes.load_volume(volumes.find_cases(ref_root)[0])
    vol = volumes.load_volume(volumes.find_cases(root)[0])
    np.testing.assert_array_equal(vol.image, ref.image)
    np.testing.assert_array_equal(vol.label, ref.label)
    np.testing.assert_array_equal(vol.mask, ref.mask)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)
    assert len(vol.sha256["label"]) == 64


def _write_dicom_series(folder, array, affine=AFFINE):
    """One DICOM file per axial slice (int16), as a scanner export would be. (GDCM's writer
    switches the C locale to "C": restored afterwards, as tfdpgan's reader does.)"""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, array, affine)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(folder, array, affine):
    os.makedirs(folder)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.round(array.transpose(2, 1, 0)).astype(np.int16))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    common = {"0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
              "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2", "0008|103e": "TOF 3D",
              "0020|0037": "\\".join(str(v) for v in direction[0:3] + direction[3:6]),
              "0018|0050": str(spacing[2])}
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        for tag, value in common.items():
            s.SetMetaData(tag, value)
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint(
            (0, 0, k)))))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.3.{k + 1}")
        writer.SetFileName(os.path.join(folder, f"IM{k:04d}.dcm"))
        writer.Execute(s)


def test_dicom_series_folder_per_patient(tmp_path):
    root = str(tmp_path / "data")
    affine = AFFINE.copy()
    affine[:3, 3] = [-9.75, -9.75, -4.2]
    for i in range(2):
        image, label, mask = _case_arrays(i)
        _write_dicom_series(os.path.join(root, "imagesTr", f"pat{i}"), image, affine)
        _write_nifti(os.path.join(root, "labelsTr", f"pat{i}.nii.gz"), label, affine)
        _write_nifti(os.path.join(root, "masksTr", f"pat{i}.nii.gz"), mask, affine)
    cases = volumes.find_cases(root)
    assert [(c.patient_id, os.path.isdir(c.image)) for c in cases] == [("pat0", True),
                                                                       ("pat1", True)]
    encoding = locale.getpreferredencoding(False)
    vol = volumes.load_volume(cases[0])
    assert locale.getpreferredencoding(False) == encoding   # GDCM must not leave "C" behind
    image, label, _ = _case_arrays(0)
    np.testing.assert_array_equal(vol.image, np.round(image))
    np.testing.assert_array_equal(vol.label, label)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    info = convert.convert(cases, str(tmp_path / "rec"), CONFIG, **QUIET)
    assert info["counts"]["train"] + info["counts"]["val"] == 2 * CONFIG.patches_per_patient
    # a stray file inside the series folder is an error naming it, not a silent skip
    open(os.path.join(root, "imagesTr", "pat1", "notes.txt"), "w").write("scanner log")
    with pytest.raises(volumes.InputError, match=r"pat1/notes\.txt: not part of the DICOM"):
        convert.convert(volumes.find_cases(root), str(tmp_path / "rec2"), CONFIG, **QUIET)
    assert not os.path.exists(tmp_path / "rec2")


@pytest.mark.parametrize("values,vessel_labels,expected", [
    ((0, 255), None, {255}),              # 0/255 label
    ((0, 3, 7, 12), None, {3, 7, 12}),    # multi-class: every non-zero value
    ((0, 3, 7, 12), (7,), {7}),           # only the named values
    ((0, 2), (2,), {2}),                  # a lone 2 works once named
])
def test_label_values(tmp_path, values, vessel_labels, expected):
    image, label, mask = _case_arrays(0)
    coded = np.zeros_like(label)
    idx = np.flatnonzero(label)
    coded.flat[idx] = np.array(values[1:])[np.arange(idx.size) % (len(values) - 1)]
    root = str(tmp_path / "d")
    write_case(root, "c", image=image, label=coded, mask=mask * 255)
    vol = volumes.load_volume(volumes.find_cases(root)[0], vessel_labels=vessel_labels)
    np.testing.assert_array_equal(vol.label, np.isin(coded, list(expected)))
    np.testing.assert_array_equal(vol.mask, mask)          # 0/255 mask
    assert vol.label_values == values


def test_lone_label_value_and_missing_vessel_values_are_refused(tmp_path):
    image, label, mask = _case_arrays(0)
    root = str(tmp_path / "d")
    paths = write_case(root, "c", image=image, label=label * 2, mask=mask)
    case = volumes.find_cases(root)[0]
    with pytest.raises(volumes.InputError, match="not binary.*--vessel_labels=2") as err:
        volumes.load_volume(case)
    assert paths["labels"] in str(err.value)
    with pytest.raises(volumes.InputError, match=r"label is empty \(no vessel voxel with a "
                                                 r"value in --vessel_labels=5"):
        volumes.load_volume(case, vessel_labels=(5,))
    write_case(root, "c", image=image, label=label * 0.5, mask=mask)
    with pytest.raises(volumes.InputError, match="not integer-valued"):
        volumes.load_volume(case)


def test_lps_image_with_ras_label_on_the_same_grid_is_accepted(tmp_path):
    image, label, mask = _case_arrays(1)
    root = str(tmp_path / "d")
    write_case(root, "c", image=image, label=label, mask=mask)
    ras = volumes.load_volume(volumes.find_cases(root)[0])
    # the image stored LPS: x and y flipped in the array, affine flipped to the same world
    lps = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    lps[:2, 3] = [(image.shape[0] - 1) * SPACING[0], (image.shape[1] - 1) * SPACING[1]]
    _write_nifti(os.path.join(root, "imagesTr", "c.nii.gz"), image[::-1, ::-1], lps)
    vol = volumes.load_volume(volumes.find_cases(root)[0])
    np.testing.assert_array_equal(vol.image, ras.image)
    np.testing.assert_allclose(vol.affine, ras.affine)
    # the same flip without moving the origin is another grid: refused
    _write_nifti(os.path.join(root, "imagesTr", "c.nii.gz"), image[::-1, ::-1],
                 np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0]))
    with pytest.raises(volumes.InputError, match="affine does not match.*orientation RAS"):
        volumes.check_headers(volumes.find_cases(root)[0])


def _mha_in_nifti_folder(root):
    """The issue's case: a .mha image + label beside NIfTI cases (once silently skipped)."""
    image, label, mask = _case_arrays(7)
    _write_sitk(os.path.join(root, "imagesTr", "topcow.mha"), image)
    _write_sitk(os.path.join(root, "labelsTr", "topcow.mha"), label)
    _write_sitk(os.path.join(root, "masksTr", "topcow.mha"), mask)


def test_mha_beside_nifti_is_converted_not_skipped(small_dataset_dir, tmp_path):
    _mha_in_nifti_folder(small_dataset_dir)
    info = convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "r"), CONFIG,
                           **QUIET)
    assert "topcow" in info["patients"] and len(info["patients"]) == 5


def _mha_bytes(tmp_path):
    path = str(tmp_path / "x" / "x.mha")
    _write_sitk(path, _case_arrays(0)[0])
    return open(path, "rb").read()


def _nifti_bytes(data_dir, rel):
    return gzip.decompress(open(os.path.join(data_dir, rel), "rb").read())


BAD = {   # name -> (relative path written, bytes or callable(data_dir, tmp) -> bytes, message)
    "mha renamed .nii.gz": ("imagesTr/case1.nii.gz", lambda d, t: _mha_bytes(t),
                            "MetaImage header found; name it .mha"),
    "uncompressed nifti named .nii.gz": (
        "labelsTr/case2.nii.gz", lambda d, t: _nifti_bytes(d, "labelsTr/case2.nii.gz"),
        "an uncompressed NIfTI named .nii.gz; rename it to .nii"),
    "gzipped nifti named .nii": (
        "masksTr/case3.nii", lambda d, t: open(os.path.join(d, "masksTr/case3.nii.gz"),
                                               "rb").read(), "gzip-compressed NIfTI"),
    "unknown file": ("imagesTr/README.txt", lambda d, t: b"scanned at site A",
                     "unknown file in imagesTr/"),
    "dicom file loose in imagesTr": ("imagesTr/IM0001", lambda d, t: b"\0" * 128 + b"DICM",
                                     "put each patient's DICOM series into its own folder"),
    "second nnU-Net channel": ("imagesTr/case0_0001.nii.gz",
                               lambda d, t: open(os.path.join(d, "imagesTr/case0.nii.gz"),
                                                 "rb").read(), "input channel 0001"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_misnamed_or_unknown_file_is_named(name, small_dataset_dir, tmp_path):
    rel, content, message = BAD[name]
    data = content(small_dataset_dir, tmp_path)
    path = os.path.join(small_dataset_dir, rel)
    if name == "gzipped nifti named .nii":
        os.remove(path + ".gz")
    if name == "second nnU-Net channel":
        os.rename(path.replace("_0001", ""), path.replace("_0001", "_0000"))
    open(path, "wb").write(data)
    with pytest.raises(volumes.InputError) as err:
        convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "rec"), CONFIG,
                        **QUIET)
    text = str(err.value)
    assert message in text and path in text and "\n" not in text
    assert not os.path.exists(tmp_path / "rec")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".rec")]


def test_ignore_pattern_leaves_files_out_on_purpose(small_dataset_dir, tmp_path):
    open(os.path.join(small_dataset_dir, "imagesTr", ".DS_Store"), "wb").write(b"\0\0\0\1Bud1")
    with pytest.raises(volumes.InputError, match=r"\.DS_Store: unknown file.*--ignore"):
        volumes.find_cases(small_dataset_dir)
    cases = volumes.find_cases(small_dataset_dir, ignore=[".DS_Store"])
    assert [c.patient_id for c in cases] == [f"case{i}" for i in range(4)]


def test_manifest_with_a_missing_file_names_it(small_dataset_dir, tmp_path):
    from tfdpgan import errors
    csv = tmp_path / "cases.csv"
    missing = os.path.join(small_dataset_dir, "labelsTr", "nope.mha")
    csv.write_text("patient_id,image,label\n"
                   f"a,{small_dataset_dir}/imagesTr/case0.nii.gz,{missing}\n")
    with pytest.raises(errors.MissingFileError, match=f"{missing}: file not found"):
        convert.convert(volumes.read_manifest(str(csv)), str(tmp_path / "r"), CONFIG, **QUIET)
    assert not os.path.exists(tmp_path / "r")


def test_nnunet_file_ending_is_enforced(tmp_path):
    data = _nnunet(str(tmp_path / "nn"), ".nii.gz", classes=1)
    _write_sitk(os.path.join(data, "imagesTr", "extra_0000.mha"), _case_arrays(0)[0])
    with pytest.raises(volumes.InputError, match=r"extra_0000\.mha: does not end with "
                                                 r"'\.nii\.gz'"):
        volumes.find_cases(data)


def test_missing_nnunet_label_names_the_right_file(tmp_path):
    data = _nnunet(str(tmp_path / "nn"), ".nii.gz", classes=1)
    os.remove(os.path.join(data, "labelsTr", "topcow_001.nii.gz"))
    with pytest.raises(volumes.InputError,
                       match=r"topcow_001_0000\.nii\.gz: no label found for this image "
                             r"\(expected labelsTr/topcow_001\.nii\.gz\)"):
        volumes.find_cases(data)


def test_warnings_are_printed_and_stored(tmp_path):
    root = str(tmp_path / "d")
    image, label, mask = _case_arrays(0)
    write_case(root, "ok", image=image, label=label, mask=mask)
    premasked = np.where(label > 0, image, 0).astype(np.float32)   # only vessels left
    write_case(root, "premasked", image=premasked, label=label, mask=mask)
    write_case(root, "ct", image=(image - 1000 * (1 - mask)).astype(np.float32), label=label,
               mask=mask)
    image_s, label_s, mask_s = _case_arrays(1, shape=(20, 20, 6))
    write_case(root, "tiny", image=image_s, label=label_s, mask=mask_s)
    info = convert.convert(volumes.find_cases(root), str(tmp_path / "rec"), CONFIG, **QUIET)
    by_case = {c: [w for w in info["warnings"] if f"imagesTr/{c}.nii.gz:" in w]
               for c in ("ok", "premasked", "ct", "tiny")}
    assert by_case["ok"] == []
    assert len(by_case["premasked"]) == 1 and "pre-masked" in by_case["premasked"][0]
    assert len(by_case["ct"]) == 1 and "Hounsfield" in by_case["ct"][0]
    assert len(by_case["tiny"]) == 1 and "patches overlap heavily" in by_case["tiny"][0]
    assert records.read_dataset_json(str(tmp_path / "rec"))["warnings"] == info["warnings"]


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "tfdpgan.convert", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)


def test_cli_nnunet_vessel_labels_warnings_and_bad_files(tmp_path):
    data = _nnunet(str(tmp_path / "nn"), ".mha", classes=12)
    image, label, _ = _case_arrays(9, shape=(20, 20, 6))
    _write_sitk(os.path.join(data, "imagesTr", "small_0000.mha"), image)
    _write_sitk(os.path.join(data, "labelsTr", "small.mha"), label * 4)
    out = str(tmp_path / "rec")
    ok = _run(f"--data_dir={data}", f"--out_dir={out}", "--patch_size=16",
              "--patches_per_patient=10", "--vessel_labels=1,4,9", "--workers=2")
    assert ok.returncode == 0, ok.stderr
    info = records.read_dataset_json(out)
    assert info["label"]["vessel_labels"] == [1, 4, 9]
    assert info["converter_flags"]["vessel_labels"] == ["1", "4", "9"]
    assert len(info["patients"]) == 4 and len(info["warnings"]) == 1
    assert "warning: " in ok.stdout and "small_0000.mha" in ok.stdout

    bad_file = os.path.join(data, "labelsTr", "small.nii.gz")
    shutil.move(os.path.join(data, "labelsTr", "small.mha"), bad_file)
    bad = _run(f"--data_dir={data}", f"--out_dir={out}2", "--patch_size=16")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and bad_file in errors[0]
    assert "does not end with '.mha'" in errors[0]
    assert not os.path.exists(out + "2")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".rec2")]

    os.remove(bad_file)
    _mha_bytes_path = os.path.join(data, "labelsTr", "small.mha")
    open(_mha_bytes_path, "wb").write(_nifti_bytes_of(data))
    bad = _run(f"--data_dir={data}", f"--out_dir={out}3", "--patch_size=16")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode != 0 and len(errors) == 1 and _mha_bytes_path in errors[0]
    assert "NIfTI; name it .nii" in errors[0]
    assert not os.path.exists(out + "3")


def _nifti_bytes_of(data):
    path = os.path.join(data, "x.nii")
    _write_nifti(path, _case_arrays(0)[1])
    raw = open(path, "rb").read()
    os.remove(path)
    return raw
