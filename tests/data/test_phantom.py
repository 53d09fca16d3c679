"""Tests of the TOF-MRA phantom: anatomy, labels, appearance, presets, determinism, dataset
folder and command line. Volumes are small (coarse grids over the full field of view)."""
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

from tfdpgan import errors
from tfdpgan.data import phantom
from tfdpgan.data.phantom import anatomy, vessels
from tfdpgan.evaluation import seg_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT = phantom.PRESETS["default"]
SMALL = phantom.preset("small")
# The default protocol on a 1.2 x 1.2 x 1.6 mm grid: enough to see the cortical branches.
MEDIUM = phantom.with_shape(DEFAULT, (140, 168, 52))
# For folder/IO tests only: a tiny grid and a small tree keep them fast.
TINY = dataclasses.replace(phantom.with_shape(DEFAULT, (32, 40, 16)), max_branches=20,
                           max_veins=5)


@pytest.fixture(scope="module")
def small():
    return phantom.make_volume(1, SMALL)


@pytest.fixture(scope="module")
def medium():
    return phantom.make_volume(2, MEDIUM)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("parent") / "data"
    calls = []
    ids = phantom.write_dataset(str(out), 2, num_test=1, seed=3, config=TINY,
                                progress=lambda done, total: calls.append((done, total)))
    return out, ids, calls


def tree(seed, config=DEFAULT):
    """The artery tree of one patient (as make_volume builds it)."""
    rng = np.random.default_rng(seed)
    head = anatomy.make_head(rng, config)
    return vessels.build_tree(rng, config, head.origin, -40.0,
                              lambda p: anatomy.point_depth(head, p),
                              lambda p, t: anatomy.cortex_point(head, p, t))


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
    assert np.all(np.isfinite(small.image)) and np.all(small.image >= 0)


def test_head_sized_field_of_view_and_axial_slab():
    fov = np.asarray(DEFAULT.fov_mm)
    assert np.all((150 <= fov[:2]) & (fov[:2] <= 240))
    assert 80 <= fov[2] <= 113
    assert max(DEFAULT.spacing[:2]) <= 0.7 and DEFAULT.spacing[2] <= 1.0


def test_whole_head_in_the_image_brain_mask_inside_it(small):
    """Not skull-stripped: scalp, skull and air are in the image; the mask is the brain."""
    inside, outside = small.mask == 1, small.mask == 0
    assert not np.any(small.label & (1 - small.mask))
    assert 0.25 < inside.mean() < 0.7
    assert not small.mask[[0, -1], :, :].any() and not small.mask[:, [0, -1], :].any()
    tissue = np.median(small.image[inside & (small.label == 0)])
    # Air in the corners holds only the Rician noise floor; the scalp fat is bright.
    corner = small.image[:6, :6, :]
    assert corner.mean() < 0.2 * tissue
    head = ndimage.binary_dilation(inside, iterations=6) & outside
    assert np.percentile(small.image[head], 90) > 1.2 * tissue


def test_label_is_visible_bright_and_aligned(medium):
    label, mask = medium.label == 1, medium.mask == 1
    tissue = medium.image[mask & ~label]
    median = np.median(tissue)
    assert label.sum() > 500
    # Inflow-enhanced arteries: brightest vessel voxels 6-12x the tissue median.
    assert 6.0 < np.percentile(medium.image[label], 99.9) / median < 13.0
    # Only visible vessels are labelled: few label voxels are as dark as bright tissue.
    assert np.mean(medium.image[label] <= np.percentile(tissue, 95)) < 0.1
    shell = ndimage.binary_dilation(label, iterations=2) & ~label & mask
    assert medium.image[label].mean() > 2.0 * medium.image[shell].mean()
    shifted = np.roll(label, 4, axis=0) & mask
    assert medium.image[label].mean() > 2.0 * medium.image[shifted].mean()


def test_label_has_no_specks(medium):
    components, n = ndimage.label(medium.label, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    assert n >= 1 and sizes.min() >= MEDIUM.min_component_voxels
    # Mostly one connected tree, not confetti.
    assert sizes.max() > 0.3 * sizes.sum()


def test_label_is_the_noise_free_visibility_rule():
    """The label depends on noise only through the visibility threshold: a noisier scan of
    the same patient labels a subset (fewer faint vessels), never other voxels."""
    clean = phantom.make_volume(5, SMALL)
    noisy = phantom.make_volume(5, dataclasses.replace(SMALL, snr=4.0))
    assert np.all(noisy.label <= clean.label)
    assert noisy.label.sum() < clean.label.sum()
    dim = phantom.make_volume(5, dataclasses.replace(SMALL, vessel_contrast=4.0))
    assert dim.label.sum() < clean.label.sum()


def test_speck_rule_never_empties_a_label():
    from tfdpgan.data.phantom import labels
    specks = np.zeros((20, 20, 20), bool)
    specks[2, 2, 2:5] = specks[10, 10, 10:14] = True
    kept = labels.remove_specks(specks, 10)
    assert kept.sum() == 4 and kept[10, 10, 10:14].all()
    big = specks.copy()
    big[15, 5:17, 15] = True
    assert labels.remove_specks(big, 10).sum() == 12


def test_dark_csf_and_grey_white_texture(medium):
    mask = (medium.mask == 1) & (medium.label == 0)
    median = np.median(medium.image[mask])
    values = medium.image[mask]
    assert np.percentile(values, 3) < 0.6 * median   # CSF (cisterns, sulci, ventricles)
    core = values[(values > 0.75 * median) & (values < 1.3 * median)]
    assert core.size > 0.5 * values.size and core.std() > 0.05 * median


def test_not_trivially_segmentable_by_intensity(medium):
    _, dice = seg_metrics.best_threshold_dice(medium.image, medium.label, medium.mask)
    assert 0.3 < dice < 0.9


def test_unlabelled_veins_and_sinuses_are_bright_false_positives():
    plain_cfg = dataclasses.replace(SMALL, sinus_contrast=0.0, vein_contrast=0.0)
    full, plain = phantom.make_volume(3, SMALL), phantom.make_volume(3, plain_cfg)

    def false_bright(v):
        inside = v.mask == 1
        cut = np.percentile(v.image[inside], 99.5)
        return int((inside & (v.label == 0) & (v.image > cut)).sum())
    assert false_bright(full) > 1.2 * false_bright(plain)


# ---------------------------------------------------------------------------------------------
# Anatomy

def test_circle_of_willis_segments_and_physiological_radii():
    named = {}
    for v in tree(0):
        named.setdefault(v.name, []).append(v)
    for name in ("ICA", "BA", "VA", "M1", "M2", "A1", "A2", "P1", "P2", "ACoA", "SCA"):
        assert name in named, name
    top = {name: max(float(v.radii.max()) for v in vs) for name, vs in named.items()}
    assert 2.0 <= top["ICA"] <= 2.6
    assert 1.2 <= top["BA"] <= 1.9 and 1.2 <= top["M1"] <= 1.8
    assert 0.7 <= top["A1"] <= 1.2 and 0.3 <= top["P1"] <= 1.2
    cortical = [v for v in tree(0) if not v.name]
    assert len(cortical) > 200
    assert min(float(v.radii.min()) for v in cortical) < 0.3     # tapering to sub-millimetre


def test_normal_variants_occur_per_patient():
    draws = [vessels.variants(np.random.default_rng(s)) for s in range(300)]
    pcoa = np.array([d["pcoa_L"] for d in draws])
    assert 0.1 < np.mean(pcoa == 0) < 0.35                       # absent PCoA
    assert 0.05 < np.mean(pcoa > 1.5) < 0.2                      # fetal PCA
    assert np.all((pcoa > 1.5) == (np.array([d["p1_L"] for d in draws]) < 1))
    assert 0.03 < np.mean([min(d["a1_L"], d["a1_R"]) < 1 for d in draws]) < 0.2
    assert 0.05 < np.mean([d["acoa"] < 1 for d in draws]) < 0.3
    # ... and reach the tree: fetal PCA (PCoA wider than P1) in some patients, hypoplastic
    # PCoA (under half the P1) in others.
    ratios = []
    for s in range(8):
        radius = {}
        for v in tree(s):
            radius.setdefault(v.name, []).append(float(v.radii.max()))
        ratios.append(max(radius.get("PCoA", [0.0])) / min(radius["P1"]))
        ratios.append(min(radius.get("PCoA", [0.0])) / max(radius["P1"]))
    assert max(ratios) > 1.5 and min(ratios) < 0.5


def test_rare_findings_stenosis_and_aneurysm():
    sure = dataclasses.replace(DEFAULT, stenosis_prob=1.0, aneurysm_prob=1.0)
    found = tree(4, sure)
    assert any(v.name == "aneurysm" and v.radii.min() >= 1.5 for v in found)
    large = [v for v in found if v.name in ("ICA", "M1", "BA", "VA")]
    assert any(v.radii.min() < 0.6 * v.radii.max() and v.radii[-1] > 0.6 * v.radii.max()
               for v in large)
    never = dataclasses.replace(DEFAULT, stenosis_prob=0.0, aneurysm_prob=0.0)
    assert not any(v.name == "aneurysm" for v in tree(4, never))


# ---------------------------------------------------------------------------------------------
# Presets and configuration

def test_presets_and_regridding():
    assert set(phantom.PRESETS) >= {"default", "site_b", "small"}
    site = phantom.preset("site_b")
    assert site.field_strength != DEFAULT.field_strength and site.snr < DEFAULT.snr
    assert site.spacing != DEFAULT.spacing and site.cow_level != DEFAULT.cow_level
    coarse = phantom.with_shape(DEFAULT, (70, 84, 26))
    np.testing.assert_allclose(coarse.fov_mm, DEFAULT.fov_mm, rtol=1e-5)
    with pytest.raises(errors.SettingsError, match="site_b"):
        phantom.preset("nope")


def test_shifted_site_looks_different():
    a = phantom.make_volume(0, SMALL)
    b = phantom.make_volume(0, dataclasses.replace(
        phantom.with_shape(phantom.preset("site_b"), SMALL.shape), max_branches=300))

    def stats(v):
        inside = (v.mask == 1) & (v.label == 0)
        median = np.median(v.image[inside])
        return np.percentile(v.image[v.label == 1], 99) / median, v.image[:6, :6].mean() / median
    (contrast_a, noise_a), (contrast_b, noise_b) = stats(a), stats(b)
    assert contrast_b < contrast_a and noise_b > noise_a


def test_affine_encodes_spacing_and_centres_the_volume():
    config = phantom.PhantomConfig(shape=(40, 30, 20), spacing=(0.4, 0.5, 0.8))
    affine = phantom.affine_for(config)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), config.spacing)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    centre = affine @ np.append((np.asarray(config.shape) - 1) / 2.0, 1.0)
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_bad_config_is_rejected():
    with pytest.raises(errors.SettingsError, match="shape"):
        phantom.PhantomConfig(shape=(4, 64, 24))
    with pytest.raises(ValueError, match="spacing"):
        phantom.PhantomConfig(spacing=(0.5, 0.0, 0.7))
    with pytest.raises(ValueError, match="sinus_contrast"):
        phantom.PhantomConfig(sinus_contrast=-1.0)
    with pytest.raises(ValueError, match="cow_level"):
        phantom.PhantomConfig(cow_level=1.5)


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
    assert description["phantom"]["config"]["shape"] == list(TINY.shape)
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
    np.testing.assert_allclose(loaded["image"].affine, phantom.affine_for(TINY), atol=1e-6)


def test_same_seed_gives_byte_identical_files_whatever_the_workers(dataset, tmp_path):
    out, _, _ = dataset
    again = tmp_path / "again"
    phantom.write_dataset(str(again), 2, num_test=1, seed=3, config=TINY, workers=2)
    for rel in ("imagesTr/phantom_001.nii.gz", "labelsTs/phantom_002.nii.gz",
                "masksTr/phantom_000.nii.gz"):
        assert (again / rel).read_bytes() == (out / rel).read_bytes()
    other = tmp_path / "other"
    phantom.write_dataset(str(other), 1, num_test=0, seed=4, config=TINY)
    assert ((other / "imagesTr/phantom_000.nii.gz").read_bytes()
            != (out / "imagesTr/phantom_000.nii.gz").read_bytes())


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(errors.OutputExistsError, match="already exists"):
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
    real_make_volume, calls = phantom.volume.make_volume, []

    def failing_make_volume(seed, config):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real_make_volume(seed, config)

    monkeypatch.setattr(phantom.volume, "make_volume", failing_make_volume)
    with pytest.raises(RuntimeError, match="disk on fire"):
        phantom.write_dataset(str(out), 2, num_test=1, config=TINY, overwrite=existing)
    if existing:
        assert os.listdir(out) == ["keep.txt"]
    else:
        assert not out.exists()
    assert os.listdir(tmp_path) == (["data"] if existing else [])


def test_bad_counts_are_rejected(tmp_path):
    with pytest.raises(errors.SettingsError, match="num_patients"):
        phantom.write_dataset(str(tmp_path / "d"), 0, config=TINY)
    with pytest.raises(ValueError, match="num_test"):
        phantom.write_dataset(str(tmp_path / "d"), 1, num_test=-1, config=TINY)
    assert os.listdir(tmp_path) == []


def test_default_data_config_follows_the_preset():
    from tfdpgan.data import default_data
    assert default_data.PhantomDataConfig().phantom_config() == DEFAULT
    site = default_data.PhantomDataConfig(preset="site_b")
    assert site.phantom_config() == phantom.preset("site_b")
    assert site.key() != default_data.PhantomDataConfig().key()
    coarse = default_data.PhantomDataConfig(shape=(70, 84, 26)).phantom_config()
    np.testing.assert_allclose(coarse.fov_mm, DEFAULT.fov_mm, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Command line

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-m", "tfdpgan.phantom", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def test_cli_writes_dataset(tmp_path):
    out = tmp_path / "cli"
    result = run_cli(f"--out_dir={out}", "--num_patients=2", "--num_test=1", "--preset=site_b",
                     "--shape=40,48,16", "--seed=5")
    assert result.returncode == 0, result.stderr
    assert (out / "imagesTr" / "phantom_001.nii.gz").exists()
    assert (out / "masksTs" / "phantom_002.nii.gz").exists()
    img = nib.load(out / "labelsTr" / "phantom_000.nii.gz")
    assert img.shape == (40, 48, 16)
    site = phantom.preset("site_b")
    np.testing.assert_allclose(np.asarray(img.header.get_zooms()) * img.shape, site.fov_mm,
                               rtol=1e-4)
    description = json.loads((out / "dataset.json").read_text())
    assert description["phantom"]["preset"] == "site_b"
    again = run_cli(f"--out_dir={out}", "--num_patients=1", "--shape=40,48,16")
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("flag, message", [("--num_patients=0", "num_patients"),
                                           ("--shape=48,48", "shape"),
                                           ("--preset=mars", "preset")])
def test_cli_rejects_bad_flags(tmp_path, flag, message):
    result = run_cli(f"--out_dir={tmp_path / 'bad'}", flag)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "bad").exists()
