"""Fast per-example clipping: the clipped per-record gradient sum of a Keras model.

Guarantee. `clipped_gradient_sum` (and its fallback `clipped_gradient_sum_vmap`)
return S = sum_i c_i g_i, where g_i is the gradient of loss_i with respect to
ALL trainable variables of the critic jointly and c_i = min(1, C / ||g_i||):
each example's contribution to the sum has L2 norm <= C (up to float32
rounding; a non-finite g_i makes the whole sum non-finite, as in TF Privacy's
clip_by_global_norm). The noise and the update are tfdpgan.dp.step's job.

Assumptions (the guarantee means nothing without them):
  * loss_i depends only on row i of the inputs and on data-independent
    quantities. For the WGAN pair (real_i, fake_i) the fake sample must not
    depend on the private batch, including its realised size.
  * The critic has no cross-example operation: BatchNormalization anywhere in
    it is rejected. Parameter-free layers must be per-example too.
  * Regularisation losses (`model.losses`) are not part of loss_i.
  * Ghost path only: trainable layers are Dense, Conv2D (channels_last, no
    dilation, groups=1), their spectrally normalised versions (tfdpgan.dp.spectral),
    GroupNormalization (channel axis last) or LayerNormalization; loss_i is first
    order in the critic (no input-gradient penalty; use the vmap fallback for WGAN-GP).
  * Spectral layers (ghost path): g_i's entry for such a layer is the gradient with
    respect to its EFFECTIVE kernel W / sigma(W); the caller maps the noised sum to W
    with tfdpgan.dp.spectral.to_variable_gradients (post-processing).

The loss contract shared by both paths: `per_example_loss_fn(critic, inputs)`
returns a [B] tensor, where `critic(x, training=True)` evaluates the model on a
batch whose row i belongs to example i, and `inputs` is a tensor or a tuple of
tensors that all have the batch dimension B first.
"""
import tensorflow as tf
from tensorflow_privacy.privacy.fast_gradient_clipping import gradient_clipping_utils

from tfdpgan import errors
from tfdpgan.dp import spectral

__all__ = ["SUPPORTED_LAYERS", "METHODS", "check_per_example", "clipped_gradient_sum",
           "clipped_gradient_sum_vmap", "norm_stats"]

_CROSS_EXAMPLE_LAYERS = (tf.keras.layers.BatchNormalization,
                         tf.keras.layers.experimental.SyncBatchNormalization,
                         tf.compat.v1.keras.layers.BatchNormalization)
_LINEAR_LAYERS = (tf.keras.layers.Dense, tf.keras.layers.Conv2D, *spectral.REPARAMETRIZED)
_DENSE_LAYERS = (tf.keras.layers.Dense, spectral.SpectralDense)
_NORM_LAYERS = (tf.keras.layers.GroupNormalization,
                tf.keras.layers.LayerNormalization)
SUPPORTED_LAYERS = ("Dense, Conv2D, SpectralDense, SpectralConv2D, GroupNormalization, "
                    "LayerNormalization")
METHODS = ("auto", "ghost", "direct")


def check_per_example(model):
    """Raises ValueError if `model` contains a cross-example layer (BatchNorm)."""
    for layer in model.submodules:
        if isinstance(layer, _CROSS_EXAMPLE_LAYERS):
            raise errors.SettingsError(
                f"Layer '{layer.name}' ({type(layer).__name__}) mixes the examples "
                "of a batch, so per-example gradients and the DP sensitivity bound "
                "are undefined. Use GroupNormalization or LayerNormalization in the "
                "critic.")


class _Recorder:
    """Calls `model` layer by layer, recording each trainable layer's call.

    For Dense/Conv2D it keeps the input and the pre-activation output z; for
    normalisation layers the normalised input x_hat and the output z. Every z is
    watched by `tape`, so one backward pass gives dL/dz for all of them.
    Parameter-free layers get the `training` flag (default True, as in
    `model(x, training=True)`).
    """

    def __init__(self, model, tape):
        self._model = model
        self._tape = tape
        self.layers = []  # trainable layers in call order, each once
        self.calls = {}  # id(layer) -> [(saved input, z), ...]

    def __call__(self, x, training=True):
        def call_layer(layer, args, kwargs):
            return self._call_layer(layer, args, {"training": training, **kwargs})

        outputs, _ = gradient_clipping_utils.model_forward_pass(
            self._model, x, call_layer)
        return outputs

    def _call_layer(self, layer, args, kwargs):
        if not layer.trainable_variables:
            return layer(*args, **kwargs), None
        kwargs.pop("training")  # the supported trainable layers ignore it
        if kwargs or len(args) != 1:
            raise NotImplementedError(
                f"Layer '{layer.name}': only single-input calls without keyword "
                "arguments are supported.")
        x = args[0]
        if type(layer) in _LINEAR_LAYERS:
            saved, z = x, _pre_activation(layer, x)
        elif type(layer) in _NORM_LAYERS:
            saved = _normalized(layer, x)
            z = _affine(layer, saved)
        else:
            raise NotImplementedError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has trainable "
                f"variables but is not supported by ghost clipping (supported: "
                f"{SUPPORTED_LAYERS}); use clipped_gradient_sum_vmap.")
        self._tape.watch(z)  # before z is used, so that its uses are recorded
        if id(layer) not in self.calls:
            self.layers.append(layer)
            self.calls[id(layer)] = []
        self.calls[id(layer)].append((saved, z))
        return (layer.activation(z) if type(layer) in _LINEAR_LAYERS else z), None


def _pre_activation(layer, x):
    """Dense/Conv2D output before the activation, from explicit ops (a spectral layer's
    with its effective kernel W / sigma)."""
    kernel = (layer.normalized_kernel() if isinstance(layer, spectral.REPARAMETRIZED)
              else layer.kernel)
    if type(layer) in _DENSE_LAYERS:
        z = tf.tensordot(x, kernel, axes=1)
    else:
        if (layer.data_format != "channels_last" or layer.groups != 1 or
            tuple(layer.dilation_rate) != (1, 1)):
            raise NotImplementedError(
                f"Conv2D '{layer.name}': only channels_last, groups=1 and no "
                "dilation are supported.")
        z = tf.nn.conv2d(x, kernel, strides=layer.strides,
                         padding=layer.padding.upper())
    return z + layer.bias if layer.use_bias else z


def _param_axes(layer, rank):
    """Input axes that the scale/offset of a normalisation layer run along."""
    if type(layer) is tf.keras.layers.GroupNormalization:
        if layer.axis not in (-1, rank - 1):
            raise NotImplementedError(
                f"GroupNormalization '{layer.name}': channel axis must be last.")
        return [rank - 1]
    axes = list(layer.axis)
    if axes != sorted(axes) or 0 in axes:
        raise NotImplementedError(
            f"LayerNormalization '{layer.name}': axes must be sorted and exclude "
            "the batch axis.")
    return axes


def _normalized(layer, x):
    """x_hat of GroupNormalization/LayerNormalization (statistics per example)."""
    if type(layer) is tf.keras.layers.GroupNormalization:
        _param_axes(layer, x.shape.rank)
        channels = x.shape[-1]
        grouped_shape = tf.concat(
            [tf.shape(x)[:-1], [layer.groups, channels // layer.groups]], axis=0)
        grouped = tf.reshape(x, grouped_shape)
        axes = list(range(1, x.shape.rank - 1)) + [x.shape.rank]
        mean, var = tf.nn.moments(grouped, axes, keepdims=True)
        return tf.reshape((grouped - mean) * tf.math.rsqrt(var + layer.epsilon),
                          tf.shape(x))
    mean, var = tf.nn.moments(x, layer.axis, keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + layer.epsilon)


def _affine(layer, x_hat):
    rank = x_hat.shape.rank
    broadcast = [1] * rank
    for axis in _param_axes(layer, rank):
        broadcast[axis] = x_hat.shape[axis]
    z = x_hat
    if layer.scale:
        z = z * tf.reshape(layer.gamma, broadcast)
    if layer.center:
        z = z + tf.reshape(layer.beta, broadcast)
    return z


def _positions(x, features):
    """[B, ..., features] -> [B, T, features] with T static (works for B = 0)."""
    return tf.reshape(x, [-1, x.shape[1:-1].num_elements(), features])


def _unfold(layer, x):
    """Input rows A [B, T, d] such that z = A @ kernel.reshape(d, p) (+ bias)."""
    if type(layer) in _DENSE_LAYERS:
        return _positions(x, x.shape[-1])
    kh, kw = layer.kernel_size
    patches = tf.image.extract_patches(
        x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
        rates=[1, 1, 1, 1], padding=layer.padding.upper())
    return _positions(patches, patches.shape[-1])


def _weighted_sum(c, per_example):
    """sum_i c_i per_example[i]."""
    return tf.tensordot(c, per_example, axes=1)


def _group(x, group_size):
    """[B, T, f] rows -> [B / k, k T, f]: consecutive rows of one record side by side."""
    if group_size == 1:
        return x
    return tf.reshape(x, [-1, group_size * x.shape[1], x.shape[2]])


def _linear_terms(layer, calls, grads, method, group_size=1):
    """Per-record squared norms and clipped-sum function of Dense/Conv2D.

    All calls of the layer are concatenated along the position axis T (e.g.
    T = 2 * H_out * W_out for the WGAN pair), and the rows of one record (k
    consecutive rows, `group_size`) too, so g_i = A_i^T G_i is the gradient
    of the whole per-record loss. Kernel norm: ghost (sum_tt' (A A^T) * (G G^T),
    O(T^2) memory) if 2 T^2 < d p, else direct (materialise A_i^T G_i, O(d p)),
    the space rule of mixed ghost clipping (Bu et al. 2022). A direct layer's
    clipped sum is then the c-weighted sum of those gradients; a ghost layer's
    is one GEMM A^T (c G) over the whole batch.
    """
    a = _group(tf.concat([_unfold(layer, x) for x, _ in calls], axis=1), group_size)
    g = _group(tf.concat([_positions(gz, gz.shape[-1]) for gz in grads], axis=1), group_size)
    t, d, p = a.shape[1], a.shape[2], g.shape[2]
    ghost = method == "ghost" or (method == "auto" and 2 * t * t < d * p)
    if ghost:
        sq_norms = tf.reduce_sum(tf.matmul(a, a, transpose_b=True) *
                                 tf.matmul(g, g, transpose_b=True), axis=[1, 2])

        def kernel_sum(c):
            return tf.matmul(tf.reshape(a, [-1, d]),
                             tf.reshape(g * c[:, None, None], [-1, p]),
                             transpose_a=True)
    else:
        per_example = tf.matmul(a, g, transpose_a=True)  # [B, d, p]
        sq_norms = tf.reduce_sum(tf.square(per_example), axis=[1, 2])

        def kernel_sum(c):
            return _weighted_sum(c, per_example)

    if layer.use_bias:
        bias = tf.reduce_sum(g, axis=1)  # [B, p]
        sq_norms += tf.reduce_sum(tf.square(bias), axis=1)

    def clipped_sums(c):
        sums = [(layer.kernel, tf.reshape(kernel_sum(c), layer.kernel.shape))]
        if layer.use_bias:
            sums.append((layer.bias, _weighted_sum(c, bias)))
        return sums

    return sq_norms, clipped_sums


def _norm_terms(layer, calls, grads, group_size=1):
    """Per-record gradients of gamma/beta: sum over non-parameter axes (and over
    the k rows of a record)."""
    rank = calls[0][0].shape.rank
    param_axes = _param_axes(layer, rank)
    axes = [a for a in range(1, rank) if a not in param_axes]
    per_example = []
    if layer.scale:
        per_example.append((layer.gamma, tf.add_n(
            [tf.reduce_sum(gz * x_hat, axes) for (x_hat, _), gz in zip(calls, grads)])))
    if layer.center:
        per_example.append((layer.beta, tf.add_n(
            [tf.reduce_sum(gz, axes) for gz in grads])))
    if group_size > 1:
        per_example = [(v, tf.reduce_sum(tf.reshape(g, [-1, group_size, *g.shape[1:]]), 1))
                       for v, g in per_example]
    sq_norms = tf.add_n([tf.reduce_sum(tf.square(g), list(range(1, g.shape.rank)))
                         for _, g in per_example])

    def clipped_sums(c):
        return [(v, _weighted_sum(c, g)) for v, g in per_example]

    return sq_norms, clipped_sums


def _clip_factors(per_example_norms, l2_norm_clip):
    """c_i = min(1, C / ||g_i||), as in TF Privacy's compute_clip_weights."""
    return l2_norm_clip / tf.maximum(l2_norm_clip, per_example_norms)


def _check_losses(losses):
    if losses.shape.rank != 1:
        raise errors.SettingsError(
            f"per_example_loss_fn must return a [B] tensor, got {losses.shape}")


def clipped_gradient_sum(model, per_example_loss_fn, inputs, l2_norm_clip,
                         method="auto", group_size=1):
    """Sum over the batch of per-record gradients, each clipped to L2 norm C.

    A record is one example (``group_size`` 1) or k = ``group_size``
    consecutive rows of the batch (e.g. the k patches of one patient): the
    record's gradient is that of the sum of its rows' losses, and it is
    clipped as a whole. The batch size must be a multiple of k.

    Book-keeping ghost clipping: one forward pass records each trainable layer's
    input and pre-activation output z, one backward pass gives G = d(sum_i
    loss_i)/dz, per-example norms come from (input, G) per layer (see
    `_linear_terms`, `_norm_terms`) and the clipped sum reuses the same tensors
    with G scaled by c_i: no second backward pass. Works in tf.function with an
    unknown batch size, including B = 0 (zero sum).

    Guarantee: each example's contribution to the sum has L2 norm <= C over ALL
    trainable variables jointly, under the module's assumptions (see module
    docstring; in particular `model` is a functional/Sequential Keras model
    whose trainable layers are in SUPPORTED_LAYERS).

    Args:
      model: the critic.
      per_example_loss_fn: `(critic, inputs) -> [B]`, e.g. `wgan_critic_loss`.
      inputs: tensor or tuple of tensors, batch dimension first.
      l2_norm_clip: C (float or scalar tensor).
      method: "auto" (per-layer rule), or "ghost"/"direct" for every layer.
      group_size: rows per record (static int >= 1).

    Kept in one piece (the body is ~35 lines after this docstring): the tape, the recorded
    calls and the per-layer terms share state that splitting would only pass around.

    Returns:
      (clipped_sum, per_record_norms): a list aligned with
      `model.trainable_variables`, and the unclipped norms ||g_i|| [B / k].
    """
    if method not in METHODS:
        raise errors.SettingsError(f"method must be one of {METHODS}, got {method!r}")
    _check_group_size(group_size)
    check_per_example(model)
    if not gradient_clipping_utils.has_internal_compute_graph(model):
        raise errors.SettingsError("model must be a functional or built Sequential model")
    tape = tf.GradientTape(watch_accessed_variables=False)
    recorder = _Recorder(model, tape)
    with tape:
        losses = per_example_loss_fn(recorder, inputs)
        total_loss = tf.reduce_sum(losses)
    _check_losses(losses)
    if not recorder.layers:
        raise errors.SettingsError("the loss did not call any trainable layer of the model")
    calls = [recorder.calls[id(layer)] for layer in recorder.layers]
    flat_grads = tape.gradient(total_loss, [z for cs in calls for _, z in cs],
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
    terms = []
    for layer, layer_calls in zip(recorder.layers, calls):
        grads, flat_grads = flat_grads[:len(layer_calls)], flat_grads[len(layer_calls):]
        if type(layer) in _LINEAR_LAYERS:
            terms.append(_linear_terms(layer, layer_calls, grads, method, group_size))
        else:
            terms.append(_norm_terms(layer, layer_calls, grads, group_size))
    # Ghost norms are sums of products and may round to slightly below zero.
    norms = tf.sqrt(tf.maximum(tf.add_n([sq for sq, _ in terms]), 0.0))
    c = _clip_factors(norms, l2_norm_clip)
    sums = {}
    for _, clipped_sums in terms:
        for var, grad in clipped_sums(c):
            sums[var.ref()] = grad
    return [sums.get(v.ref(), tf.zeros_like(v)) for v in model.trainable_variables], norms


def clipped_gradient_sum_vmap(model, per_example_loss_fn, inputs, l2_norm_clip,
                              group_size=1):
    """Same contract as `clipped_gradient_sum`, via per-record gradients.

    Materialises every record's full gradient with tf.vectorized_map (memory
    B / k x #parameters), so any per-example loss works, including ones with an
    input-gradient penalty (WGAN-GP). Each record is evaluated as a batch of
    its k rows with `model(x, training=True)`.
    """
    _check_group_size(group_size)
    check_per_example(model)
    variables = model.trainable_variables

    def critic(x, training=True):
        return model(x, training=training)

    def example_gradients(batch):  # the k rows of one record
        with tf.GradientTape() as tape:
            losses = per_example_loss_fn(critic, batch)
            _check_losses(losses)
            loss = tf.reduce_sum(losses)
        return tape.gradient(loss, variables,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def clipped_sum():
        per_example = tf.vectorized_map(example_gradients, inputs)
        norms = tf.sqrt(tf.add_n(
            [tf.reduce_sum(tf.square(g), list(range(1, g.shape.rank)))
             for g in per_example]))
        c = _clip_factors(norms, l2_norm_clip)
        return [_weighted_sum(c, g) for g in per_example], norms

    def empty_batch():  # vectorized_map cannot run zero iterations
        return [tf.zeros_like(v) for v in variables], tf.zeros([0])

    inputs = tf.nest.map_structure(
        lambda t: tf.reshape(t, [-1, group_size, *t.shape[1:]]), inputs)
    batch_size = tf.shape(tf.nest.flatten(inputs)[0])[0]
    return tf.cond(batch_size > 0, clipped_sum, empty_batch)


def _check_group_size(group_size):
    if not isinstance(group_size, int) or group_size < 1:
        raise errors.SettingsError(f"group_size must be a positive int, got {group_size!r}")


def norm_stats(per_example_norms, l2_norm_clip):
    """Norm quantiles (nearest rank) and clipped fraction of one batch.

    NOT private: these are functions of the private batch outside the DP
    mechanism; logging them releases information the privacy accounting does
    not cover. Zeros for an empty batch.
    """
    batch_size = tf.size(per_example_norms)
    padded = tf.concat([tf.sort(per_example_norms), [0.0]], axis=0)
    last = tf.cast(tf.maximum(batch_size - 1, 0), tf.float32)
    stats = {}
    for q in (0.1, 0.5, 0.9):
        index = tf.cast(tf.round(q * last), tf.int32)
        stats[f"norm_q{round(q * 100):02d}"] = padded[index]
    clipped = tf.reduce_sum(tf.cast(per_example_norms > l2_norm_clip, tf.float32))
    stats["clipped_fraction"] = tf.math.divide_no_nan(
        clipped, tf.cast(batch_size, tf.float32))
    stats["batch_size"] = batch_size
    return stats
