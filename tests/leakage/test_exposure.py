"""Canary exposure on planted cases: a critic or generator that memorised the canaries is
caught, a random one stays at chance; the DP bound for a canary follows the privacy unit."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import errors
from tfdpgan.leakage import attacks, canaries, exposure

PATCH = 16


def _masks(num=120, seed=0):
    return canaries.candidate_masks(num, PATCH, num_lines=2, line_width=2.0, seed=seed)


def _base(rng, n=24):
    images = np.tanh(rng.normal(size=(n, PATCH, PATCH))).astype(np.float32) * 0.5 - 0.4
    return images, (images > 0.05).astype(np.uint8)


def test_exposure_bits_and_metrics_hand_computed():
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]
    np.testing.assert_allclose(exposure.exposure_bits(scores, [0, 4]),
                               [math.log2(5), 0.0])
    np.testing.assert_allclose(exposure.exposure_bits([1.0, 1.0, 0.0], [0]),
                               [math.log2(3) - math.log2(1.5)])      # a tie: average rank
    m = exposure.exposure_metrics(scores, [1])
    assert m["auc"] == pytest.approx(3 / 4)                        # above 3 of the 4 others
    assert m["num_inserted"] == 1 and m["num_candidates"] == 5
    assert m["mean_exposure_bits"] == pytest.approx(math.log2(5) - 1)
    assert m["max_exposure_bits"] == pytest.approx(math.log2(5))
    assert m["score_inserted_mean"] == 4.0 and m["score_other_mean"] == 2.75
    for inserted in ([], [0, 1, 2, 3, 4]):
        with pytest.raises(errors.SettingsError):
            exposure.exposure_metrics(scores, inserted)


def test_a_memorising_critic_exposes_its_canaries_a_random_one_does_not():
    rng = np.random.default_rng(0)
    masks = _masks()
    inserted = sorted(rng.choice(len(masks), 30, replace=False).tolist())
    memorised = tf.constant(np.stack([masks[i] for i in inserted]).reshape(30, -1),
                            tf.float32)

    def memorising(x, training=False):
        """Scores how completely the label channel covers one of the canary signatures."""
        label = tf.reshape((x[..., 1] + 1.0) / 2.0, [tf.shape(x)[0], -1])
        cover = tf.matmul(label, memorised, transpose_b=True) / tf.reduce_sum(memorised, 1)
        return tf.reduce_max(cover, axis=1, keepdims=True)

    weights = tf.constant(rng.normal(size=(1, PATCH, PATCH, 2)), tf.float32)
    random_critic = lambda x, training=False: tf.reduce_sum(x * weights, [1, 2, 3])[:, None]
    images, labels = _base(rng)
    scores = exposure.critic_candidate_scores(memorising, images, labels, masks, 1.0, 64)
    m = exposure.exposure_metrics(scores, inserted)
    assert m["auc"] == 1.0 and m["tpr_at_fpr"]["0.01"] == 1.0
    assert m["mean_exposure_bits"] > math.log2(len(masks)) - math.log2(30) - 0.01
    scores = exposure.critic_candidate_scores(random_critic, images, labels, masks, 1.0, 64)
    m = exposure.exposure_metrics(scores, inserted)
    assert abs(m["auc"] - 0.5) < 0.2 and m["mean_exposure_bits"] < 3.0


def test_a_generator_that_reproduces_canaries_is_caught():
    rng = np.random.default_rng(1)
    masks = _masks()
    inserted = [3, 40, 77]
    images, labels = _base(rng, 600)
    copies = [canaries.stamp(images[i:i + 10], labels[i:i + 10], masks[c], 0.9)
              for i, c in zip((0, 100, 200), inserted)]
    leaky_images = np.concatenate([images[30:]] + [c[0] for c in copies])
    leaky_labels = np.concatenate([labels[30:]] + [c[1] for c in copies])
    scores, reproduction = exposure.generator_candidate_scores(leaky_images, leaky_labels,
                                                               masks)
    m = exposure.exposure_metrics(scores, inserted)
    assert m["auc"] == 1.0
    assert reproduction[inserted].min() == pytest.approx(10 / 600)
    assert np.delete(reproduction, inserted).max() < 10 / 600
    fresh = exposure.generator_candidate_scores(images, labels, masks)[0]
    inserted = sorted(rng.choice(len(masks), 30, replace=False).tolist())
    assert abs(exposure.exposure_metrics(fresh, inserted)["auc"] - 0.5) < 0.2
    match = exposure.signature_match(leaky_images[-1:], leaky_labels[-1:], masks)
    assert match.shape == (1, len(masks)) and match[0, 77] == 1.0


def test_canary_bounds_follow_the_privacy_unit():
    section = {"num_patches": {"a": 40, "b": 60}}
    card = {"private": True, "epsilon": 1.0, "delta": 1e-5, "privacy_unit": "patient"}
    b = exposure.canary_bounds(card, section)
    assert b["group_size"] == 1
    assert b["tpr"]["0.01"] == pytest.approx(attacks.dp_tpr_bound(1.0, 1e-5, 0.01))
    b = exposure.canary_bounds(dict(card, privacy_unit="patch"), section)
    assert b["group_size"] == 60 and b["tpr"] == {"0.01": 1.0, "0.001": 1.0}
    assert exposure.canary_bounds({"private": False, "epsilon": None}, section) is None


def test_canary_exposure_section(patch_records, tmp_path):
    info = canaries.make_canary_dataset(
        patch_records, str(tmp_path / "rec"),
        canaries.CanaryConfig(num_canaries=2, num_candidates=40, seed=1))
    assert exposure.canary_exposure(dict(info, canaries=None), {}, [], [], None, [], []) is None
    section = info[canaries.CANARIES_KEY]
    masks = canaries.canary_masks(section)
    rng = np.random.default_rng(2)
    images, labels = _base(rng, 200)
    syn = [canaries.stamp(images[:5], labels[:5], masks[c], 1.0) for c in section["inserted"]]
    syn_images = np.concatenate([images[5:]] + [s[0] for s in syn])
    syn_labels = np.concatenate([labels[5:]] + [s[1] for s in syn])
    weights = tf.constant(rng.normal(size=(1, PATCH, PATCH, 2)), tf.float32)
    critic_fn = lambda x, training=False: tf.reduce_sum(x * weights, [1, 2, 3])[:, None]
    card = {"private": True, "epsilon": 3.0, "delta": 1e-5, "privacy_unit": "patch"}
    out = exposure.canary_exposure(info, card, images, labels, critic_fn, syn_images,
                                   syn_labels, num_base=16, seed=0)
    assert out["inserted"] == section["inserted"] and out["num_candidates"] == 40
    assert out["base_patches"] == 16 and out["num_synthetic"] == len(syn_images)
    assert out["dp_bound"]["group_size"] == max(section["num_patches"].values())
    assert out["generator"]["auc"] == 1.0 and out["generator"]["reproduction_other"] == 0.0
    assert out["generator"]["reproduction_inserted"] == pytest.approx(5 / len(syn_images))
    assert 0.0 <= out["critic"]["auc"] <= 1.0 and out["critic"]["dp_bound"] == out["dp_bound"]
