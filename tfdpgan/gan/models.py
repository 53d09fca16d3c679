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

__all__ = ["MAX_STAGES", "BN_MOMENTUM", "CRITIC_NORMS", "GENERATOR_UPSAMPLES", "GENERATOR_OUTPUTS",
           "RicianNoise", "default_num_stages", "build_generator", "build_critic",
           "freeze_critic_stages"]

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


GENERATOR_OUTPUTS = ("tanh", "rician")
# Initial noise SD of the Rician head in normalised units: the phantom's white matter over its
# SNR (14) is ~0.05 of the [-1, 1] range after percentile normalisation (learned from there).
RICIAN_INITIAL_SD = 0.05


class RicianNoise(tf.keras.layers.Layer):
    """Magnitude-image noise on the image channel: [patches in [-1, 1], latent] -> patches.

    A TOF-MRA magnitude image is |signal + complex Gaussian noise| (Rician; tfdpgan.data.phantom
    simulates it so). In normalised units, with ``m`` the value of zero intensity (-1 under
    the percentile normalisation, learned here) and ``s`` the noise SD, the image channel
    becomes ``sqrt((x - m + s n1)^2 + (s n2)^2) + m`` clipped to [-1, 1]; the label channel
    (and any further one) passes unchanged. ``s`` = softplus(latent . w + b) per sample, so a
    batch may mix noise levels as a multi-patient dataset does. The convolutions then only
    need to draw the noise-free image, and the noise texture has the physics' statistics.

    The noise (n1, n2) is drawn by a stateless generator seeded by the bits of each sample's
    latent: a sample depends on its own latent only (not on the batch it is drawn in), and an
    exported generator stays a deterministic function of the latent. The generator never reads
    private data, so this layer has no privacy bearing (it is post-processing of the critic).
    """

    def __init__(self, initial_sd=RICIAN_INITIAL_SD, **kwargs):
        super().__init__(**kwargs)
        self.initial_sd = float(initial_sd)

    def build(self, input_shape):
        latent_dim = int(input_shape[1][-1])
        self.sd_kernel = self.add_weight("sd_kernel", (latent_dim, 1), initializer="zeros")
        inverse_softplus = math.log(math.expm1(self.initial_sd))
        self.sd_bias = self.add_weight("sd_bias", (1,), initializer=tf.keras.initializers
                                       .Constant(inverse_softplus))
        self.zero_level = self.add_weight("zero_level", (), initializer=tf.keras.initializers
                                          .Constant(-1.0))
        super().build(input_shape)

    def call(self, inputs):
        patches, latent = inputs
        patches, latent = tf.cast(patches, tf.float32), tf.cast(latent, tf.float32)
        shape = tf.shape(patches)[1:3]
        seeds = tf.bitcast(tf.stop_gradient(latent[:, :2]), tf.int32)

        def draw(seed):
            return tf.random.stateless_normal(tf.concat([shape, [2]], 0), seed)

        noise = tf.map_fn(draw, seeds, fn_output_signature=tf.float32)
        sd = tf.nn.softplus(tf.matmul(latent, self.sd_kernel) + self.sd_bias)[:, :, None, None]
        signal = patches[..., :1] - self.zero_level + sd * noise[..., :1]
        magnitude = tf.sqrt(tf.square(signal) + tf.square(sd * noise[..., 1:]) + 1e-12)
        image = tf.clip_by_value(magnitude + self.zero_level, -1.0, 1.0)
        return tf.concat([image, patches[..., 1:]], -1)

    def get_config(self):
        return {**super().get_config(), "initial_sd": self.initial_sd}


def build_generator(latent_dim=128, patch_size=96, base_filters=96, channels=2,
                    num_stages=None, upsample="transpose", output="tanh"):
    """Latent [B, latent_dim] -> patches [B, patch, patch, channels] in [-1, 1].

    Dense to a (patch / 2**num_stages)^2 seed with base * 2**(num_stages-1)
    filters, then upsampling (``upsample``: GENERATOR_UPSAMPLES, see _upsample) + BatchNorm
    + ReLU blocks halving the filters, and a last upsampling to `channels` with tanh.
    ``output="rician"`` adds :class:`RicianNoise` to the image channel after the tanh.
    BatchNorm is fine here: the generator never sees private data, but note
    that in training mode a sample depends on the other latents of its batch.
    """
    if output not in GENERATOR_OUTPUTS:
        raise ValueError(f"unknown generator output {output!r}; choose from {GENERATOR_OUTPUTS}")
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
    if output == "rician":
        patches = RicianNoise(dtype="float32", name="rician_noise")([patches, latent])
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
