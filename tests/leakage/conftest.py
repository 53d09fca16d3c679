"""Planted populations for the leakage tests: smooth random pairs and members/non-members."""
import numpy as np
import pytest

from tfdpgan.leakage import real


def population_pairs(rng, n, patch=8):
    """Smooth-ish random pairs: image in [-1, 1], label = bright pixels."""
    base = rng.normal(size=(n, patch, patch))
    image = np.tanh(base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)).astype(
        np.float32)
    return image, (image > 0.5).astype(np.uint8)


def real_patches(rng, members=12, nonmembers=8, per_patient=20):
    """RealPatches of ``members`` training and ``nonmembers`` held-out patients."""
    num = members + nonmembers
    images, labels = population_pairs(rng, num * per_patient)
    return real.RealPatches(
        images, labels, np.repeat(np.arange(num), per_patient),
        [f"p{i}" for i in range(num)], np.arange(num) < members,
        ["train"] * members + ["val"] * nonmembers)


@pytest.fixture
def population():
    return population_pairs


@pytest.fixture
def make_real():
    return real_patches
