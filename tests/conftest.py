"""Shared fixtures. TensorFlow import and data generation are slow: build once per session.

Tests never write the user's cache: TFDPGAN_CACHE points at a session temp folder. The FID
weights (90 MB download) are kept once per machine in a dedicated folder instead
(TFDPGAN_FID_CACHE, default ~/.cache/tfdpgan-test-fid).
"""
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfdpgan  # noqa: E402,F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow loads)
from tfdpgan import distribute  # noqa: E402
distribute.split_cpu(2)   # two logical CPU devices, for MirroredStrategy in tests/distribute
os.environ["TFDPGAN_CACHE"] = tempfile.mkdtemp(prefix="tfdpgan-test-cache-")
os.environ.setdefault("TFDPGAN_FID_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "tfdpgan-test-fid"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SPACING = (0.5, 0.5, 0.7)


def write_case(root, pid, split="Tr", shape=(40, 40, 12), seed=0, with_mask=True,
               image=None, label=None, mask=None, affine=None):
    """Write a small labelled case (tube-like vessels on noisy tissue) into ``root``."""
    rng = np.random.default_rng(seed)
    if label is None:
        label = np.zeros(shape, np.uint8)
        for _ in range(3):
            x, y = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
            label[x - 1:x + 2, y - 1:y + 2, :] = 1
            label[x, :, shape[2] // 2] = 1
    if mask is None:
        mask = np.zeros(shape, np.uint8)
        mask[2:-2, 2:-2, :] = 1
    if image is None:
        image = (100 + 20 * rng.standard_normal(shape) + 600 * label).astype(np.float32)
        image *= mask
    if affine is None:
        affine = np.diag([*SPACING, 1.0])
    paths = {}
    for role, data in (("images", image), ("labels", label), ("masks", mask)):
        if role == "masks" and not with_mask:
            continue
        folder = os.path.join(root, f"{role}{split}")
        os.makedirs(folder, exist_ok=True)
        paths[role] = os.path.join(folder, f"{pid}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(data), affine), paths[role])
    return paths


@pytest.fixture
def small_dataset_dir(tmp_path):
    """Four training and one test patient in nnU-Net layout."""
    root = str(tmp_path / "data")
    for i in range(4):
        write_case(root, f"case{i}", seed=i)
    write_case(root, "test0", split="Ts", seed=99)
    return root


@pytest.fixture(scope="session")
def patch_records(tmp_path_factory):
    """A converted dataset (patch 16, 60 patches for each of 6 patients; 5 train, 1 val)."""
    from tfdpgan.data import convert, volumes
    root = str(tmp_path_factory.mktemp("pipeline"))
    for i in range(6):
        write_case(os.path.join(root, "data"), f"p{i}", seed=10 + i)
    config = convert.ConvertConfig(patch_size=16, patches_per_patient=60, val_fraction=0.2,
                                   num_shards=3, seed=1)
    out = os.path.join(root, "rec")
    convert.convert(volumes.find_cases(os.path.join(root, "data")), out, config,
                    progress=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A converted data set with a test split: 4 training patients (3 train + 1 val after the
    split) and 2 test patients, patch 16, 40 patches each. Returns (nifti_dir, records_dir)."""
    from tfdpgan.data import convert, volumes
    root = tmp_path_factory.mktemp("tiny_dataset")
    nifti = str(root / "nifti")
    for i in range(4):
        write_case(nifti, f"tr{i}", seed=30 + i)
    for i in range(2):
        write_case(nifti, f"ts{i}", split="Ts", seed=60 + i)
    rec = str(root / "records")
    config = convert.ConvertConfig(patch_size=16, patches_per_patient=40, val_fraction=0.25,
                                   num_shards=2, seed=0)
    convert.convert(volumes.find_cases(nifti, "Tr"), rec, config,
                    test_cases=volumes.find_cases(nifti, "Ts"), progress=lambda *a: None)
    return nifti, rec


@pytest.fixture(scope="session")
def tiny_workdir(tiny_dataset, tmp_path_factory):
    """A finished tiny DP run (ε = 3, patch unit) on ``tiny_dataset``: card, checkpoints,
    exported generator. Read-only for tests: copy it before changing anything."""
    from tiny import TINY
    from tfdpgan.gan import run, training
    workdir = str(tmp_path_factory.mktemp("tiny_workdir") / "run")
    training.train(run.TrainConfig(workdir=workdir, data=tiny_dataset[1], epsilon=3.0,
                                   **dict(TINY, critic_steps=8)),
                   flags_text="--epsilon=3\n")
    return workdir
