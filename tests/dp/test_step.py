"""The one private step: its two backends (fast ghost clipping vs TF Privacy's own DP Keras
optimizer) give the same update with zero noise and the same noise scale."""
import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import errors
from tfdpgan.dp import step
from tfdpgan.gan import losses, models, wgan

PATCH = 8


def _critic(seed=0, width=4, patch=PATCH):
    tf.keras.utils.set_random_seed(seed)
    return models.build_critic(patch_size=patch, base_filters=width)


def _rows(n, seed, patch=PATCH):
    rng = np.random.default_rng(seed)
    real = tf.constant(rng.uniform(-1, 1, (n, patch, patch, 2)), tf.float32)
    fake = tf.constant(rng.uniform(-1, 1, (n, patch, patch, 2)), tf.float32)
    return real, fake


def _weighted_loss(critic, inputs):
    real, fake, weight = inputs
    return weight * losses.wgan_critic(critic, (real, fake))


def _update(backend, inputs, *, group_size, clip, noise=0.0, expected=7.0, seed=0, width=4):
    """Weights before minus after one SGD(lr=1) private step."""
    critic = _critic(seed, width, patch=int(inputs[0].shape[1]))
    # SGD(lr=1) so the applied update is the privatised gradient itself
    optimizer = (tf.keras.optimizers.legacy.SGD(1.0) if backend == "fast" else
                 step.tf_privacy_optimizer_class(tf.keras.optimizers.legacy.SGD)(
                     l2_norm_clip=clip, noise_multiplier=noise, num_microbatches=None,
                     learning_rate=1.0))
    private = step.PrivateStep(critic, optimizer, _weighted_loss, l2_norm_clip=clip,
                               noise_multiplier=noise, expected_batch_size=expected,
                               group_size=group_size, backend=backend)
    before = [v.numpy().copy() for v in critic.trainable_variables]
    tf.function(private)(inputs)
    return [b - v.numpy() for b, v in zip(before, critic.trainable_variables)]


@pytest.mark.parametrize("group_size,clip", [(1, 1e-3), (1, 10.0), (3, 1e-3), (3, 10.0)])
def test_backends_agree_with_zero_noise(group_size, clip):
    real, fake = _rows(6, seed=group_size)
    weight = tf.constant([1.0 / group_size] * 5 + [0.0])   # last row: padding
    inputs = (real, fake, weight)
    fast = _update("fast", inputs, group_size=group_size, clip=clip)
    reference = _update("tf_privacy", inputs, group_size=group_size, clip=clip)
    scale = max(np.abs(r).max() for r in reference)
    assert scale > 0
    for a, b in zip(fast, reference):
        np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=1e-3)


@pytest.mark.parametrize("backend", step.BACKENDS)
def test_noise_std_is_sigma_clip_over_expected_batch(backend):
    """With a tiny clip the update is (almost) pure noise: std σC/E per coordinate."""
    clip, noise, expected = 1e-6, 2.0, 4.0
    real, fake = _rows(4, seed=9, patch=16)
    update = _update(backend, (real, fake, tf.ones([4])), group_size=1, clip=clip,
                     noise=noise, expected=expected, width=16)
    flat = np.concatenate([u.ravel() for u in update])
    assert flat.size > 5000
    assert flat.std() == pytest.approx(noise * clip / expected, rel=0.05)


def test_empty_batch_still_releases_noise():
    real, fake = _rows(0, seed=1, patch=16)
    for backend in step.BACKENDS:
        update = _update(backend, (real, fake, tf.ones([0])), group_size=1, clip=1.0,
                         noise=1.0, expected=2.0, width=16)
        flat = np.concatenate([u.ravel() for u in update])
        assert flat.std() == pytest.approx(0.5, rel=0.1), backend


def test_bad_settings_are_refused():
    critic = _critic()
    sgd = tf.keras.optimizers.legacy.SGD(1.0)
    with pytest.raises(errors.SettingsError, match="l2_norm_clip"):
        step.PrivateStep(critic, sgd, _weighted_loss, l2_norm_clip=0.0, noise_multiplier=1.0,
                         expected_batch_size=4)
    with pytest.raises(errors.SettingsError, match="TF Privacy"):
        step.PrivateStep(critic, sgd, _weighted_loss, l2_norm_clip=1.0, noise_multiplier=1.0,
                         expected_batch_size=4, backend="tf_privacy")
    with pytest.raises(errors.SettingsError, match="backend"):
        step.PrivateStep(critic, sgd, _weighted_loss, l2_norm_clip=1.0, noise_multiplier=1.0,
                         expected_batch_size=4, backend="opacus")


def test_wgan_critic_step_runs_on_the_tf_privacy_backend():
    """THE training critic step with TF Privacy's optimizer (it exposes no per-record norms;
    benchmarks/dp_step.py times this path)."""
    config = wgan.WGANConfig(latent_dim=8, dp_backend="tf_privacy", expected_batch_size=4.0,
                             l2_norm_clip=0.1, noise_multiplier=1.0)
    gan = wgan.WGAN(models.build_generator(8, 16, 4), models.build_critic(16, 4), config)
    stats = gan.critic_step(tf.random.uniform([5, 16, 16, 2], -1, 1))
    assert int(stats["batch_size"]) == 5
    assert np.isfinite(float(stats["update_norm"])) and float(stats["update_norm"]) > 0


def test_private_step_leaves_frozen_critic_stages_untouched():
    """--critic_frozen_stages: the DP critic step (noise included) changes only the trainable
    layers; the frozen prior layers stay bit-identical, and the weight clip does not touch
    them either."""
    config = wgan.WGANConfig(latent_dim=8, expected_batch_size=4.0, l2_norm_clip=0.1,
                             noise_multiplier=1.0, critic_lr=0.1)
    critic = models.build_critic(16, 4)
    rng = np.random.default_rng(0)
    for v in critic.weights:
        v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))   # beyond the 0.01 clip
    models.freeze_critic_stages(critic, 1)
    frozen = [v for v in critic.weights if not any(v is t for t in critic.trainable_variables)]
    before = [v.numpy() for v in frozen]
    trainable_before = [v.numpy() for v in critic.trainable_variables]
    gan = wgan.WGAN(models.build_generator(8, 16, 4), critic, config, seed=0)
    gan.critic_step(tf.random.uniform([5, 16, 16, 2], -1, 1))
    assert frozen
    for b, v in zip(before, frozen):
        np.testing.assert_array_equal(b, v.numpy())
    assert all(np.any(b != v.numpy()) for b, v in zip(trainable_before,
                                                         critic.trainable_variables))
