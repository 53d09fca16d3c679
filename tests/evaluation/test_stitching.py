import numpy as np
import pytest
import tensorflow as tf

from tfdpgan.data import patches, volumes
from tfdpgan.evaluation import stitching


@pytest.mark.parametrize("shape,patch,overlap", [((37, 29), 16, 0.0), ((37, 29), 16, 0.5),
                                                 ((32, 48), 16, 0.0), ((20, 17), 16, 0.75),
                                                 ((16, 16), 16, 0.5)])
def test_tile_origins_cover_every_pixel(shape, patch, overlap):
    origins = stitching.tile_origins(shape, patch, overlap)
    count = np.zeros(shape, int)
    for x, y in origins:
        assert 0 <= x <= shape[0] - patch and 0 <= y <= shape[1] - patch
        count[x:x + patch, y:y + patch] += 1
    assert count.min() >= 1
    assert origins[:, 0].max() == shape[0] - patch and origins[:, 1].max() == shape[1] - patch
    if overlap == 0 and all(n % patch == 0 for n in shape):
        assert count.max() == 1


def test_tile_origins_rejects_bad_arguments():
    with pytest.raises(ValueError):
        stitching.tile_origins((32, 32), 16, 1.0)
    with pytest.raises(ValueError):
        stitching.tile_origins((32, 12), 16, 0.5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_stitch_reproduces_volume_from_its_patches(overlap):
    volume = np.random.default_rng(0).normal(size=(37, 29, 3)).astype(np.float32)
    patch = 16
    xy = stitching.tile_origins(volume.shape[:2], patch, overlap)
    origins = np.array([(x, y, z) for z in range(volume.shape[2]) for x, y in xy])
    tiles, _ = patches.extract(volume, origins + [patch // 2, patch // 2, 0], patch)
    stitched = stitching.stitch(tiles, origins, volume.shape)
    assert stitched.dtype == np.float32
    np.testing.assert_array_equal(stitched, volume)


def _mask(shape):
    mask = np.zeros(shape, np.uint8)
    mask[5:30, 3:20, 1:4] = 1   # slices 0 and 4 hold no brain
    return mask


def test_brain_origins_are_exactly_the_tiles_with_brain():
    mask = _mask((45, 40, 5))
    origins = {tuple(o) for o in stitching.brain_origins(mask, 16, 0.5)}
    for x, y in stitching.tile_origins(mask.shape[:2], 16, 0.5):
        for z in range(mask.shape[2]):
            assert ((x, y, z) in origins) == bool(mask[x:x + 16, y:y + 16, z].any())


def test_predict_volume_identity_returns_image_within_mask():
    shape = (45, 40, 5)
    image = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    mask = _mask(shape)
    sizes = []

    def identity(tiles):
        sizes.append(tiles.shape)
        return tiles

    prob = stitching.predict_volume(identity, image, mask, 16, overlap=0.5, batch_size=7)
    assert prob.dtype == np.float32 and prob.shape == shape
    np.testing.assert_allclose(prob, image * mask, rtol=0, atol=1e-6)
    assert all(s[0] <= 7 and s[1:] == (16, 16, 1) for s in sizes)
    assert sum(s[0] for s in sizes) == len(stitching.brain_origins(mask, 16, 0.5))


@pytest.mark.parametrize("method", ["fixed", "percentile"])
def test_segment_volume_normalises_like_the_training_patches(method):
    shape = (40, 36, 4)
    rng = np.random.default_rng(2)
    mask = _mask(shape)
    image = (rng.uniform(0, 200, shape) * mask).astype(np.float32)
    label = (image > 150).astype(np.uint8)
    volume = volumes.Volume(case=None, image=image, label=label, mask=mask,
                            affine=np.eye(4), sha256={})
    info = {"method": method, "percentile": 99.0 if method == "percentile" else None,
            "fixed_range": [0.0, 100.0] if method == "fixed" else None}
    to_unit = tf.keras.Sequential([tf.keras.Input((None, None, 1)),
                                   tf.keras.layers.Lambda(lambda x: (x + 1.0) / 2.0)])
    prob, binary = stitching.segment_volume(to_unit, volume, info, 16, overlap=0.5,
                                            threshold=0.5)
    norm = patches.fit_normalization(image, mask, method, 99.0, (0.0, 100.0))
    expected = (norm.apply(image) + 1.0) / 2.0 * mask
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    assert binary.dtype == np.uint8
    np.testing.assert_array_equal(binary, expected > 0.5)
