"""Tests of the vessel phantom: geometry, appearance, determinism, dataset folder and CLI."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tfdpgan.data import phantom

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = phantom.PhantomConfig(shape=(64, 64, 24))
# For folder/IO tests only: a tiny grid and a small tree keep them fast.
TINY = phantom.PhantomConfig(shape=(32, 32, 12), max_branches=20)


@pytest.fixture(scope="module")
def small():
    return phantom.make_volume(1, SMALL)


@pytest.fixture(scope="module")
def full_size():
    """One volume at the default shape (about a second)."""
    return phantom.make_volume(0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("parent") / "data"
    calls = []
    ids = phantom.write_dataset(str(out), 2, num_test=1, seed=3, config=TINY,
                                progress=lambda done, total: calls.append((done, total)))
    return out, ids, calls


def oracle_threshold_dice(volume):
    """Best Dice over all global thresholds of the in-mask intensities (an oracle choice)."""
    inside = volume.mask > 0
    values, truth = volume.image[inside], volume.label[inside] > 0
    hits = np.cumsum(truth[np.argsort(-values, kind="stable")])
    predicted = np.arange(1, len(values) + 1)
    return float(np.max(2.0 * hits / (predicted + truth.sum())))


# ---------------------------------------------------------------------------------------------
# Volumes

def test_same_seed_same_volume_different_seed_different_volume():
    a, b = phantom.make_volume(7, SMALL), phantom.make_volume(7, SMALL)
    for field in ("image", "label", "mask", "affine"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = phantom.make_volume(8, SMALL)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


def test_arrays_types_and_shapes(small):
    assert small.image.dtype == np.float32 and small.image.shape == SMALL.shape
    for binary in (small.label, small.mask):
        assert binary.dtype == np.uint8 and binary.shape == SMALL.shape
        assert set(np.unique(binary)) == {0, 1}
    assert small.affine.shape == (4, 4) and small.affine.dtype == np.float64
    assert np.all(np.isfinite(small.image))


def test_label_nonempty_and_inside_brain_mask_image_zero_outside(small):
    assert small.label.sum() > 100
    assert not np.any(small.label & (1 - small.mask))
    assert np.all(small.image[small.mask == 0] == 0)
    assert np.mean(small.image[small.mask == 1] > 0) > 0.999
    # A brain, not the whole box: zero margin in-plane.
    assert 0.3 < small.mask.mean() < 0.9
    assert not small.mask[[0, -1], :, :].any() and not small.mask[:, [0, -1], :].any()


def test_scanner_like_intensities_vessels_brighter_than_tissue(small):
    label, mask = small.label == 1, small.mask == 1
    tissue = small.image[mask & ~label]
    assert 100 < np.median(tissue) < 300
    assert 600 < np.percentile(small.image[label], 99) < 1500
    assert small.image[label].mean() > 2.0 * tissue.mean()


def test_label_is_aligned_with_the_bright_vessels(small):
    label = small.label == 1
    shell = ndimage.binary_dilation(label, iterations=2) & ~label & (small.mask == 1)
    assert small.image[label].mean() > 1.5 * small.image[shell].mean()
    # A label shifted by a few voxels fits the image clearly worse.
    shifted = np.roll(label, 3, axis=0) & (small.mask == 1)
    assert small.image[label].mean() > 1.3 * small.image[shifted].mean()


def test_thick_and_thin_vessels(full_size):
    spacing = phantom.PhantomConfig().spacing
    depth = ndimage.distance_transform_edt(full_size.label, sampling=spacing)
    assert depth.max() >= 1.5  # a carotid-like vessel of radius >= 1.5 mm
    # Local radius of each label voxel ~ the largest depth in its 3x3x3 neighbourhood.
    local_radius = ndimage.maximum_filter(depth, size=3)[full_size.label == 1]
    assert np.mean(local_radius <= 0.6) > 0.1


def test_not_trivially_segmentable_by_intensity(full_size):
    dice = oracle_threshold_dice(full_size)
    assert 0.4 < dice < 0.7


def test_bright_surface_distractors_are_unlabelled(full_size):
    """Sinus/fat-like remnants: as bright as vessels, at the brain surface, never labelled."""
    plain = phantom.make_volume(0, dataclasses.replace(phantom.PhantomConfig(),
                                                       distractor_intensity=0.0))
    np.testing.assert_array_equal(plain.label, full_size.label)
    inside, label = full_size.mask == 1, full_size.label == 1
    # The brightest in-brain voxels, as many as there are vessel voxels: a good share of them
    # is not vessel, and most of those are distractors (intensity added near the surface).
    n = int(label.sum())
    bright = inside & (full_size.image >= np.partition(full_size.image[inside], -n)[-n])
    false_bright = bright & ~label
    assert false_bright.sum() > 0.3 * n
    distractor = false_bright & (full_size.image - plain.image > 100.0)
    assert distractor.sum() > 0.4 * false_bright.sum()
    depth = ndimage.distance_transform_edt(inside, sampling=phantom.PhantomConfig().spacing)
    assert np.mean(depth[distractor] <= 4.0) > 0.95
    # They leave the inner brain alone.
    deep = inside & (depth > 10.0)
    np.testing.assert_allclose(full_size.image[deep], plain.image[deep], atol=0.1)


def test_inflow_saturation_dims_distal_small_vessels_but_keeps_the_label(full_size):
    config = phantom.PhantomConfig()
    fresh = phantom.make_volume(0, dataclasses.replace(config, saturation_per_mm=0.0))
    np.testing.assert_array_equal(fresh.label, full_size.label)
    depth = ndimage.distance_transform_edt(full_size.label, sampling=config.spacing)
    local_radius = ndimage.maximum_filter(depth, size=3)
    label = full_size.label == 1
    thin, trunks = label & (local_radius <= 0.6), label & (local_radius >= 1.5)

    def dimming(where):
        return full_size.image[where].mean() / fresh.image[where].mean()
    assert dimming(thin) < 0.9
    assert dimming(trunks) > 0.98


def test_affine_encodes_spacing_and_centres_the_volume():
    config = phantom.PhantomConfig(shape=(40, 30, 20), spacing=(0.4, 0.5, 0.8))
    affine = phantom.affine_for(config)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), config.spacing)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    centre = affine @ np.append((np.asarray(config.shape) - 1) / 2.0, 1.0)
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        phantom.PhantomConfig(shape=(4, 64, 24))
    with pytest.raises(ValueError, match="spacing"):
        phantom.PhantomConfig(spacing=(0.5, 0.0, 0.7))
    with pytest.raises(ValueError, match="distractor_intensity"):
        phantom.PhantomConfig(distractor_intensity=-1.0)


# ---------------------------------------------------------------------------------------------
# Dataset folder

def test_folder_layout_case_ids_and_progress(dataset):
    out, ids, calls = dataset
    assert ids == {"train": ["phantom_000", "phantom_001"], "test": ["phantom_002"]}
    for kind in ("images", "labels", "masks"):
        assert sorted(os.listdir(out / f"{kind}Tr")) == ["phantom_000.nii.gz",
                                                         "phantom_001.nii.gz"]
        assert sorted(os.listdir(out / f"{kind}Ts")) == ["phantom_002.nii.gz"]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    description = json.loads((out / "dataset.json").read_text())
    assert description["numTraining"] == 2 and description["numTest"] == 1
    assert description["test"][0]["label"] == "./labelsTs/phantom_002.nii.gz"
    assert description["phantom"]["seed"] == 3
    # Nothing but the finished folder is left in the parent.
    assert os.listdir(out.parent) == ["data"]


def test_case_ids_are_zero_padded_and_continue_into_test():
    assert phantom.case_ids(2, 2) == {"train": ["phantom_000", "phantom_001"],
                                      "test": ["phantom_002", "phantom_003"]}
    wide = phantom.case_ids(1000, 1)
    assert wide["train"][0] == "phantom_0000" and wide["test"] == ["phantom_1000"]


def test_nifti_round_trip_keeps_data_geometry_and_header_codes(dataset):
    out, _, _ = dataset
    expected = phantom.make_volume(phantom.patient_seed(3, 2), TINY)
    loaded = {role: nib.load(out / f"{role}sTs" / "phantom_002.nii.gz")
              for role in ("image", "label", "mask")}
    for role, img in loaded.items():
        np.testing.assert_allclose(img.header.get_zooms(), TINY.spacing, rtol=1e-6)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_array_equal(img.affine, loaded["image"].affine)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), getattr(expected, role))
    assert loaded["image"].get_data_dtype() == np.float32
    assert loaded["label"].get_data_dtype() == np.uint8
    assert loaded["mask"].get_data_dtype() == np.uint8
    np.testing.assert_allclose(loaded["image"].affine, phantom.affine_for(TINY), atol=1e-6)


def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    out, _, _ = dataset
    again = tmp_path / "again"
    phantom.write_dataset(str(again), 2, num_test=1, seed=3, config=TINY)
    for rel in ("imagesTr/phantom_001.nii.gz", "labelsTs/phantom_002.nii.gz"):
        assert (again / rel).read_bytes() == (out / rel).read_bytes()
    other = tmp_path / "other"
    phantom.write_dataset(str(other), 1, num_test=0, seed=4, config=TINY)
    assert ((other / "imagesTr/phantom_000.nii.gz").read_bytes()
            != (out / "imagesTr/phantom_000.nii.gz").read_bytes())


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        phantom.write_dataset(str(out), 1, num_test=0, config=TINY)
    assert (out / "keep.txt").read_text() == "old"
    phantom.write_dataset(str(out), 1, num_test=0, config=TINY, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "imagesTr" / "phantom_000.nii.gz").exists()
    assert os.listdir(tmp_path) == ["data"]


@pytest.mark.parametrize("existing", [False, True])
def test_failure_midway_leaves_no_output(tmp_path, monkeypatch, existing):
    out = tmp_path / "data"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("old")
    real_make_volume, calls = phantom.make_volume, []

    def failing_make_volume(seed, config):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real_make_volume(seed, config)

    monkeypatch.setattr(phantom, "make_volume", failing_make_volume)
    with pytest.raises(RuntimeError, match="disk on fire"):
        phantom.write_dataset(str(out), 2, num_test=1, config=TINY, overwrite=existing)
    if existing:
        assert os.listdir(out) == ["keep.txt"]
    else:
        assert not out.exists()
    assert os.listdir(tmp_path) == (["data"] if existing else [])


def test_bad_counts_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_patients"):
        phantom.write_dataset(str(tmp_path / "d"), 0, config=TINY)
    with pytest.raises(ValueError, match="num_test"):
        phantom.write_dataset(str(tmp_path / "d"), 1, num_test=-1, config=TINY)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Command line

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-m", "tfdpgan.phantom", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_dataset(tmp_path):
    out = tmp_path / "cli"
    result = run_cli(f"--out_dir={out}", "--num_patients=2", "--num_test=1",
                     "--shape=48,48,16", "--seed=5")
    assert result.returncode == 0, result.stderr
    assert (out / "imagesTr" / "phantom_001.nii.gz").exists()
    assert (out / "masksTs" / "phantom_002.nii.gz").exists()
    img = nib.load(out / "labelsTr" / "phantom_000.nii.gz")
    assert img.shape == (48, 48, 16)
    # Refuses to overwrite, with a clear message.
    again = run_cli(f"--out_dir={out}", "--num_patients=1", "--shape=48,48,16")
    assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.parametrize("flag, message", [("--num_patients=0", "num_patients"),
                                           ("--shape=48,48", "shape")])
def test_cli_rejects_bad_flags(tmp_path, flag, message):
    result = run_cli(f"--out_dir={tmp_path / 'bad'}", flag)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "bad").exists()
