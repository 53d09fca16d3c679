"""Shared fixtures. TensorFlow import and data generation are slow: build once per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
    from tfdpgan import convert, volumes
    root = str(tmp_path_factory.mktemp("pipeline"))
    for i in range(6):
        write_case(os.path.join(root, "data"), f"p{i}", seed=10 + i)
    config = convert.ConvertConfig(patch_size=16, patches_per_patient=60, val_fraction=0.2,
                                   num_shards=3, seed=1)
    out = os.path.join(root, "rec")
    convert.convert(volumes.find_cases(os.path.join(root, "data")), out, config,
                    progress=lambda *a: None)
    return out
