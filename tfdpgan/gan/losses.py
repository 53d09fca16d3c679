"""GAN losses as small functions (one per row, so the DP step can clip per record).

Critic losses take ``(critic, (real, fake))`` and return one value per row [B]; row i depends
only on (real_i, fake_i), which is what per-example clipping needs. Generator losses take the
critic's scores of a batch of fakes and return a scalar (the generator step never reads real
data: post-processing).

  wgan   (Arjovsky et al. 2017; the paper):  D(fake) - D(real);        generator -D(fake)
  hinge  (Miyato et al. 2018):  relu(1 - D(real)) + relu(1 + D(fake));  generator -D(fake)
  ns     non-saturating (Goodfellow et al. 2014; Bie et al. 2023 under DP):
         softplus(-D(real)) + softplus(D(fake));                        generator softplus(-D(fake))
"""
import tensorflow as tf

__all__ = ["LOSSES", "critic_loss", "generator_loss", "gradient_penalty", "r1_penalty"]

LOSSES = ("wgan", "wgan_gp", "hinge", "ns")


def _scores(critic, inputs):
    real, fake = inputs
    fake_score = critic(fake, training=True)[:, 0]
    return critic(real, training=True)[:, 0], fake_score


def wgan_critic(critic, inputs):
    real_score, fake_score = _scores(critic, inputs)
    return fake_score - real_score


def hinge_critic(critic, inputs):
    real_score, fake_score = _scores(critic, inputs)
    return tf.nn.relu(1.0 - real_score) + tf.nn.relu(1.0 + fake_score)


def ns_critic(critic, inputs):
    real_score, fake_score = _scores(critic, inputs)
    return tf.nn.softplus(-real_score) + tf.nn.softplus(fake_score)


_CRITIC = {"wgan": wgan_critic, "wgan_gp": wgan_critic, "hinge": hinge_critic, "ns": ns_critic}


def critic_loss(name: str):
    """The per-row critic loss ``(critic, (real, fake)) -> [B]`` of loss ``name``."""
    return _CRITIC[name]


def generator_loss(name: str, fake_score):
    """Scalar generator loss from the critic's scores [B] of generated pairs."""
    if name == "ns":
        return tf.reduce_mean(tf.nn.softplus(-fake_score))
    return -tf.reduce_mean(fake_score)


def gradient_penalty(critic, real, fake, alpha=None):
    """Per-row WGAN-GP penalty (||grad_x D(x_hat_i)|| - 1)^2 at x_hat_i on the segment
    between real_i and fake_i (Gulrajani et al. 2017). Second order in the critic: only the
    per-example-gradient (vmap) clipping path supports it. ``alpha`` [B, 1, 1, 1]: the
    positions on the segments (default: uniform, drawn here)."""
    if alpha is None:
        alpha = tf.random.uniform([tf.shape(real)[0], 1, 1, 1])
    mixed = alpha * real + (1.0 - alpha) * fake
    norm = tf.sqrt(_squared_input_gradient_norm(critic, mixed) + 1e-12)
    return tf.square(norm - 1.0)


def r1_penalty(critic, real):
    """Per-row R1 penalty ||grad_x D(real_i)||^2 at the real row itself (Mescheder et al.
    2018): a zero-centred gradient penalty for ``hinge``/``ns``. Row i's value depends on
    real_i alone; second order in the critic, so only the vmap clipping path supports it."""
    return _squared_input_gradient_norm(critic, real)


def _squared_input_gradient_norm(critic, x):
    """||grad_x D(x_i)||^2 per row [B] (each row's score depends on that row alone)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = critic(x, training=True)
    return tf.reduce_sum(tf.square(tape.gradient(score, x)), axis=[1, 2, 3])
