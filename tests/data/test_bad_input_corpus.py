"""Bad-input corpus (issue 13, item 4): unusual and broken inputs generated here, beyond the
cases of test_convert*.py, each with its exact outcome: refused with one message naming the
file and the problem (nothing written), converted correctly (image and label still aligned
in the records, at the right place in the world), or converted with a warning recorded in
dataset.json.

Decisions these tests pin down:
- Geometry is never resampled. Image, label and mask must lie on one voxel grid (after the
  lossless reorientation to the closest RAS+ orientation); oblique grids are converted as
  they are (patches follow the acquisition slab), a label on another grid is refused.
- One patient under two ids (the same image file by SHA-256, in any split) is refused: the
  privacy unit is the patient, and a copy would count one person twice.
- A label that misses the bright voxels (a label of another patient) is a warning, not an
  error (a heuristic: TOF-MRA vessels are the bright structures).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tfdpgan import errors
from tfdpgan.data import convert, normalization, volumes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (24, 24, 8)
SPACING = (0.5, 0.5, 0.7)
AFFINE = np.diag([*SPACING, 1.0])
CONFIG = convert.ConvertConfig(patch_size=16, patches_per_patient=20, val_fraction=0.0,
                               num_shards=1, seed=7)
QUIET = dict(progress=lambda *a: None, workers=1)


# --- generators ----------------------------------------------------------------------------

def _arrays(seed=0, shape=SHAPE):
    """(image, label, mask): an L-shaped bright bar (asymmetric: any flip or swap of axes
    shows) exactly under the label, on noisy tissue; the mask leaves a 2-voxel margin."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    x, z = 6 + seed % 4, slice(1, shape[2] - 1) if shape[2] > 2 else slice(None)
    label[x:x + 2, 4:shape[1] - 4, z] = 1      # bar along y
    label[x:x + 8, 4:6, z] = 1                 # foot along x
    mask = np.zeros(shape, np.uint8)
    mask[2:-2, 2:-2, :] = 1
    image = (100 + 5 * rng.standard_normal(shape) + 900 * label).astype(np.float32)
    return image, label, mask


def _save(path, array, affine=AFFINE, klass=nib.Nifti1Image, slope_inter=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = np.asarray(array)
    header = None
    if array.dtype.byteorder == ">":
        header = klass.header_class(endianness=">")
        header.set_data_dtype(array.dtype)
    img = klass(array, affine, header)          # a big-endian array: a big-endian file
    if slope_inter:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, path)
    return path


def _case(root, pid="p", split="Tr", image=None, label=None, mask=None, affine=AFFINE,
          seed=0, ext=".nii.gz", affines=None):
    """Write one case; ``affines`` overrides the affine per role. Returns role -> path."""
    ref = _arrays(seed)
    arrays = {"images": ref[0] if image is None else image,
              "labels": ref[1] if label is None else label,
              "masks": ref[2] if mask is None else mask}
    return {role: _save(os.path.join(root, f"{role}{split}", pid + ext), data,
                        (affines or {}).get(role, affine))
            for role, data in arrays.items() if data is not False}


def _rotation(ax_deg, az_deg):
    a, b = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _oblique(ax_deg=25.0, az_deg=10.0):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(ax_deg, az_deg) @ np.diag(SPACING)
    affine[:3, 3] = [-6.0, 4.0, 12.0]
    return affine


# IRP storage of a RAS array: file axis 0 = inferior (-z), 1 = right (+x), 2 = posterior (-y).
def _to_irp(array):
    return np.ascontiguousarray(array.transpose(2, 0, 1)[::-1, :, ::-1])


def _irp_affine(ras_affine, shape=SHAPE):
    x, y, z = shape
    m = np.array([[0, 1, 0, 0], [0, 0, -1, y - 1], [-1, 0, 0, z - 1], [0, 0, 0, 1.0]])
    return ras_affine @ m


def _convert(root, tmp_path, config=CONFIG, test=False):
    out = str(tmp_path / "out" / "rec")
    cases = volumes.find_cases(root)
    tests = volumes.find_cases(root, "Ts") if test else ()
    return convert.convert(cases, out, config, test_cases=tests, **QUIET), out


def _nothing_written(tmp_path):
    parent = tmp_path / "out"
    return not parent.exists() or os.listdir(parent) == []


def _refused(root, tmp_path, path, problem, kind=errors.InputDataError, config=CONFIG,
             test=False):
    """Conversion fails with ``kind``: one line naming ``path`` and ``problem``; no output."""
    with pytest.raises(kind) as err:
        _convert(root, tmp_path, config, test)
    text = str(err.value)
    assert path in text, text
    assert problem in text, text
    assert "\n" not in text
    assert _nothing_written(tmp_path)
    return text


def _records(out):
    import tensorflow as tf
    from tfdpgan.data import records
    info = records.read_dataset_json(out)
    paths = sum((records.shard_paths(out, s) for s in ("train", "val", "test")), [])
    ds = tf.data.TFRecordDataset(paths, records.COMPRESSION).batch(10_000)
    return next(ds.map(records.make_parser(info["patch_size"])).as_numpy_iterator())


def _world(affine, index):
    return np.round((np.asarray(affine)[:3, :3] @ np.asarray(index, float).T).T
                    + np.asarray(affine)[:3, 3], 3)


def _assert_aligned_and_placed(out, info, pid, file_label, file_affine):
    """In every patch the bright voxels are exactly the label voxels, and every label voxel
    of the records sits at a world position where the label file has a vessel voxel."""
    ex = _records(out)
    assert len(ex["image"]) == info["patients"][pid]["num_patches"] > 0
    np.testing.assert_array_equal(ex["image"] > 0, ex["label"] > 0)
    assert ex["label"].sum() > 0
    truth = {tuple(p) for p in _world(file_affine, np.argwhere(file_label > 0))}
    affine = np.asarray(info["patients"][pid]["affine"])
    for origin, lab in zip(ex["origin"], ex["label"][..., 0]):
        ij = np.argwhere(lab > 0)
        index = np.column_stack([ij[:, 0] + origin[0], ij[:, 1] + origin[1],
                                 np.full(len(ij), origin[2])])
        assert {tuple(p) for p in _world(affine, index)} <= truth


# --- geometry: oblique and non-RAS grids -----------------------------------------------------

def test_oblique_grid_is_converted_aligned_and_in_place(tmp_path):
    root, affine = str(tmp_path / "d"), _oblique()
    _case(root, affine=affine)
    info, out = _convert(root, tmp_path)
    assert np.allclose(info["patients"]["p"]["affine"], affine)   # RAS-closest already
    _assert_aligned_and_placed(out, info, "p", _arrays()[1], affine)


def test_non_ras_irp_storage_is_reoriented_to_the_same_volume(tmp_path):
    root = str(tmp_path / "d")
    image, label, mask = _arrays()
    affine = _irp_affine(_oblique(8, -12))
    _case(root, image=_to_irp(image), label=_to_irp(label), mask=_to_irp(mask), affine=affine)
    vol = volumes.load_volume(volumes.find_cases(root)[0])
    np.testing.assert_array_equal(vol.image, image)
    np.testing.assert_array_equal(vol.label, label)
    np.testing.assert_allclose(vol.affine, _oblique(8, -12), atol=1e-6)
    info, out = _convert(root, tmp_path)
    _assert_aligned_and_placed(out, info, "p", _to_irp(label), affine)


def test_irp_image_with_ras_label_and_mask_on_the_same_world_grid(tmp_path):
    root = str(tmp_path / "d")
    image, label, _ = _arrays()
    _case(root, image=_to_irp(image), affines={"images": _irp_affine(AFFINE)})
    info, out = _convert(root, tmp_path)
    _assert_aligned_and_placed(out, info, "p", label, AFFINE)


@pytest.mark.parametrize("name,label_affine", [
    ("label on a rotated grid", _oblique(25.0, 14.0)),
    ("label origin one voxel off", _oblique() @ np.array(
        [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])),
    ("label resampled to the scanner axes", np.diag([*SPACING, 1.0])),
])
def test_label_on_another_grid_than_an_oblique_image_is_refused(tmp_path, name, label_affine):
    root = str(tmp_path / "d")
    paths = _case(root, affine=_oblique(), affines={"labels": label_affine})
    _refused(root, tmp_path, paths["labels"], "affine does not match the image affine")


def test_patch_check_uses_the_axial_slice_not_the_file_axes(tmp_path):
    """IRP file of shape (8, 24, 24): its axial slice is 24x24, so patch 16 fits; a RAS file
    whose first two axes are 24x8 in the axial plane does not."""
    root = str(tmp_path / "d")
    image, label, mask = _arrays()
    _case(root, image=_to_irp(image), label=_to_irp(label), mask=_to_irp(mask),
          affine=_irp_affine(AFFINE))
    volumes.check_headers(volumes.find_cases(root)[0], patch_size=16)
    root2 = str(tmp_path / "d2")
    sagittal = np.array([[0, 0, 0.5, 0], [0.5, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1.0]])
    paths = _case(root2, affine=sagittal)      # file (24, 24, 8) = (A, S, R): slice 24x8
    _refused(root2, tmp_path, paths["images"], "patch size 16 is larger than the axial slice "
                                               "(8x24 voxels)")


# --- encodings: scaling, data types, NIfTI-2, .nii / .nii.gz --------------------------------

def test_scl_slope_and_inter_of_the_image_are_applied(tmp_path):
    root = str(tmp_path / "d")
    image, label, mask = _arrays()
    stored = np.round(image).astype(np.int16)
    _case(root)
    _save(os.path.join(root, "imagesTr", "p.nii.gz"), stored, slope_inter=(2.0, 10.0))
    vol = volumes.load_volume(volumes.find_cases(root)[0])
    np.testing.assert_array_equal(vol.image, stored * 2.0 + 10.0)
    info, _ = _convert(root, tmp_path)
    assert info["patients"]["p"]["normalization"]["high"] == pytest.approx(
        float(np.percentile(stored[mask > 0] * 2.0 + 10.0, CONFIG.percentile)), rel=1e-5)


def test_label_scaled_to_255_by_scl_slope_is_a_0_255_mask(tmp_path):
    root = str(tmp_path / "d")
    label = _arrays()[1]
    paths = _case(root)
    _save(paths["labels"], label, slope_inter=(255.0, 0.0))
    vol = volumes.load_volume(volumes.find_cases(root)[0])
    np.testing.assert_array_equal(vol.label, label)
    assert vol.label_values == (0, 255)


def test_label_with_scl_inter_has_no_background_and_is_refused(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root)
    _save(paths["labels"], _arrays()[1], slope_inter=(1.0, 1.0))     # values 1 and 2
    _refused(root, tmp_path, paths["labels"], "every voxel of the label is vessel")


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float64", ">f4",
                                   ">i2"])
def test_integer_float_and_big_endian_images_read_exactly(tmp_path, dtype):
    root = str(tmp_path / "d")
    image, label, _ = _arrays()
    small = np.round(image / 4)                                      # 0..250: fits uint8
    _case(root, image=small.astype(dtype), label=label.astype(">i2" if ">" in dtype
                                                              else "uint8"))
    stored = nib.load(os.path.join(root, "imagesTr", "p.nii.gz"))
    assert stored.get_data_dtype() == np.dtype(dtype)
    assert stored.header.endianness == (">" if ">" in dtype else "<")
    vol = volumes.load_volume(volumes.find_cases(root)[0])
    assert vol.image.dtype == np.float32
    np.testing.assert_array_equal(vol.image, small.astype(np.float32))
    np.testing.assert_array_equal(vol.label, label)


@pytest.mark.parametrize("dtype,problem", [("complex64", "complex64"),
                                           ("RGB", "[('R', 'u1'), ('G', 'u1'), ('B', 'u1')]")])
def test_complex_and_rgb_images_are_refused(tmp_path, dtype, problem):
    root = str(tmp_path / "d")
    image = _arrays()[0]
    if dtype == "RGB":
        data = np.zeros(SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")])
        data["G"] = np.clip(image / 4, 0, 255)
    else:
        data = image.astype(np.complex64) * (1 + 1j)
    paths = _case(root, image=data)
    text = _refused(root, tmp_path, paths["images"], "is not one real number per voxel")
    assert problem in text


def test_nifti2_files_read_like_nifti1(tmp_path):
    root, ref_root = str(tmp_path / "d"), str(tmp_path / "ref")
    image, label, mask = _arrays()
    _case(ref_root)
    _save(os.path.join(root, "imagesTr", "p.nii.gz"), image, klass=nib.Nifti2Image)
    _save(os.path.join(root, "labelsTr", "p.nii"), label, klass=nib.Nifti2Image)
    _save(os.path.join(root, "masksTr", "p.nii.gz"), mask)
    with open(os.path.join(root, "labelsTr", "p.nii"), "rb") as f:
        assert int.from_bytes(f.read(4), "little") == 540               # really NIfTI-2
    vol, ref = (volumes.load_volume(volumes.find_cases(r)[0]) for r in (root, ref_root))
    for a, b in ((vol.image, ref.image), (vol.label, ref.label), (vol.mask, ref.mask)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)   # NIfTI-1 stores float32


def test_uncompressed_nii_image_with_gzipped_label(tmp_path):
    root = str(tmp_path / "d")
    _case(root, ext=".nii")
    os.remove(os.path.join(root, "labelsTr", "p.nii"))
    _save(os.path.join(root, "labelsTr", "p.nii.gz"), _arrays()[1])
    info, out = _convert(root, tmp_path)
    image_path = os.path.join(root, "imagesTr", "p.nii")
    with open(image_path, "rb") as f:
        assert info["patients"]["p"]["sha256"]["image"] == hashlib.sha256(f.read()).hexdigest()
    assert info["patients"]["p"]["files"]["label"].endswith("p.nii.gz")
    _assert_aligned_and_placed(out, info, "p", _arrays()[1], AFFINE)


# --- sizes and dimensions -------------------------------------------------------------------

def test_volume_smaller_than_the_patch(tmp_path):
    root = str(tmp_path / "d")
    image, label, mask = _arrays(shape=(10, 10, 3))
    paths = _case(root, image=image, label=label, mask=mask)
    _refused(root, tmp_path, paths["images"], "patch size 16 is larger than the axial slice "
                                              "(10x10 voxels)")


def test_single_slice_gives_fewer_patches_with_a_warning(tmp_path):
    root = str(tmp_path / "d")
    image, label, mask = _arrays(shape=(24, 24, 1))
    paths = _case(root, image=image, label=label, mask=mask)
    config = convert.ConvertConfig(**{**CONFIG.__dict__, "patches_per_patient": 200})
    info, _ = _convert(root, tmp_path, config)
    assert info["patients"]["p"]["num_patches"] == 81      # (24 - 16 + 1)^2 centres, 1 slice
    assert info["warnings"] == [f"{paths['images']}: only 81 of 200 patches fit (distinct "
                                f"centres at least half a patch inside the slice, in the "
                                f"brain)"]


def test_brain_mask_only_at_the_border_leaves_no_patch(tmp_path):
    root = str(tmp_path / "d")
    image, _, _ = _arrays()
    label, mask = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    mask[:4] = 1
    label[1:3, 5:15, 2:5] = 1
    paths = _case(root, image=image + 900 * label, label=label, mask=mask)
    _refused(root, tmp_path, paths["masks"], "no 16x16 patch fits around any in-brain voxel")


@pytest.mark.parametrize("shape,accepted", [((24, 24), False), ((24, 24, 8, 1), True),
                                            ((24, 24, 8, 1, 3), False)])
def test_image_dimensions(tmp_path, shape, accepted):
    root = str(tmp_path / "d")
    image, label, mask = _arrays()
    data = {2: image[..., 0], 4: image[..., None],
            5: np.repeat(image[..., None, None], 3, axis=-1)}[len(shape)]
    assert data.shape == shape
    paths = _case(root, image=data)
    if accepted:
        np.testing.assert_array_equal(volumes.load_volume(volumes.find_cases(root)[0]).image,
                                      image)
    else:
        _refused(root, tmp_path, paths["images"], f"expected a 3-D volume, got shape {shape}")


# --- content --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["percentile", "fixed"])
def test_all_zero_image_is_refused_whatever_the_normalisation(tmp_path, method):
    root = str(tmp_path / "d")
    paths = _case(root, image=np.zeros(SHAPE, np.float32))
    config = convert.ConvertConfig(**{**CONFIG.__dict__, "normalization": method,
                                      "intensity_range": (0.0, 1000.0)})
    _refused(root, tmp_path, paths["images"], "the image is constant (every voxel 0)",
             config=config)


def test_probabilistic_label_is_refused_with_advice(tmp_path):
    root = str(tmp_path / "d")
    label = _arrays()[1].astype(np.float32)
    soft = np.clip(label * 0.9 + np.random.default_rng(0).uniform(0, 0.2, SHAPE), 0, 1)
    paths = _case(root, label=soft.astype(np.float32))
    _refused(root, tmp_path, paths["labels"], "a probability map? threshold it")


@pytest.mark.parametrize("role,value,where", [("images", np.inf, "image"),
                                              ("labels", np.nan, "label"),
                                              ("masks", np.nan, "mask")])
def test_non_finite_voxels_are_counted_and_named(tmp_path, role, value, where):
    root = str(tmp_path / "d")
    arrays = dict(zip(("images", "labels", "masks"), _arrays()))
    data = arrays[role].astype(np.float32)
    data[3, 3, :3] = value
    paths = _case(root, **{role[:-1]: data})
    _refused(root, tmp_path, paths[role], f"3 NaN/Inf voxels in the {where}")


@pytest.mark.parametrize("name,mask,problem", [
    ("empty", np.zeros(SHAPE, np.uint8), "brain mask is empty"),
    ("fractional", np.full(SHAPE, 0.5, np.float32), "brain mask has fractional values"),
])
def test_bad_brain_masks(tmp_path, name, mask, problem):
    root = str(tmp_path / "d")
    paths = _case(root, mask=mask)
    _refused(root, tmp_path, paths["masks"], problem)


def test_label_of_another_patient_is_warned_about_in_dataset_json(tmp_path):
    root = str(tmp_path / "d")
    other = np.zeros(SHAPE, np.uint8)
    other[17:19, 4:20, 1:7] = 1                  # same shape, a vessel somewhere else
    paths = _case(root, label=other)
    _case(root, pid="q", seed=1)                 # a matching pair: no warning
    info, out = _convert(root, tmp_path)
    assert len(info["warnings"]) == 1
    warning = info["warnings"][0]
    assert warning.startswith(f"{paths['labels']}: only 0 % of the label's vessel voxels are "
                              f"among the 192 brightest in-brain voxels")
    assert "another patient" in warning
    with open(os.path.join(out, "dataset.json")) as f:
        assert json.load(f)["warnings"] == [warning]


def test_bright_overlap_rule_on_the_phantom():
    """No false alarm on realistic phantom volumes (unlabelled bright veins and sinuses);
    a label of another phantom patient on a different vessel tree is flagged."""
    from tfdpgan.data import phantom
    config = phantom.preset("small")
    own, other = phantom.make_volume(1, config), phantom.make_volume(11, config)
    assert normalization.label_warnings(own.image, own.label, own.mask) == []
    warned = normalization.label_warnings(own.image, other.label, own.mask)
    assert len(warned) == 1 and "another patient" in warned[0]


def test_label_at_half_resolution_is_refused(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root)
    _save(paths["labels"], _arrays()[1][::2, ::2, ::2], np.diag([1.0, 1.0, 1.4, 1.0]))
    _refused(root, tmp_path, paths["labels"], "label shape (12, 12, 4) does not match the "
                                              "image shape (24, 24, 8)")


def test_manifest_naming_the_image_as_its_label_is_refused(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root, image=np.round(_arrays()[0]).astype(np.int16))   # integer: "labels"
    csv = tmp_path / "cases.csv"
    csv.write_text(f"patient_id,image,label\np,{paths['images']},{paths['images']}\n")
    with pytest.raises(errors.InputDataError, match="same content .SHA-256. as the image"):
        convert.convert(volumes.read_manifest(str(csv)), str(tmp_path / "out" / "r"), CONFIG,
                        **QUIET)
    assert _nothing_written(tmp_path)


# --- files: links, permissions, names -------------------------------------------------------

def test_symlinked_file_and_folder_are_read_through(tmp_path):
    store, root = str(tmp_path / "store"), str(tmp_path / "d")
    target = _case(store)["images"]
    _case(root)
    os.remove(os.path.join(root, "imagesTr", "p.nii.gz"))
    os.symlink(target, os.path.join(root, "imagesTr", "p.nii.gz"))
    shutil.rmtree(os.path.join(root, "labelsTr"))
    os.symlink(os.path.join(store, "labelsTr"), os.path.join(root, "labelsTr"))
    info, out = _convert(root, tmp_path)
    with open(target, "rb") as f:
        assert info["patients"]["p"]["sha256"]["image"] == hashlib.sha256(f.read()).hexdigest()
    _assert_aligned_and_placed(out, info, "p", _arrays()[1], AFFINE)


def test_broken_symlink_is_named_as_one(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root)
    os.remove(paths["labels"])
    os.symlink("/nonexistent/p.nii.gz", paths["labels"])
    _refused(root, tmp_path, paths["labels"], "broken symbolic link (points to "
                                              "/nonexistent/p.nii.gz", errors.MissingFileError)


def test_unreadable_file(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root)
    os.chmod(paths["masks"], 0)
    try:
        if os.access(paths["masks"], os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        _refused(root, tmp_path, paths["masks"], "cannot read it")
    finally:
        os.chmod(paths["masks"], 0o644)


def test_zero_byte_file(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root)
    open(paths["masks"], "wb").close()
    _refused(root, tmp_path, paths["masks"], "the file is empty")


def test_analyze_hdr_img_pair_gets_the_right_advice(tmp_path):
    root = str(tmp_path / "d")
    _case(root)
    pair = os.path.join(root, "imagesTr", "q.hdr")
    nib.save(nib.Nifti1Pair(_arrays(1)[0], AFFINE), pair)
    assert os.path.isfile(pair[:-4] + ".img")
    text = _refused(root, tmp_path, pair, "the header of an Analyze / NIfTI .hdr+.img pair")
    assert "name it .nii" not in text


def test_non_ascii_paths_and_patient_ids(tmp_path):
    root = str(tmp_path / "données_患者")
    _case(root, pid="patïent-ü")
    info, out = _convert(root, tmp_path)
    assert list(info["patients"]) == ["patïent-ü"]
    assert set(_records(out)["patient_id"]) == {"patïent-ü".encode()}
    assert "données_患者" in info["patients"]["patïent-ü"]["files"]["image"]


# --- one patient twice ----------------------------------------------------------------------

@pytest.mark.parametrize("split", ["Tr", "Ts"])
def test_the_same_image_under_two_ids_is_refused(tmp_path, split):
    root = str(tmp_path / "d")
    first = _case(root, pid="a")
    _case(root, pid="b", seed=1)
    copy = _case(root, pid="z", split=split, seed=1)
    shutil.copyfile(first["images"], copy["images"])
    text = _refused(root, tmp_path, copy["images"], "the same image file", test=True)
    assert "as patient 'a'" in text and first["images"] in text


# --- nnU-Net dataset.json, empty folders, manifests -----------------------------------------

@pytest.mark.parametrize("content,problem", [
    (b'{"file_ending": ".nii.gz", "labels": {"background": 0,}', "unreadable nnU-Net "
                                                                 "dataset.json (Expecting"),
    (b'["file_ending", ".nii.gz"]', "expected a JSON object"),
    (b'{"file_ending": ".png"}', "file_ending '.png' is not a format tfdpgan reads"),
    (b'\xff\xfe{\x00}\x00', "unreadable nnU-Net dataset.json"),
    (b"", "unreadable nnU-Net dataset.json"),
])
def test_corrupted_nnunet_dataset_json(tmp_path, content, problem):
    root = str(tmp_path / "d")
    _case(root, pid="p_0000", mask=False)
    os.makedirs(os.path.join(root, "labelsTr"), exist_ok=True)
    os.rename(os.path.join(root, "labelsTr", "p_0000.nii.gz"),
              os.path.join(root, "labelsTr", "p.nii.gz"))
    path = os.path.join(root, "dataset.json")
    with open(path, "wb") as f:
        f.write(content)
    _refused(root, tmp_path, path, problem)


def test_empty_folder_and_labels_without_images(tmp_path):
    root = str(tmp_path / "d")
    os.makedirs(root)
    with pytest.raises(errors.InputDataError, match="no training cases found"):
        _convert(root, tmp_path)
    paths = _case(root, image=False)
    _refused(root, tmp_path, paths["labels"], "label without an image")


def test_manifest_saved_by_excel_with_a_bom(tmp_path):
    root = str(tmp_path / "d")
    paths = _case(root)
    csv = tmp_path / "cases.csv"
    csv.write_bytes("\ufeffpatient_id,image,label,mask\n".encode() + (
        f"p,{paths['images']},{paths['labels']},{paths['masks']}\n".encode()))
    assert [c.patient_id for c in volumes.read_manifest(str(csv))] == ["p"]
    csv.write_text("patient_id,image,label\n")
    with pytest.raises(errors.InputDataError, match="at least one row"):
        volumes.read_manifest(str(csv))


# --- the command line: exit 2, one "error:" line naming the file, nothing written ------------

def _cli(tool, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONIOENCODING="utf-8")
    command = [sys.executable, "-m", "tfdpgan.convert"] if tool == "module" else \
        [sys.executable, os.path.join(ROOT, "tools", "nifti_to_tfrecord.py")]
    return subprocess.run(command + list(args), capture_output=True, timeout=300, env=env,
                          cwd=ROOT)


def _cli_setup(name, root):
    """Write the input of one CLI case; returns (path the error must name, problem)."""
    if name == "empty folder":
        os.makedirs(root)
        return root, "no training cases found"
    paths = _case(root, pid="patïent")
    if name == "broken dataset.json":
        with open(os.path.join(root, "dataset.json"), "w") as f:
            f.write('{"file_ending": ".nii.gz"')
        return os.path.join(root, "dataset.json"), "unreadable nnU-Net dataset.json"
    if name == "non-ASCII path, probabilistic label":
        _save(paths["labels"], _arrays()[1] * np.float32(0.8))
        return paths["labels"], "not binary and not integer-valued"
    if name == "broken symlink":
        os.remove(paths["images"])
        os.symlink(os.path.join(root, "gone.nii.gz"), paths["images"])
        return paths["images"], "broken symbolic link"
    copy = _case(root, pid="twin", seed=1)["images"]            # "one patient twice"
    shutil.copyfile(paths["images"], copy)
    return copy, "the same image file"


@pytest.mark.parametrize("name,tool", [("empty folder", "module"),
                                       ("broken dataset.json", "tool"),
                                       ("non-ASCII path, probabilistic label", "module"),
                                       ("broken symlink", "tool"),
                                       ("one patient twice", "module")])
def test_cli_reports_one_error_line_and_writes_nothing(tmp_path, name, tool):
    root = str(tmp_path / "dätä")
    path, problem = _cli_setup(name, root)
    out = str(tmp_path / "out" / "rec")
    run = _cli(tool, f"--data_dir={root}", f"--out_dir={out}", "--patch_size=16",
               "--patches_per_patient=10", "--workers=1")
    stderr = run.stderr.decode("utf-8")
    assert run.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and path in lines[0] and problem in lines[0], stderr
    assert "Traceback" not in stderr
    assert _nothing_written(tmp_path)


# --- the sample side: a generator SavedModel whose card was deleted -------------------------

def test_generator_without_its_card_is_refused_by_sample(tmp_path):
    from tfdpgan import workdir
    from tfdpgan.gan import export, models, sample
    gen_dir = str(tmp_path / "generator")
    generator = models.build_generator(latent_dim=8, patch_size=16, base_filters=4)
    export.export_generator(generator, gen_dir, {workdir.PRIVACY_JSON: {"epsilon": 3.0}})
    os.remove(workdir.generator_card_path(gen_dir))
    fn, latent_dim, patch = export.load_generator(gen_dir)    # the model itself still loads
    assert (latent_dim, patch) == (8, 16)
    with pytest.raises(errors.MissingFileError, match="privacy.json"):
        sample.sample_to(gen_dir, 4, str(tmp_path / "samples"), "nifti")
    assert not os.path.exists(tmp_path / "samples")


def test_label_entirely_outside_the_brain_mask_is_warned_about(tmp_path):
    root = str(tmp_path / "d")
    image, _, mask = _arrays()
    label = np.zeros(SHAPE, np.uint8)
    label[0:2, 4:20, 1:7] = 1                    # in the 2-voxel margin the mask leaves out
    paths = _case(root, image=image + 900 * label, label=label, mask=mask)
    info, _ = _convert(root, tmp_path)
    assert info["warnings"] == [f"{paths['labels']}: no vessel voxel of the label lies inside "
                                f"the brain mask: is the label (or the mask) of another "
                                f"patient?"]
