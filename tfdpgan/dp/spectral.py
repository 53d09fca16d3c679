"""Spectrally normalised Conv2D and Dense layers (Miyato et al. 2018) that the fast DP path clips.

The layer uses the effective kernel  W~ = W / sigma,  sigma = v^T W u'  with
v = normalise(W u), u' = normalise(W^T v), where W is the kernel reshaped to [inputs, outputs]
and u a non-trainable state vector (one power iteration from u; v and u' are constants for the
gradient, as in SNGAN). ``update_power_iterations`` sets u <- u' after each critic update: it
reads only W, so the state is a function of released parameters, never of data.

How it stays differentially private on the ghost path (tfdpgan.dp.clipping): a record's
gradient is taken, and clipped, with respect to the EFFECTIVE kernel W~ (the tensor the layer
multiplies its input by), jointly with every other trainable variable; the Gaussian noise is
added to that clipped sum; ``to_variable_gradients`` then maps the noised W~-gradient to W by
the vector-Jacobian product of W -> W~ at the current (W, u). That map is linear and depends
only on the parameters (outputs of earlier DP steps), not on the batch: post-processing, so the
step is the same sampled Gaussian mechanism and the accounting is unchanged. (The vmap and
tf_privacy paths differentiate through the layer's call and clip the gradient with respect to
W itself: also a valid per-record bound.)
"""
import tensorflow as tf

__all__ = ["SpectralConv2D", "SpectralDense", "REPARAMETRIZED", "update_power_iterations",
           "to_variable_gradients"]


class _Spectral:
    """What both layers share: the state u, the effective kernel, the power iteration."""

    def _add_u(self):
        self.u = self.add_weight(
            "sn_u", shape=[self.kernel.shape[-1]], trainable=False,
            initializer=tf.keras.initializers.RandomNormal(stddev=1.0),
            # written once per step in cross-replica context; identical on every replica
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def _power_iteration(self, kernel):
        """(sigma, u') of the flattened ``kernel`` from the state u (constants for gradients)."""
        w = tf.reshape(kernel, [-1, kernel.shape[-1]])
        u = tf.math.l2_normalize(tf.cast(self.u, w.dtype))
        v = tf.stop_gradient(tf.math.l2_normalize(tf.linalg.matvec(w, u)))
        u_next = tf.stop_gradient(tf.math.l2_normalize(tf.linalg.matvec(w, v, transpose_a=True)))
        sigma = tf.tensordot(v, tf.linalg.matvec(w, u_next), axes=1)
        return sigma, u_next

    def normalized_kernel(self, kernel=None):
        """W~ = W / sigma(W, u) (``kernel`` defaults to the layer's variable)."""
        kernel = self.kernel if kernel is None else kernel
        sigma, _ = self._power_iteration(kernel)
        return kernel / sigma

    def update_u(self):
        self.u.assign(self._power_iteration(self.kernel)[1])


class SpectralConv2D(_Spectral, tf.keras.layers.Conv2D):
    """Conv2D(channels_last, groups 1, no dilation) with kernel W / sigma(W)."""

    def build(self, input_shape):
        super().build(input_shape)
        if (self.data_format != "channels_last" or self.groups != 1 or
                tuple(self.dilation_rate) != (1, 1)):
            raise ValueError(f"{self.name}: only channels_last, groups=1, no dilation")
        self._add_u()

    def call(self, inputs):
        z = tf.nn.conv2d(inputs, self.normalized_kernel(), strides=self.strides,
                         padding=self.padding.upper())
        if self.use_bias:
            z = z + self.bias
        return self.activation(z)


class SpectralDense(_Spectral, tf.keras.layers.Dense):
    """Dense with kernel W / sigma(W)."""

    def build(self, input_shape):
        super().build(input_shape)
        self._add_u()

    def call(self, inputs):
        z = tf.tensordot(inputs, self.normalized_kernel(), axes=1)
        if self.use_bias:
            z = z + self.bias
        return self.activation(z)


REPARAMETRIZED = (SpectralConv2D, SpectralDense)


def _layers(model):
    return [layer for layer in model.submodules if isinstance(layer, REPARAMETRIZED)]


def update_power_iterations(model):
    """u <- u' in every spectral layer of ``model`` (once per critic update; data-free)."""
    for layer in _layers(model):
        layer.update_u()


def to_variable_gradients(model, grads):
    """Map gradients aligned with ``model.trainable_variables`` whose spectral-layer kernel
    entries are with respect to the effective kernel W~ to gradients with respect to W (the
    VJP of W -> W~ at the current state; linear and data-independent)."""
    layers = _layers(model)
    if not layers:
        return grads
    index = {v.ref(): i for i, v in enumerate(model.trainable_variables)}
    grads = list(grads)
    for layer in layers:
        i = index[layer.kernel.ref()]
        with tf.GradientTape() as tape:
            tape.watch(layer.kernel)
            effective = layer.normalized_kernel()
        grads[i] = tape.gradient(effective, layer.kernel, output_gradients=grads[i])
    return grads
