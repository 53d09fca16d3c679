"""DCGAN-style generator and WGAN critic for 2-channel patches (Kossen et al. 2022).

Both networks have `num_stages` stride-2 stages. By default the patch is halved
while it stays an integer >= 3, at most 5 times: 96 -> 3x3 (5 stages),
64 -> 4x4 (4), 48 -> 3x3 (4), 32 -> 4x4 (3). Stage widths are
base_filters * 2**i; at patch 96 and base 96 this gives the paper's sizes
(critic ~25M, generator ~27M parameters).
"""
import math

import tensorflow as tf

from tfdpgan.dp import spectral

__all__ = ["MAX_STAGES", "BN_MOMENTUM", "CRITIC_NORMS", "GENERATOR_UPSAMPLES", "default_num_stages",
           "build_generator", "build_critic", "freeze_critic_stages"]

MAX_STAGES = 5
# Generator BatchNorm: moving statistics (used at export/inference) must track the training
# statistics within the few hundred generator steps of a CPU run; Keras' 0.99 lags far behind.
BN_MOMENTUM = 0.9


def default_num_stages(patch_size):
    """Stride-2 stages: halve while the map stays an integer >= 3 (<= 5 times)."""
    stages, size = 0, patch_size
    while stages < MAX_STAGES and size % 2 == 0 and size // 2 >= 3:
        stages, size = stages + 1, size // 2
    return stages


def _check_stages(patch_size, num_stages):
    num_stages = default_num_stages(patch_size) if num_stages is None else num_stages
    if num_stages < 1 or patch_size % 2**num_stages:
        raise ValueError(f"patch_size {patch_size} cannot be halved "
                         f"{num_stages} times")
    return num_stages


GENERATOR_UPSAMPLES = ("transpose", "resize")


def _upsample(x, filters, upsample, use_bias):
    """Double the map: Conv2DTranspose(4, stride 2) (the paper's DCGAN), or nearest-neighbour
    resize + Conv2D(3) (Odena et al. 2016: no checkerboard from uneven kernel overlap)."""
    if upsample == "transpose":
        return tf.keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same",
                                               use_bias=use_bias)(x)
    x = tf.keras.layers.UpSampling2D(2, interpolation="nearest")(x)
    return tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=use_bias)(x)


def build_generator(latent_dim=128, patch_size=96, base_filters=96, channels=2,
                    num_stages=None, upsample="transpose"):
    """Latent [B, latent_dim] -> patches [B, patch, patch, channels] in [-1, 1].

    Dense to a (patch / 2**num_stages)^2 seed with base * 2**(num_stages-1)
    filters, then upsampling (``upsample``: GENERATOR_UPSAMPLES, see _upsample) + BatchNorm
    + ReLU blocks halving the filters, and a last upsampling to `channels` with tanh.
    BatchNorm is fine here: the generator never sees private data, but note
    that in training mode a sample depends on the other latents of its batch.
    """
    if upsample not in GENERATOR_UPSAMPLES:
        raise ValueError(f"unknown generator upsampling {upsample!r}; "
                         f"choose from {GENERATOR_UPSAMPLES}")
    num_stages = _check_stages(patch_size, num_stages)
    seed = patch_size // 2**num_stages
    filters = base_filters * 2**(num_stages - 1)
    latent = tf.keras.Input((latent_dim,), name="latent")
    x = tf.keras.layers.Dense(seed * seed * filters, use_bias=False)(latent)
    x = tf.keras.layers.Reshape((seed, seed, filters))(x)
    x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = tf.keras.layers.ReLU()(x)
    for _ in range(num_stages - 1):
        filters //= 2
        x = _upsample(x, filters, upsample, use_bias=False)
        x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = tf.keras.layers.ReLU()(x)
    x = _upsample(x, channels, upsample, use_bias=True)
    patches = tf.keras.layers.Activation("tanh", dtype="float32")(x)
    return tf.keras.Model(latent, patches, name="generator")


CRITIC_NORMS = ("group", "none", "spectral")


def build_critic(patch_size=96, base_filters=96, channels=2, num_stages=None,
                 normalization="group"):
    """Patches [B, patch, patch, channels] -> unbounded scores [B, 1].

    Conv2D(4, stride 2) stages doubling the filters from base_filters, each
    followed by GroupNormalization (``normalization="group"``, not on the first stage; the
    paper's critic) or nothing (``"none"``: what Bie et al. 2023 found best under DP), and
    LeakyReLU(0.2), then Flatten and Dense(1) without activation. ``"spectral"``: every
    Conv2D and the Dense are spectrally normalised (tfdpgan.dp.spectral; SNGAN's Lipschitz
    control, cheap under per-example clipping), no GroupNorm.

    Privacy assumption (relied on by tfdpgan.dp_clip): the critic contains no
    cross-example operation, so score i depends only on input i. Hence no
    BatchNormalization; GroupNormalization normalises within one example.
    Activations are separate layers, so Conv2D/Dense outputs are pre-activations.
    """
    if normalization not in CRITIC_NORMS:
        raise ValueError(f"unknown critic normalization {normalization!r}; "
                         f"choose from {CRITIC_NORMS}")
    num_stages = _check_stages(patch_size, num_stages)
    patches = tf.keras.Input((patch_size, patch_size, channels), name="patches")
    x = patches
    for i in range(num_stages):
        filters = base_filters * 2**i
        # A per-channel bias before GroupNorm is (nearly) cancelled by it.
        conv = spectral.SpectralConv2D if normalization == "spectral" else tf.keras.layers.Conv2D
        x = conv(filters, 4, strides=2, padding="same",
                 use_bias=i == 0 or normalization != "group")(x)
        if i > 0 and normalization == "group":
            x = tf.keras.layers.GroupNormalization(groups=math.gcd(32, filters))(x)
        x = tf.keras.layers.LeakyReLU(0.2)(x)
    x = tf.keras.layers.Flatten()(x)
    dense = spectral.SpectralDense if normalization == "spectral" else tf.keras.layers.Dense
    score = dense(1, dtype="float32")(x)
    return tf.keras.Model(patches, score, name="critic")


def freeze_critic_stages(critic: tf.keras.Model, stages: int) -> int:
    """Mark the first ``stages`` convolution stages of a build_critic critic (each Conv2D with
    the normalisation after it) as not trainable; returns the trainable weights left.

    Meant for DP fine-tuning from a public prior (Tramèr & Boneh 2021; Harder et al. 2023:
    public features, private head): the frozen layers keep the prior's weights, so they are
    data-independent constants and the guarantee is unchanged. The DP step clips and noises
    only ``trainable_variables`` (tfdpgan.dp.clipping): each record's clip budget C goes to
    the trainable layers alone (at a prior, the first stages hold most of a record's gradient
    norm, so the later ones got a small share of C against the same noise), and the noise
    dimension shrinks. Call before any training step is built."""
    convs = [layer for layer in critic.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    if not 0 <= stages <= len(convs):
        raise ValueError(f"cannot freeze {stages} stages of a critic with {len(convs)}")
    if stages:
        ends = convs[1:] + [next(layer for layer in critic.layers
                                 if isinstance(layer, tf.keras.layers.Flatten))]
        for layer in critic.layers[:critic.layers.index(ends[stages - 1])]:
            layer.trainable = False
    return sum(int(tf.size(v)) for v in critic.trainable_variables)
