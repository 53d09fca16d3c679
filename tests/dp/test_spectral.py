"""Spectrally normalised critic on the fast DP path: the clipped sum equals a naive per-example
loop over gradients with respect to the effective kernels, the noise-free update equals the
gradient through the layers, and the power iteration finds the largest singular value."""
import numpy as np
import tensorflow as tf

from tfdpgan.dp import clipping, spectral, step
from tfdpgan.gan import losses, models, wgan

PATCH = 16


def _loss(critic, rows):
    real, fake = rows
    return losses.critic_loss("hinge")(critic, (real, fake))


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(tf.constant(rng.uniform(-1, 1, (n, PATCH, PATCH, 2)), tf.float32)
                 for _ in range(2))


def _spectral_critic(seed=0):
    tf.keras.utils.set_random_seed(seed)
    return models.build_critic(PATCH, base_filters=4, normalization="spectral")


def test_power_iteration_finds_the_largest_singular_value():
    critic = _spectral_critic()
    for _ in range(200):
        spectral.update_power_iterations(critic)
    layers = [l for l in critic.layers if isinstance(l, spectral.REPARAMETRIZED)]
    assert len(layers) == 3   # two convolutions (16 -> 8 -> 4) and the dense layer
    for layer in layers:
        w = layer.kernel.numpy().reshape(-1, layer.kernel.shape[-1])
        top = np.linalg.svd(w, compute_uv=False)[0]
        sigma = float(layer._power_iteration(layer.kernel)[0])  # pylint: disable=protected-access
        np.testing.assert_allclose(sigma, top, rtol=1e-3)
        effective = layer.normalized_kernel().numpy().reshape(w.shape)
        np.testing.assert_allclose(np.linalg.svd(effective, compute_uv=False)[0], 1.0,
                                   rtol=1e-3)


def test_ghost_clipped_sum_equals_a_naive_loop_over_effective_kernels():
    critic = _spectral_critic()
    spectral.update_power_iterations(critic)
    # the same network with plain layers whose kernels ARE the effective kernels
    plain = models.build_critic(PATCH, base_filters=4, normalization="none")
    plain.set_weights([layer.normalized_kernel().numpy() if v is layer.kernel else v.numpy()
                       for layer in critic.layers for v in layer.trainable_weights])
    rows = _rows(6)
    clip = 0.05
    summed, norms = clipping.clipped_gradient_sum(critic, _loss, rows, clip)
    naive, naive_norms = [tf.zeros_like(v) for v in plain.trainable_variables], []
    for i in range(6):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(_loss(plain, tuple(r[i:i + 1] for r in rows)))
        g = tape.gradient(loss, plain.trainable_variables)
        norm = float(tf.linalg.global_norm(g))
        naive_norms.append(norm)
        naive = [a + b * min(1.0, clip / norm) for a, b in zip(naive, g)]
    np.testing.assert_allclose(norms.numpy(), naive_norms, rtol=1e-4)
    assert max(naive_norms) > clip   # clipping is exercised
    for a, b in zip(summed, naive):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


def test_noise_free_unclipped_update_is_the_gradient_through_the_layers():
    critic = _spectral_critic(1)
    spectral.update_power_iterations(critic)
    weights = critic.get_weights()
    rows = _rows(5, seed=3)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(_loss(critic, rows)) / 5.0
    expected = tape.gradient(loss, critic.trainable_variables)
    step.PrivateStep(critic, tf.keras.optimizers.legacy.SGD(1.0), _loss, l2_norm_clip=1e6,
                     noise_multiplier=0.0, expected_batch_size=5.0)(rows)
    before = dict(zip([w.name for w in critic.weights], weights))
    for v, g in zip(critic.trainable_variables, expected):
        np.testing.assert_allclose(before[v.name] - v.numpy(), g.numpy(), rtol=1e-3,
                                   atol=1e-7)


def test_private_hinge_step_with_a_spectral_critic_updates_u():
    config = wgan.WGANConfig(latent_dim=8, loss="hinge", optimizer="adam",
                             expected_batch_size=4.0, l2_norm_clip=0.1, noise_multiplier=1.0)
    gan = wgan.WGAN(models.build_generator(8, PATCH, 4), _spectral_critic(), config, seed=0)
    u_before = [l.u.numpy() for l in gan.critic.layers if isinstance(l, spectral.REPARAMETRIZED)]
    stats = gan.critic_step(_rows(4)[0])
    assert np.isfinite(float(stats["update_norm"]))
    u_after = [l.u.numpy() for l in gan.critic.layers if isinstance(l, spectral.REPARAMETRIZED)]
    assert all(not np.allclose(a, b) for a, b in zip(u_before, u_after))
