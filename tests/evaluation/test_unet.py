import dataclasses
import inspect

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from eval_fixtures import hard_pairs
from tfdpgan.evaluation import unet

# Tiny, quickly learnable settings: label = bright blobs of smooth noise.
TINY = unet.UNetConfig(base_filters=8, depth=2, learning_rate=1e-2, batch_size=16, epochs=5)


def _blobs(n, patch, seed):
    rng = np.random.default_rng(seed)
    images = ndimage.gaussian_filter(rng.standard_normal((n, patch, patch)), (0, 1.5, 1.5))
    images = (images / np.abs(images).max()).astype(np.float32)
    return images, (images > 0.2).astype(np.uint8)


def test_output_shape_and_range():
    model = unet.build_unet(32, base_filters=4, depth=2)
    prob = model(np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32))
    assert prob.shape == (3, 32, 32, 1)
    assert 0.0 <= float(tf.reduce_min(prob)) and float(tf.reduce_max(prob)) <= 1.0


def test_fully_convolutional():
    model = unet.build_unet(None, base_filters=4, depth=2)
    assert model(np.zeros((1, 48, 64, 1), np.float32)).shape == (1, 48, 64, 1)
    with pytest.raises(ValueError):
        unet.build_unet(30, base_filters=4, depth=2)


def test_parameter_count_of_the_half_unet():
    filters = [32, 64, 128, 256, 512]
    conv3 = lambda c_in, c_out: 9 * c_in * c_out + c_out
    expected = 0
    for c_in, f in zip([1] + filters[:-1], filters):                        # down + bottom
        expected += conv3(c_in, f) + conv3(f, f)
    for level in range(4):                                                  # up, after concat
        f = filters[level]
        expected += conv3(filters[level + 1] + f, f) + conv3(f, f)
    expected += 32 + 1                                                      # 1x1 sigmoid
    assert expected == 7_846_081
    assert unet.build_unet(None, 32, 4).count_params() == expected


def test_dropout_adds_no_parameters():
    assert (unet.build_unet(None, 4, 2, dropout=0.5).count_params()
            == unet.build_unet(None, 4, 2).count_params())


def test_output_bias_sets_the_initial_prediction():
    bias = unet.prior_bias(0.05)
    assert bias == pytest.approx(np.log(0.05 / 0.95))
    model = unet.build_unet(None, 4, 2, output_bias=bias)
    prob = model(np.zeros((1, 16, 16, 1), np.float32)).numpy()
    assert np.allclose(prob, 0.05, atol=1e-6)   # zero image: all activations 0 but the bias
    assert unet.prior_bias(0.0) == unet.prior_bias(1e-3) and unet.prior_bias(0.9) == 0.0
    assert unet.label_prior(np.array([[[0, 1], [0, 0]]], np.uint8)) == 0.25


def test_dice_bce_loss_has_a_gradient_where_soft_dice_flattens():
    label = np.zeros((1, 8, 8, 1), np.float32)
    label[0, 2, 2] = 1.0
    empty = tf.Variable(np.full((1, 8, 8, 1), 1e-4, np.float32))
    grads = {}
    for name, loss in (("dice", unet.soft_dice_loss), ("dice_bce", unet.dice_bce_loss)):
        with tf.GradientTape() as tape:
            value = loss(tf.constant(label), empty)
        grads[name] = float(tf.reduce_max(tf.abs(tape.gradient(value, empty))))
    assert grads["dice_bce"] > 100 * grads["dice"]
    assert float(unet.dice_bce_loss(label, label)) == pytest.approx(0.0, abs=1e-5)


def test_collapse_detector():
    stuck, falling = [1.01, 1.009, 1.008], [1.01, 0.9, 0.8]
    assert unet.is_collapsed(stuck, [0.0, 0.0, 0.0], [0, 0, 0], patience=2)
    assert not unet.is_collapsed(falling, [0.0, 0.0, 0.0], [0, 0, 0], patience=2)  # learning
    assert not unet.is_collapsed(stuck, [0.0, 0.0, 0.1], [0, 0, 0], patience=2)    # val Dice
    assert not unet.is_collapsed(stuck, [0.0, 0.0, 0.0], [0, 0, 5], patience=2)    # predicts
    assert not unet.is_collapsed(stuck[:2], [0.0, 0.0], [0, 0], patience=2)        # too early


@pytest.mark.slow
def test_collapse_is_detected_and_restarted_on_hard_pairs():
    """Very sparse, noisy labels: the first attempt (prior bias: predicts the base rate, i.e.
    nothing) sits at the empty prediction; the detector fires and the restart (class-balanced
    cross-entropy) ends with a model that predicts vessels."""
    train, val = hard_pairs(256, 16, 0), hard_pairs(64, 16, 1)
    config = unet.UNetConfig(base_filters=4, depth=2, learning_rate=3e-3, batch_size=16,
                             epochs=6, steps_per_epoch=10)
    model, history = unet.train_unet(train, val, config)
    first = history["attempts"][0]
    assert first["collapsed"] and max(first["probe_positives"]) == 0
    assert history["restarts"] >= 1 and not history["collapsed"]
    assert history["attempts"][1]["settings"]["learning_rate"] == pytest.approx(1.5e-3)
    assert history["attempts"][1]["settings"]["pos_weight"] > 10
    predicted = model(train[0][:64, ..., None], training=False).numpy() > 0.5
    assert predicted.any()
    assert history["best_val_dice"] > 0.0


def test_soft_dice_loss():
    label = tf.constant(np.eye(8, dtype=np.float32)[None, ..., None])
    assert float(unet.soft_dice_loss(label, label)) == pytest.approx(0.0)
    assert float(unet.soft_dice_loss(label, 1.0 - label)) == pytest.approx(1.0, abs=0.02)


def test_patch_dataset_augmentation_keeps_image_and_label_together():
    images = np.arange(10 * 8 * 8, dtype=np.float32).reshape(10, 8, 8)
    labels = (images % 7 == 0).astype(np.uint8)
    originals = {img.tobytes() for img in images}
    changed = 0
    for image, label in unet.patch_dataset(images, labels, 4, shuffle=True, augment=True):
        image, label = image.numpy()[..., 0], label.numpy()[..., 0]
        np.testing.assert_array_equal(label, image % 7 == 0)
        for img in image:   # a dihedral transform of one original patch
            variants = [np.rot90(v, k) for v in (img, img.T) for k in range(4)]
            assert any(v.tobytes() in originals for v in variants)
            changed += img.tobytes() not in originals
    assert changed > 0
    plain = np.concatenate([b[0].numpy()[..., 0] for b in unet.patch_dataset(images, labels, 4)])
    np.testing.assert_array_equal(plain, images)


def test_intensity_augmentation_is_a_monotone_change_per_patch():
    rng = np.random.RandomState(0)
    images = rng.uniform(-1.0, 1.0, (12, 16, 16)).astype(np.float32)
    images[:, :3] = -1.0                                   # background rows
    labels = (images > 0.6).astype(np.uint8)

    def one_pass(dataset):
        pairs = [(i.numpy()[..., 0], l.numpy()[..., 0]) for i, l in dataset]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    ds = unet.patch_dataset(images, labels, 4, intensity=True, seed=3)
    first, first_labels = one_pass(ds)
    second, _ = one_pass(ds)
    np.testing.assert_array_equal(first_labels, labels)     # labels untouched
    assert first.min() >= -1.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first[:, :3], -1.0)      # background stays background
    assert not np.allclose(first, images, atol=1e-3)       # it does change intensities
    assert not np.allclose(first, second)                  # and differently every pass
    # Each patch follows the stated model u' = s * exp(a x + b y) * u**g on u = (x + 1) / 2:
    # a least-squares fit of log u' on (1, x, y, log u) over unclipped pixels is exact and its
    # coefficients lie in the stated ranges.
    coords = np.arange(16) / 15.0 - 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    for aug, orig in zip(first, images):
        u, v = (orig + 1.0) / 2.0, (aug + 1.0) / 2.0
        keep = (u > 1e-3) & (v > 1e-3) & (v < 1.0 - 1e-6)
        design = np.stack([np.ones(keep.sum()), ys[keep], xs[keep], np.log(u[keep])], 1)
        coef, *_ = np.linalg.lstsq(design, np.log(v[keep]), rcond=None)
        np.testing.assert_allclose(design @ coef, np.log(v[keep]), atol=1e-3)
        assert 1 - unet.INTENSITY_SCALE - 1e-4 <= np.exp(coef[0]) <= 1 + unet.INTENSITY_SCALE + 1e-4
        assert np.all(np.abs(coef[1:3]) <= unet.INTENSITY_RAMP + 1e-4)
        assert 1 / unet.INTENSITY_GAMMA - 1e-4 <= coef[3] <= unet.INTENSITY_GAMMA + 1e-4
    # the same seed gives the same first pass; the unaugmented dataset is the identity
    again, _ = one_pass(unet.patch_dataset(images, labels, 4, intensity=True, seed=3))
    np.testing.assert_allclose(again, first)
    plain, _ = one_pass(unet.patch_dataset(images, labels, 4))
    np.testing.assert_array_equal(plain, images)


def test_train_api_takes_no_test_data():
    assert list(inspect.signature(unet.train_unet).parameters) == ["train", "val", "config"]


def test_learns_toy_task():
    model, history = unet.train_unet(_blobs(256, 16, 0), _blobs(64, 16, 1), TINY)
    assert len(history["val_dice"]) == len(history["loss"]) == TINY.epochs
    assert history["best_val_dice"] > 0.8
    assert history["best_epoch"] == int(np.argmax(history["val_dice"]))
    val = unet.patch_dataset(*_blobs(64, 16, 1), 32)
    assert unet.dataset_dice(model, val) == pytest.approx(history["best_val_dice"])


def test_keeps_the_weights_of_the_best_validation_epoch():
    # Validation labels are inverted: the better the model learns the training task, the worse
    # its validation Dice, so the best epoch is early and not the last one.
    images, labels = _blobs(64, 16, 1)
    val = unet.patch_dataset(images, 1 - labels, 32)
    train = unet.patch_dataset(*_blobs(256, 16, 0), 16, shuffle=True)
    config = dataclasses.replace(TINY, epochs=4, steps_per_epoch=12)
    model, history = unet.train_unet(train, val, config)
    assert history["best_epoch"] == int(np.argmax(history["val_dice"]))
    assert history["val_dice"][-1] < history["best_val_dice"]
    assert unet.dataset_dice(model, val) == pytest.approx(history["best_val_dice"])


def test_grid_selects_by_validation_dice():
    frozen = dataclasses.replace(TINY, learning_rate=0.0, epochs=1, max_restarts=0)
    learning = dataclasses.replace(TINY, epochs=3, augment=True)
    model, config, results = unet.train_unet_grid(_blobs(256, 16, 0), _blobs(64, 16, 1),
                                                  [frozen, learning])
    assert config == learning
    assert [c for c, _ in results] == [frozen, learning]
    assert results[1][1]["best_val_dice"] > results[0][1]["best_val_dice"]


def test_validation_scorer_selects_the_epoch():
    # val may be a scorer (model -> Dice, e.g. of whole validation volumes), called once
    # per epoch; the weights kept are those of the epoch it scored best.
    scores, seen = iter([0.1, 0.9, 0.3]), []

    def scorer(model):
        seen.append([w.copy() for w in model.get_weights()])
        return next(scores)

    config = dataclasses.replace(TINY, epochs=3, steps_per_epoch=2)
    model, history = unet.train_unet(_blobs(64, 16, 0), scorer, config)
    assert history["val_dice"] == [0.1, 0.9, 0.3] and history["best_epoch"] == 1
    assert len(seen) == 3
    for kept, best in zip(model.get_weights(), seen[1]):
        np.testing.assert_array_equal(kept, best)


def test_early_stop_after_patience_epochs_without_a_better_score():
    scores = iter([0.5, 0.4, 0.6, 0.3, 0.2, 0.1, 0.0, 0.0])
    config = dataclasses.replace(TINY, epochs=8, steps_per_epoch=1, early_stop_patience=2)
    _, history = unet.train_unet(_blobs(32, 16, 0), lambda model: next(scores), config)
    assert history["val_dice"] == [0.5, 0.4, 0.6, 0.3, 0.2] and history["best_epoch"] == 2
    perfect = dataclasses.replace(config, early_stop_patience=5)
    _, history = unet.train_unet(_blobs(32, 16, 0), lambda model: 1.0, perfect)
    assert history["val_dice"] == [1.0]
