"""THE private update of a network that reads private data (tfdpgan's critic).

One call = one sampled-Gaussian-mechanism step:
    g = ( sum_r clip_C(grad of loss_r) + N(0, (noise_multiplier * C)^2 I) ) / expected_records
    optimizer.apply(g)
where r runs over the privacy records of the batch: ``group_size`` consecutive rows form one
record (1 = a patch; k = the k patch slots of one patient). The per-row loss function is
injected (``per_example_loss_fn(model, inputs) -> [B]``, row weights already applied), so the
step knows nothing of GANs. Dividing by the EXPECTED number of records (q * N), never the
realised one, keeps the normalisation data-independent.

Guarantee: if every call's batch is a Poisson sample of records with rate q, each record's
rows appear only in its own group, loss_r depends only on record r's rows (and on
data-independent quantities), and the model has no cross-example layer (refused), then T
calls are the subsampled Gaussian mechanism that tfdpgan.dp.accounting accounts for with
(noise_multiplier, q, T).

Under a tf.distribute strategy with R replicas (tfdpgan.distribute) each replica calls the step
on its own slice of the one global Poisson batch: it clips its records, ONLY replica 0 adds the
noise, and an all-reduce SUM gives every replica the identical update
(sum of all clipped records + one N(0, (σC)^2 I) draw) / expected_records, applied without
further aggregation. Adding the noise on every replica would give std σC·sqrt(R); dividing it
by R would give σC/sqrt(R): both are refused by tests/distribute. The ``fast`` backend with an
``rng`` is required for R > 1 (TF Privacy's optimizer would add its noise on every replica).

Two backends compute the same update:
  * ``fast`` (default): ghost-norm / book-keeping clipping (tfdpgan.dp.clipping) — per-record
    norms from layer inputs and output gradients, no per-example gradients of the whole net —
    and TF Privacy's ``GaussianSumQuery`` for the noise; the optimizer is a plain Keras one.
  * ``tf_privacy``: TF Privacy's own DP Keras optimizer (``DPKerasAdamOptimizer`` or the
    RMSprop sibling made by TF Privacy's ``make_gaussian_query_optimizer_class``), one
    microbatch per record. It divides by the REALISED number of microbatches; the step rescales
    by realised / expected, so both backends apply the same update. It materialises per-record
    Jacobians (slow; the reference for the fast path and what TF Privacy users know).
"""
import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query
from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras

from tfdpgan import distribute, errors
from tfdpgan.dp import clipping, spectral

__all__ = ["BACKENDS", "CLIPPINGS", "PrivateStep", "make_optimizer", "tf_privacy_optimizer_class"]

BACKENDS = ("fast", "tf_privacy")
CLIPPINGS = ("ghost", "vmap")   # vmap: any loss, incl. input-gradient penalties (WGAN-GP)
_LEGACY = {"adam": tf.keras.optimizers.legacy.Adam,
           "rmsprop": tf.keras.optimizers.legacy.RMSprop}


def tf_privacy_optimizer_class(base):
    """TF Privacy's Gaussian-query DP subclass of a legacy Keras optimizer class, made with
    TF Privacy's own factories (how it builds DPKerasAdamOptimizer / DPKerasSGDOptimizer)."""
    return dp_optimizer_keras.make_gaussian_query_optimizer_class(
        dp_optimizer_keras.make_keras_generic_optimizer_class(base))


def make_optimizer(name: str, learning_rate: float, *, beta_1: float = 0.9,
                   beta_2: float = 0.999, dp_backend: str = None, l2_norm_clip: float = None,
                   noise_multiplier: float = None):
    """A Keras 2 (legacy) optimizer; with ``dp_backend="tf_privacy"`` TF Privacy's DP
    subclass of it (clip and noise inside ``_compute_gradients``)."""
    if name not in _LEGACY:
        raise errors.SettingsError(f"unknown optimizer {name!r}; choose from {sorted(_LEGACY)}")
    kwargs = {"beta_1": beta_1, "beta_2": beta_2} if name == "adam" else {}
    if dp_backend != "tf_privacy":
        return _LEGACY[name](learning_rate, **kwargs)
    cls = (dp_optimizer_keras.DPKerasAdamOptimizer if name == "adam" else
           tf_privacy_optimizer_class(_LEGACY[name]))
    return cls(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
               num_microbatches=None, learning_rate=learning_rate, **kwargs)


class PrivateStep:
    """Clip per record -> Gaussian noise -> / expected records -> apply (see module doc).

    Call it with the inputs of ``per_example_loss_fn`` (tensors with batch dimension B first,
    B a multiple of ``group_size``), ideally inside a tf.function with a None batch dimension.
    Returns the per-record gradient norms [B / group_size] (NOT private: statistics of the
    batch outside the mechanism; see clipping.norm_stats) and the noised update's global norm
    (private: post-processing of the mechanism's output).
    """

    def __init__(self, model: tf.keras.Model, optimizer, per_example_loss_fn, *,
                 l2_norm_clip: float, noise_multiplier: float, expected_batch_size: float,
                 group_size: int = 1, backend: str = "fast", clipping_method: str = "ghost",
                 rng: tf.random.Generator = None, jit_compile: bool = False):
        if backend not in BACKENDS:
            raise errors.SettingsError(f"dp backend must be one of {BACKENDS}, got {backend!r}")
        if clipping_method not in CLIPPINGS:
            raise errors.SettingsError(f"clipping must be one of {CLIPPINGS}")
        if not expected_batch_size > 0:
            raise errors.SettingsError("expected_batch_size must be positive")
        if not l2_norm_clip > 0:
            raise errors.SettingsError(f"l2_norm_clip must be positive, got {l2_norm_clip}")
        if backend == "tf_privacy" and not hasattr(optimizer, "_dp_sum_query"):
            raise errors.SettingsError("backend tf_privacy needs a TF Privacy DP optimizer "
                                       "(make_optimizer(..., dp_backend='tf_privacy'))")
        clipping.check_per_example(model)
        self.model, self.optimizer = model, optimizer
        self.per_example_loss_fn = per_example_loss_fn
        self.l2_norm_clip = float(l2_norm_clip)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.group_size, self.backend, self.clipping_method = group_size, backend, clipping_method
        self.query = gaussian_query.GaussianSumQuery(
            self.l2_norm_clip, self.noise_multiplier * self.l2_norm_clip)
        self.query_state = self.query.initial_global_state()
        # The noise source. A tf.random.Generator keeps its state in a variable, so a run that
        # checkpoints it resumes the noise sequence instead of restarting it (TensorFlow's
        # legacy random ops restart with the process: with a fixed seed a resumed run would
        # REPEAT the noise of its first steps, and the difference of two updates would be
        # noise-free). None: TF Privacy's GaussianSumQuery draws it (same distribution).
        self.rng = rng
        # --jit_compile: XLA compiles the clipped per-record sum (forward, backward, norms,
        # clip factors and the weighted sum, all from the same tensors, so the bound holds as
        # without XLA); noise, all-reduce and the optimizer stay outside the compiled part.
        clipped_sum = (clipping.clipped_gradient_sum_vmap if clipping_method == "vmap"
                       else clipping.clipped_gradient_sum)

        def compute(inputs):
            return clipped_sum(self.model, self.per_example_loss_fn, inputs, self.l2_norm_clip,
                               group_size=self.group_size)

        self._clipped_sum = tf.function(compute, jit_compile=True) if jit_compile else compute

    def __call__(self, inputs):
        """One step, in a replica context (the default one without a strategy)."""
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        if replicas > 1 and (self.backend != "fast" or self.rng is None):
            raise errors.SettingsError(
                f"{replicas} replicas need dp backend 'fast' with a noise generator: TF "
                f"Privacy's optimizer adds its noise on every replica (std σC·sqrt(R))")
        if self.backend == "tf_privacy":
            grads, norms = self._tf_privacy_gradients(inputs)
        else:
            grads, norms = self._fast_gradients(inputs)
        # every replica: the same sum of all records + ONE noise draw
        grads = distribute.apply_summed(self.optimizer, grads, self.model.trainable_variables)
        return {"per_record_norms": norms, "update_norm": tf.linalg.global_norm(grads)}

    def noised_mean(self, clipped_sum):
        """(clipped_sum + N(0, (σC)^2)) / expected records; the noise from ``rng`` if given,
        else from TF Privacy's GaussianSumQuery. In replica r > 0 of a strategy the noise is
        drawn (the replicas' generator states stay in step) but not added: the all-reduce of
        the replicas' results then carries exactly one draw."""
        if self.rng is not None:
            std = self.noise_multiplier * self.l2_norm_clip
            first = distribute.is_first_replica()
            noised = [g + tf.cast(first, g.dtype) *
                      self.rng.normal(tf.shape(g), stddev=std, dtype=g.dtype)
                      for g in clipped_sum]
        else:
            noised, _, _ = self.query.get_noised_result(clipped_sum, self.query_state)
        return [g / self.expected_batch_size for g in noised]

    def _fast_gradients(self, inputs):
        summed, norms = self._clipped_sum(inputs)
        noised = self.noised_mean(summed)
        if self.clipping_method == "ghost":   # spectral layers: W~-gradients -> W (post-proc.)
            noised = spectral.to_variable_gradients(self.model, noised)
        return noised, norms

    def _tf_privacy_gradients(self, inputs):
        """TF Privacy's DP optimizer computes (sum of clipped microbatch gradients + noise)
        / realised microbatches; rescaled here to / expected records. Its
        ``_compute_gradients`` is the Keras optimizer protocol method ``minimize`` calls."""
        variables = self.model.trainable_variables
        rows = tf.shape(tf.nest.flatten(inputs)[0])[0]
        records = rows // self.group_size

        def dp_optimizer_update():
            with tf.GradientTape() as tape:
                # One loss per record (the sum of its k weighted rows); with
                # num_microbatches=None the optimizer makes each entry a microbatch.
                row_losses = self.per_example_loss_fn(self.model, inputs)
                losses = tf.reduce_sum(tf.reshape(row_losses, [-1, self.group_size]), axis=1)
            grads_and_vars = self.optimizer._compute_gradients(  # pylint: disable=protected-access
                losses, variables, tape=tape)
            scale = tf.cast(records, tf.float32) / self.expected_batch_size
            return [g * scale for g, _ in grads_and_vars]

        def noise_only():  # no record sampled: the mechanism still releases pure noise
            return self.noised_mean([tf.zeros_like(v) for v in variables])

        grads = tf.cond(records > 0, dp_optimizer_update, noise_only)
        return grads, tf.zeros([0])   # TF Privacy does not expose the per-record norms
