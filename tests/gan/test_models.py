"""Generator and critic: shapes, ranges, no cross-example layers, sizes."""
import numpy as np
import pytest
import tensorflow as tf

from tfdpgan.dp import clipping
from tfdpgan.gan import models


@pytest.fixture(scope="module")
def small_models():
    tf.random.set_seed(0)
    return (models.build_generator(latent_dim=8, patch_size=32, base_filters=4),
            models.build_critic(patch_size=32, base_filters=4))


def test_generator_output_shape_and_range(small_models):
    generator, _ = small_models
    # A large latent saturates tanh: outputs must still be within [-1, 1].
    patches = generator(100.0 * tf.random.normal([3, 8]), training=True)
    assert patches.shape == (3, 32, 32, 2)
    assert np.all(np.abs(patches.numpy()) <= 1.0)


def test_resize_generator_has_no_transposed_convolutions():
    generator = models.build_generator(latent_dim=8, patch_size=32, base_filters=4,
                                       upsample="resize")
    patches = generator(100.0 * tf.random.normal([3, 8]), training=True)
    assert patches.shape == (3, 32, 32, 2)
    assert np.all(np.abs(patches.numpy()) <= 1.0)
    layers = generator.layers
    assert not any(isinstance(layer, tf.keras.layers.Conv2DTranspose) for layer in layers)
    # 3 stages: one nearest-neighbour doubling and one 3x3 convolution each
    assert sum(isinstance(layer, tf.keras.layers.UpSampling2D) for layer in layers) == 3
    assert [layer.kernel_size for layer in layers
            if isinstance(layer, tf.keras.layers.Conv2D)] == [(3, 3)] * 3
    with pytest.raises(ValueError, match="unknown generator upsampling"):
        models.build_generator(latent_dim=8, patch_size=32, upsample="bilinear")


def test_critic_output_shape(small_models):
    _, critic = small_models
    assert critic(tf.zeros([3, 32, 32, 2])).shape == (3, 1)


def test_critic_is_per_example_with_pre_activation_outputs(small_models):
    _, critic = small_models
    clipping.check_per_example(critic)
    assert not any(isinstance(layer, tf.keras.layers.BatchNormalization)
                   for layer in critic.submodules)
    weighted = [layer for layer in critic.layers
                if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense))]
    assert weighted and all(layer.activation is tf.keras.activations.linear
                            for layer in weighted)
    assert any(isinstance(layer, tf.keras.layers.GroupNormalization)
               for layer in critic.layers)


def test_critic_scores_do_not_mix_examples(small_models):
    _, critic = small_models
    batch = tf.random.normal([4, 32, 32, 2])
    alone = critic(batch[:1], training=True)
    together = critic(batch, training=True)[:1]
    np.testing.assert_allclose(alone.numpy(), together.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch_size,stages,seed", [
    (32, 3, 4), (48, 4, 3), (64, 4, 4), (96, 5, 3)])
def test_patch_sizes(patch_size, stages, seed):
    assert models.default_num_stages(patch_size) == stages
    generator = models.build_generator(latent_dim=4, patch_size=patch_size,
                                       base_filters=2)
    critic = models.build_critic(patch_size=patch_size, base_filters=2)
    assert generator.output_shape == (None, patch_size, patch_size, 2)
    assert critic.output_shape == (None, 1)
    assert generator.get_layer(index=2).output_shape == (
        None, seed, seed, 2 * 2**(stages - 1))


def test_invalid_stages():
    with pytest.raises(ValueError, match="cannot be halved"):
        models.build_critic(patch_size=20, num_stages=3)


def test_paper_parameter_counts():
    # Build and count only: no forward pass at paper size.
    generator = models.build_generator(latent_dim=128, patch_size=96,
                                       base_filters=96)
    critic = models.build_critic(patch_size=96, base_filters=96)
    assert critic.count_params() == pytest.approx(25e6, rel=0.02)
    assert generator.count_params() == pytest.approx(28e6, rel=0.05)


def test_freeze_critic_stages_counts_what_is_left():
    """0 stages: everything trains; k stages: each frozen conv takes its GroupNorm along;
    all stages: only the dense head is left; more stages than the critic has: refused."""
    def critic():
        return models.build_critic(patch_size=32, base_filters=4)
    total = critic().count_params()
    left = [models.freeze_critic_stages(critic(), k) for k in range(4)]
    assert left[0] == total and left == sorted(left, reverse=True) and len(set(left)) == 4
    assert left[3] == 4 * 4 * 16 + 1                    # Dense(1) on the 4x4x16 map
    frozen = critic()
    models.freeze_critic_stages(frozen, 2)
    norms = [layer for layer in frozen.layers
             if isinstance(layer, tf.keras.layers.GroupNormalization)]
    assert [layer.trainable for layer in norms] == [False, True]
    with pytest.raises(ValueError, match="cannot freeze 4 stages"):
        models.freeze_critic_stages(critic(), 4)


def _rician_generator():
    tf.random.set_seed(1)
    return models.build_generator(latent_dim=8, patch_size=32, base_filters=4, output="rician")


def test_rician_output_is_a_function_of_each_latent_alone():
    generator = _rician_generator()
    z = tf.random.normal([16, 8], seed=2)
    whole = generator(z, training=False).numpy()
    assert whole.shape == (16, 32, 32, 2) and np.all(np.abs(whole) <= 1.0)
    np.testing.assert_array_equal(whole, generator(z, training=False).numpy())
    # the same latents in another batch (order and company): the same samples
    part = generator(tf.reverse(z[3:9], [0]), training=False).numpy()[::-1]
    np.testing.assert_allclose(part, whole[3:9], atol=1e-5)
    # a copy (the EMA and export paths clone the generator) computes the same function
    clone = tf.keras.models.clone_model(generator)
    clone.set_weights(generator.get_weights())
    np.testing.assert_allclose(clone(z, training=False).numpy(), whole, atol=1e-6)
    with pytest.raises(ValueError, match="unknown generator output"):
        models.build_generator(latent_dim=8, patch_size=32, output="gaussian")


def test_rician_noise_matches_the_phantoms_magnitude_noise():
    """The layer's image channel against tfdpgan.data.phantom.appearance.rician (numpy),
    the simulator's own noise: same mean and SD of |x + s (n1 + i n2)| in intensity units
    (zero level -1), at a dark (Rayleigh floor) and a bright (near-Gaussian) level."""
    from tfdpgan.data.phantom import appearance
    layer = models.RicianNoise(initial_sd=0.1)
    latent = tf.random.normal([400, 8], seed=3)
    for level in (-1.0, -0.2):
        patches = tf.concat([tf.fill([400, 16, 16, 1], level), tf.zeros([400, 16, 16, 1])], -1)
        out = layer([patches, latent]).numpy()
        np.testing.assert_array_equal(out[..., 1], 0.0)         # the label passes unchanged
        clean = np.full(out.shape[:3], level + 1.0, np.float32)
        reference = appearance.rician(np.random.default_rng(0), clean, 0.1) - 1.0
        assert np.mean(out[..., 0]) == pytest.approx(np.mean(reference), abs=2e-3)
        assert np.std(out[..., 0]) == pytest.approx(np.std(reference), rel=0.02)


def test_rician_parameters_learn():
    generator = _rician_generator()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(generator(tf.random.normal([8, 8]), training=True)[..., 0])
    layer = generator.get_layer("rician_noise")
    grads = tape.gradient(loss, [layer.sd_kernel, layer.sd_bias, layer.zero_level])
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
