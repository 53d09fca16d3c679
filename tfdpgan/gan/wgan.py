"""The GAN's two training steps: a critic step (private when ``private``) and a generator step.

Pairs are 2-channel patches in [-1, 1]: channel 0 the normalised image, channel 1 the vessel
label mapped {0, 1} -> {-1, 1}.

Critic step (the only code that reads real data): for a Poisson-sampled batch of B real rows,
draw B fakes and use the per-row loss  w_j * critic_loss(real_j, fake_j)  (+ gp_weight *
penalty_j for wgan_gp, + r1_weight / 2 * ||grad D(real_j)||^2 for hinge/ns with R1;
gan/losses.py). A privacy record is ``group_size`` = k consecutive rows:
one patch (k = 1, w = 1) or the k patch slots of one patient (w = 1/k for a real patch, 0 for
padding). The update is tfdpgan.dp.step.PrivateStep: each record's gradient clipped to C,
Gaussian noise noise_multiplier * C, divided by the EXPECTED number of records. The generator
step reads only the critic, so it is post-processing. With ``private=False`` (ε = ∞) the plain
gradient of the weighted mean loss is used: no clipping, no noise.

Instance noise (``instance_noise`` = s > 0; Sønderby et al. 2017): every real and fake pair the
critic sees in training, in both steps, gets its own fresh N(0, s^2) noise (from the run's
generator ``rng``). It is a per-row randomisation of row j alone, so per-record clipping
bounds the record's contribution exactly as before: the DP argument is unchanged.

Generator EMA (``ema_decay`` > 0): an exponential moving average of the generator's weights
after every generator step (moving BatchNorm statistics copied), exported and sampled instead
of the raw generator. It is a function of the generator iterates only, so post-processing:
it costs no privacy.

Under a tf.distribute strategy (build the WGAN inside ``strategy.scope()``; tfdpgan.distribute)
the critic step pads the global batch with weight-0 records to fixed-size, record-aligned
replica slices; each replica draws its own fakes (in fixed-size chunks) and runs the private
step on its slice (noise once, all-reduce, identical update everywhere, see tfdpgan.dp.step).
The generator step splits its fakes across replicas (BatchNorm statistics per replica) and
all-reduces the gradient. Weight clipping and the EMA run once, in cross-replica context.
"""
import dataclasses
import math
from typing import Optional

import tensorflow as tf

from tfdpgan import distribute, errors
from tfdpgan.dp import clipping, spectral, step
from tfdpgan.gan import losses

__all__ = ["LOSSES", "WGANConfig", "WGAN", "check_config", "to_pairs"]

LOSSES = losses.LOSSES
MIXED_PRECISION = ("bfloat16", "float16")   # the generator's compute dtype (run.build_generator)


@dataclasses.dataclass(frozen=True)
class WGANConfig:
    latent_dim: int = 128
    loss: str = "wgan"
    weight_clip: float = 0.01         # loss=wgan: critic weights clipped to [-c, c]
    gp_weight: float = 10.0           # loss=wgan_gp
    r1_weight: float = 0.0            # loss=hinge|ns: gamma of the R1 penalty (0 = off)
    optimizer: str = "rmsprop"        # rmsprop | adam
    critic_lr: float = 5e-5
    generator_lr: float = 5e-5
    adam_beta1: float = 0.5
    adam_beta2: float = 0.9
    private: bool = True
    l2_norm_clip: float = 1.0
    noise_multiplier: float = 1.0
    expected_batch_size: float = 32.0  # expected RECORDS per critic step (q * N)
    group_size: int = 1                # rows per record: 1 (patch) or k (patient)
    dp_backend: str = "fast"           # fast | tf_privacy (see tfdpgan.dp.step)
    ema_decay: float = 0.0             # > 0: release an EMA of the generator weights
    instance_noise: float = 0.0        # std of N(0, s^2) added to every pair the critic sees
    jit_compile: bool = False          # XLA for the critic's and generator's gradients
    mixed_precision: Optional[str] = None  # None (float32) | bfloat16 | float16: generator


def check_config(config: WGANConfig):
    """Refuse a loss setting that cannot train (errors.SettingsError)."""
    if config.loss not in LOSSES:
        raise errors.SettingsError(f"unknown loss {config.loss!r}; choose from {LOSSES}")
    if config.r1_weight < 0 or (config.r1_weight > 0 and config.loss not in ("hinge", "ns")):
        raise errors.SettingsError(
            f"--r1_weight={config.r1_weight} needs a value >= 0 and is for --loss=hinge or ns "
            f"(got --loss={config.loss}; wgan_gp has its own --gp_weight)")


def to_pairs(image, label):
    """[B, P, P, 1] image in [-1, 1] and label in {0, 1} -> [B, P, P, 2] in [-1, 1]."""
    return tf.concat([image, 2.0 * label - 1.0], axis=-1)


def _random_generator(seed):
    """A tf.random.Generator from ``seed``, or from OS entropy when it is None."""
    if seed is None:
        return tf.random.Generator.from_non_deterministic_state()
    return tf.random.Generator.from_seed(seed)


class WGAN(tf.Module):
    """Generator, critic, their optimizers and the two training steps."""

    def __init__(self, generator: tf.keras.Model, critic: tf.keras.Model, config: WGANConfig,
                 seed: int = None):
        super().__init__(name="wgan")
        # All randomness of training (latents, fakes, GP positions, DP noise) comes from
        # ``rng``, whose state is a variable: checkpointed with the run (run.make_checkpoint),
        # a resumed run continues the sequence exactly where an uninterrupted one would be.
        # Logging samples use ``log_rng``, so the logging cadence never shifts training.
        self.strategy = tf.distribute.get_strategy()   # the one whose scope built us
        self.replicas = self.strategy.num_replicas_in_sync
        # fixed-size, record-aligned replica slices (also one device under XLA: static shapes)
        self.pad_chunk = (distribute.chunk_records(config.expected_batch_size, self.replicas)
                          if self.replicas > 1 or config.jit_compile else None)
        self.rng = _random_generator(seed)
        self.log_rng = _random_generator(None if seed is None else seed + 1)
        check_config(config)
        self.generator, self.critic, self.config = generator, critic, config
        clipping.check_per_example(critic)
        dp_backend = config.dp_backend if config.private else None
        self.critic_optimizer = step.make_optimizer(
            config.optimizer, config.critic_lr, beta_1=config.adam_beta1,
            beta_2=config.adam_beta2, dp_backend=dp_backend, l2_norm_clip=config.l2_norm_clip,
            noise_multiplier=config.noise_multiplier)
        self.generator_optimizer = step.make_optimizer(
            config.optimizer, config.generator_lr, beta_1=config.adam_beta1,
            beta_2=config.adam_beta2)
        if config.mixed_precision == "float16":   # float16 gradients underflow unscaled
            self.generator_optimizer = tf.keras.mixed_precision.LossScaleOptimizer(
                self.generator_optimizer)
        self.ema_generator = None
        if config.ema_decay > 0:
            self.ema_generator = tf.keras.models.clone_model(generator)
            self.ema_generator.set_weights(generator.get_weights())
        # gradient penalties differentiate through grad_x D: per-example gradients by vmap
        second_order = config.loss == "wgan_gp" or config.r1_weight > 0
        self.private_step = None
        if config.private:
            self.private_step = step.PrivateStep(
                critic, self.critic_optimizer, self.per_example_loss,
                l2_norm_clip=config.l2_norm_clip, noise_multiplier=config.noise_multiplier,
                expected_batch_size=config.expected_batch_size, group_size=config.group_size,
                backend=config.dp_backend,
                clipping_method="vmap" if second_order else "ghost", rng=self.rng,
                jit_compile=config.jit_compile)
        self._plain_gradients = (tf.function(self._plain_gradients_fn, jit_compile=True)
                                 if config.jit_compile else self._plain_gradients_fn)
        self._generator_gradients = (tf.function(self._generator_gradients_fn,
                                                 jit_compile=True)
                                     if config.jit_compile else self._generator_gradients_fn)
        patch = critic.input_shape[1]
        spec = tf.TensorSpec([None, patch, patch, critic.input_shape[-1]], tf.float32)
        self._critic_step_fn = tf.function(
            self._critic_step, input_signature=[spec, tf.TensorSpec([None], tf.float32)])
        self.critic_metrics = tf.function(self._critic_metrics, input_signature=[spec])
        self.generator_step = tf.function(
            self._generator_step, input_signature=[tf.TensorSpec([], tf.int32)])
        self.fake_scores = tf.function(
            self._fake_scores, input_signature=[tf.TensorSpec([], tf.int32)])

    def per_example_loss(self, critic, inputs):
        """w_j * loss_j for rows (real_j, fake_j, w_j[, alpha_j]); depends on row j only
        (alpha_j: the gradient penalty's position on the segment, drawn per row)."""
        real, fake, weight = inputs[:3]
        alpha = inputs[3] if len(inputs) > 3 else None
        loss = losses.critic_loss(self.config.loss)(critic, (real, fake))
        if self.config.loss == "wgan_gp":
            loss += self.config.gp_weight * losses.gradient_penalty(critic, real, fake, alpha)
        if self.config.r1_weight > 0:
            loss += 0.5 * self.config.r1_weight * losses.r1_penalty(critic, real)
        return weight * loss

    def _sample(self, n, training, rng=None):
        z = (rng or self.rng).normal([n, self.config.latent_dim])
        return self.generator(z, training=training)

    def with_instance_noise(self, pairs):
        """``pairs`` + fresh N(0, instance_noise^2) per element (identity when off)."""
        if self.config.instance_noise <= 0:
            return pairs
        return pairs + self.rng.normal(tf.shape(pairs), stddev=self.config.instance_noise)

    def fakes_for(self, n):
        """n fakes for the critic step, drawn in independent chunks of a FIXED size
        (ceil of the expected rows per step). The generator's BatchNorm couples the samples of
        one call, so one call of size n would make every fake depend on the realised,
        data-dependent batch size; fixed-size chunks keep the fakes exchangeable and
        independent of it, as the per-example sensitivity argument needs. (Under a strategy or
        XLA the chunk is one replica slice's fixed row count.)"""
        chunk = (self.pad_chunk * self.config.group_size if self.pad_chunk else
                 int(math.ceil(self.config.expected_batch_size * self.config.group_size)))
        chunks = (n + chunk - 1) // chunk
        z = self.rng.normal([chunks, chunk, self.config.latent_dim])
        fakes = tf.map_fn(lambda zc: self.generator(zc, training=True), z,
                          fn_output_signature=tf.float32)
        return tf.reshape(fakes, [-1, *fakes.shape[2:]])[:n]

    def critic_step(self, real, weight=None):
        """One critic update on the GLOBAL batch; ``weight`` defaults to 1 per row
        (patch-level records). Padded here to fixed replica slices when needed."""
        if weight is None:
            weight = tf.ones([tf.shape(real)[0]], tf.float32)
        if self.pad_chunk:
            real, weight = distribute.pad_global_batch(real, weight, self.replicas,
                                                       self.pad_chunk, self.config.group_size)
        return self._critic_step_fn(real, weight)

    def _critic_step(self, real, weight):
        """One critic update on the global rows ``real`` [B, P, P, C] with row weights
        ``weight`` [B] (B a multiple of group_size; weight-0 records are padding; see the
        module docstring): every replica updates on its slice, then weight clipping."""
        out = self.strategy.run(self._replica_critic_step, args=(real, weight))
        if self.config.loss == "wgan":
            c = self.config.weight_clip
            for v in self.critic.trainable_variables:
                v.assign(tf.clip_by_value(v, -c, c))
        spectral.update_power_iterations(self.critic)   # spectral critic: u <- u' (data-free)
        stats = {"update_norm": self.strategy.experimental_local_results(
            out["update_norm"])[0]}
        record_weight = tf.reduce_sum(tf.reshape(weight, [-1, self.config.group_size]), 1)
        if self.private_step is not None:
            norms = self.strategy.gather(out["per_record_norms"], axis=0)
            if self.config.dp_backend == "fast":   # (tf_privacy exposes no norms: empty)
                norms = norms[record_weight > 0]   # padding records are not records
            stats.update(clipping.norm_stats(norms, self.config.l2_norm_clip))
        stats["batch_size"] = tf.reduce_sum(tf.cast(record_weight > 0, tf.int32))
        return stats

    def _replica_critic_step(self, real, weight):
        """This replica's share of the critic update (all of it without a strategy)."""
        total_weight = tf.reduce_sum(weight)
        real, weight = distribute.replica_slice(real), distribute.replica_slice(weight)
        fake = self.with_instance_noise(self.fakes_for(tf.shape(real)[0]))
        real = self.with_instance_noise(real)
        rows = (real, fake, weight)
        if self.config.loss == "wgan_gp":
            rows += (self.rng.uniform([tf.shape(real)[0], 1, 1, 1]),)
        if self.private_step is not None:
            return self.private_step(rows)
        grads = distribute.apply_summed(self.critic_optimizer,
                                        self._plain_gradients(rows, total_weight),
                                        self.critic.trainable_variables)
        return {"update_norm": tf.linalg.global_norm(grads)}

    def _plain_gradients_fn(self, rows, total_weight):
        """ε = ∞: gradient of this replica's part of the global weighted mean loss."""
        with tf.GradientTape() as tape:
            loss = tf.math.divide_no_nan(
                tf.reduce_sum(self.per_example_loss(self.critic, rows)), total_weight)
        return tape.gradient(loss, self.critic.trainable_variables)

    def _critic_metrics(self, real):
        """Critic loss and Wasserstein estimate on a batch (for logging only; NOT private:
        computed from real data outside the DP mechanism)."""
        fake = self._sample(tf.shape(real)[0], training=False, rng=self.log_rng)
        real_score = self.critic(real, training=False)[:, 0]
        fake_score = self.critic(fake, training=False)[:, 0]
        w = tf.reduce_mean(real_score) - tf.reduce_mean(fake_score)
        return {"critic_loss": -w, "wasserstein_estimate": w}

    def _generator_step(self, batch_size):
        loss = self.strategy.run(self._replica_generator_step, args=(batch_size,))
        if self.ema_generator is not None:
            d = self.config.ema_decay
            for ema, w in zip(self.ema_generator.variables, self.generator.variables):
                ema.assign(d * ema + (1.0 - d) * w if w.trainable else w)
        return {"generator_loss": self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss,
                                                       axis=None)}

    def _replica_generator_step(self, batch_size):
        """This replica's ceil(batch_size / R) fakes; its loss is 1/R of the global mean."""
        n = (batch_size + self.replicas - 1) // self.replicas
        z = self.rng.normal([n, self.config.latent_dim])
        noise = (self.rng.normal([n, *self.generator.output_shape[1:]],
                                 stddev=self.config.instance_noise)
                 if self.config.instance_noise > 0 else None)
        loss, grads = self._generator_gradients(z, noise)
        distribute.apply_summed(self.generator_optimizer, grads,
                                self.generator.trainable_variables)
        return loss

    def _generator_gradients_fn(self, z, noise):
        with tf.GradientTape() as tape:
            fake = self.generator(z, training=True)
            if noise is not None:
                fake = fake + noise
            loss = losses.generator_loss(self.config.loss,
                                         self.critic(fake, training=True)[:, 0]) / self.replicas
            scaled = (self.generator_optimizer.get_scaled_loss(loss)
                      if self.config.mixed_precision == "float16" else loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        if self.config.mixed_precision == "float16":
            grads = self.generator_optimizer.get_unscaled_gradients(grads)
        return loss, grads

    def _fake_scores(self, n):
        """Critic scores [>= n] of fresh generated pairs (no private data involved), drawn
        across the replicas and gathered: every worker gets the same scores, so an adaptive
        schedule decides the same everywhere."""
        per_replica = (n + self.replicas - 1) // self.replicas
        scores = self.strategy.run(
            lambda: self.critic(self._sample(per_replica, training=False), training=False)[:, 0])
        return self.strategy.gather(scores, axis=0)

    @property
    def release_generator(self) -> tf.keras.Model:
        """The generator that is exported and sampled: the EMA one if enabled."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def sample(self, n: int):
        """n generated pairs [n, P, P, 2] from the release generator (inference mode)."""
        z = self.log_rng.normal([n, self.config.latent_dim])
        return self.release_generator(z, training=False)
