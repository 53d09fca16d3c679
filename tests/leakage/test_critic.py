"""The white-box critic scores, raw and calibrated by the dihedral transforms."""
import numpy as np
import tensorflow as tf

from tfdpgan.leakage import attacks, critic


def test_critic_attack_detects_a_memorising_critic(make_real):
    """A 'critic' that scores how close a pair is to a member patch."""
    rng = np.random.default_rng(4)
    real = make_real(rng)
    pairs = np.stack([real.images, 2.0 * real.labels - 1.0], -1)   # as the critic sees them
    memorised = tf.constant(pairs[real.member].reshape(int(real.member.sum()), -1), tf.float32)

    def memorising(x, training=False):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        d2 = tf.reduce_sum(tf.square(flat[:, None] - memorised[None]), -1)
        return -tf.reduce_min(d2, axis=1, keepdims=True)

    raw, cal = critic.critic_scores(memorising, real.images, real.labels, batch_size=64)
    assert attacks.roc_auc(raw[real.member], raw[~real.member]) == 1.0
    assert attacks.roc_auc(cal[real.member], cal[~real.member]) > 0.95


def test_critic_calibration_removes_orientation_free_content(population):
    rng = np.random.default_rng(5)
    images, labels = population(rng, 10)
    weights = tf.constant(rng.normal(size=(1, 8, 8, 2)), tf.float32)
    total = lambda x, training=False: tf.reduce_sum(x, axis=[1, 2, 3])[:, None]
    linear = lambda x, training=False: tf.reduce_sum(x * weights, axis=[1, 2, 3])[:, None]
    raw, cal = critic.critic_scores(total, images, labels, batch_size=4)
    pairs = np.stack([images, 2.0 * labels - 1.0], -1)
    np.testing.assert_allclose(raw, pairs.sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(cal, 0.0, atol=1e-4)   # a sum ignores orientation
    raw, cal = critic.critic_scores(linear, images, labels, batch_size=4)
    w = weights.numpy()[0]
    views = [pairs, pairs[:, ::-1], pairs[:, :, ::-1], pairs[:, ::-1, ::-1]]
    views += [v.transpose(0, 2, 1, 3) for v in views]
    scores = np.stack([(v * w).sum(axis=(1, 2, 3)) for v in views])
    np.testing.assert_allclose(raw, scores[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cal, scores[0] - scores[1:].mean(0), rtol=1e-4, atol=1e-4)
    assert critic.critic_scores(linear, images, labels, calibrate=False)[1] is None
