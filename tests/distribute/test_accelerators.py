"""--jit_compile (XLA) and --mixed_precision: the same private update, float32 where the
guarantee is computed."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import workdir
from tfdpgan.dp import step
from tfdpgan.gan import losses, models, run, training, wgan
from tiny import TINY

PATCH = 16


def _loss(critic, rows):
    real, fake, weight = rows
    return weight * losses.critic_loss("wgan")(critic, (real, fake))


def test_xla_private_step_gives_the_same_update():
    base = models.build_critic(PATCH, base_filters=4)
    weights = base.get_weights()
    rng = np.random.default_rng(2)
    rows = tuple(tf.constant(a) for a in (
        rng.uniform(-1, 1, (9, PATCH, PATCH, 2)).astype(np.float32),
        rng.uniform(-1, 1, (9, PATCH, PATCH, 2)).astype(np.float32),
        np.ones(9, np.float32)))
    updated, norms = [], []
    for jit in (False, True):
        critic = models.build_critic(PATCH, base_filters=4)
        critic.set_weights(weights)
        private = step.PrivateStep(critic, tf.keras.optimizers.legacy.SGD(1.0), _loss,
                                   l2_norm_clip=0.02, noise_multiplier=0.0,
                                   expected_batch_size=9.0, jit_compile=jit)
        norms.append(tf.function(private)(rows)["per_record_norms"].numpy())
        updated.append(critic.get_weights())
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-4)
    assert np.all(norms[0] > 0.02)   # every record clipped: the bound is exercised
    for a, b, w in zip(*updated, weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    assert max(np.max(np.abs(a - w)) for a, w in zip(updated[0], weights)) > 1e-4


@pytest.mark.parametrize("dtype", wgan.MIXED_PRECISION)
def test_mixed_precision_is_the_generator_only(dtype):
    config = run.TrainConfig(workdir="", base_filters=4,
                             gan=wgan.WGANConfig(latent_dim=8, mixed_precision=dtype))
    plan = type("Plan", (), {"noise_multiplier": 1.0})()
    gan = run.build_wgan(config, PATCH, plan)
    compute = {layer.dtype_policy.compute_dtype for layer in gan.generator.submodules
               if isinstance(layer, tf.keras.layers.Conv2DTranspose)}
    assert compute == {dtype}
    assert {layer.dtype_policy.compute_dtype for layer in gan.critic.layers} == {"float32"}
    assert tf.keras.mixed_precision.global_policy().name == "float32"   # restored
    assert gan.sample(3).dtype == tf.float32
    stats = gan.critic_step(tf.zeros([5, PATCH, PATCH, 2]))
    assert np.isfinite(float(stats["update_norm"]))
    assert np.isfinite(float(gan.generator_step(tf.constant(4))["generator_loss"]))
    assert all(v.dtype == tf.float32 for v in gan.generator.trainable_variables)


def test_xla_and_mixed_precision_leave_the_card_unchanged(tiny_dataset, tmp_path):
    cards = []
    for name, gan in (("plain", wgan.WGANConfig(latent_dim=8)),
                      ("fast", wgan.WGANConfig(latent_dim=8, jit_compile=True,
                                               mixed_precision="bfloat16"))):
        w = str(tmp_path / name)
        training.train(run.TrainConfig(workdir=w, data=tiny_dataset[1], epsilon=3.0,
                                       **dict(TINY, critic_steps=6, gan=gan)))
        with open(workdir.path(w, workdir.PRIVACY_JSON)) as f:
            cards.append({k: v for k, v in json.load(f).items() if k != "tfdpgan_version"})
    assert cards[0] == cards[1]
