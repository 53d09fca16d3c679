"""Per-example clipping, noise and normalisation of the DP critic step."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_privacy

from tfdpgan.dp import clipping, step
from tfdpgan.gan import losses, models

PATCH = 32
BATCH = 6


def _randomize(model, seed):
    """Random weights, so that GroupNorm gamma/beta and biases matter."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))


def _pairs(batch, shape, seed):
    rng = np.random.default_rng(seed)
    return tuple(tf.constant(rng.uniform(-1, 1, (batch, *shape)), tf.float32)
                 for _ in range(2))


def _single_loss(critic, inputs):
    return critic(inputs)[:, 0]


def _naive(model, loss_fn, inputs, l2_norm_clip):
    """Per-example loop: tape per example, tf.clip_by_global_norm."""
    total = [tf.zeros_like(v) for v in model.trainable_variables]
    norms = []
    batch = tf.nest.flatten(inputs)[0].shape[0]
    for i in range(batch):
        example = tf.nest.map_structure(lambda t: t[i:i + 1], inputs)
        with tf.GradientTape() as tape:
            loss = loss_fn(model, example)[0]
        grads = tape.gradient(loss, model.trainable_variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        clipped, norm = tf.clip_by_global_norm(grads, l2_norm_clip)
        total = [t + g for t, g in zip(total, clipped)]
        norms.append(norm.numpy())
    return total, np.array(norms)


def _tf_privacy(model, loss_fn, inputs, l2_norm_clip):
    """TF Privacy's own path: mean of clipped microbatch gradients, times B."""
    batch = tf.nest.flatten(inputs)[0].shape[0]
    optimizer = tensorflow_privacy.DPKerasSGDOptimizer(
        l2_norm_clip=l2_norm_clip, noise_multiplier=0.0,
        num_microbatches=batch, learning_rate=0.1)
    grads_and_vars = optimizer._compute_gradients(  # pylint: disable=protected-access
        lambda: loss_fn(model, inputs),
        model.trainable_variables)
    return [g * batch for g, _ in grads_and_vars]


def _assert_grads_close(actual, expected, rtol=1e-4):
    scale = max(float(tf.reduce_max(tf.abs(e))) for e in expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=rtol,
                                   atol=rtol * scale)


@pytest.fixture(scope="module")
def critic():
    model = models.build_critic(patch_size=PATCH, base_filters=4)
    _randomize(model, 0)
    return model


@pytest.fixture(scope="module")
def pairs():
    return _pairs(BATCH, (PATCH, PATCH, 2), 1)


@pytest.fixture(scope="module")
def reference(critic, pairs):
    """Clip factor -> (naive clipped sum, naive norms); clip relative to norms."""
    _, norms = _naive(critic, losses.wgan_critic, pairs, 1.0)
    clips = {"binding": 0.1 * norms.min(), "mixed": float(np.median(norms)),
             "none": 10.0 * norms.max()}
    return {name: (clip, *_naive(critic, losses.wgan_critic, pairs, clip))
            for name, clip in clips.items()}


@pytest.mark.parametrize("clip", ["binding", "mixed", "none"])
@pytest.mark.parametrize("method", ["auto", "ghost", "direct", "vmap"])
def test_wgan_pair_sum_matches_naive(critic, pairs, reference, clip, method):
    l2_norm_clip, expected, expected_norms = reference[clip]
    if method == "vmap":
        clipped_sum, norms = clipping.clipped_gradient_sum_vmap(
            critic, losses.wgan_critic, pairs, l2_norm_clip)
    else:
        clipped_sum, norms = clipping.clipped_gradient_sum(
            critic, losses.wgan_critic, pairs, l2_norm_clip, method=method)
    np.testing.assert_allclose(norms.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


@pytest.mark.parametrize("clip", ["binding", "mixed", "none"])
def test_wgan_pair_sum_matches_tf_privacy(critic, pairs, reference, clip):
    l2_norm_clip, _, _ = reference[clip]
    clipped_sum, _ = clipping.clipped_gradient_sum(
        critic, losses.wgan_critic, pairs, l2_norm_clip)
    _assert_grads_close(clipped_sum, _tf_privacy(
        critic, losses.wgan_critic, pairs, l2_norm_clip))


def test_pair_is_one_example(critic, pairs, reference):
    """The norm is of the pair's summed gradient, not of real and fake apart."""
    _, _, pair_norms = reference["none"]
    real, fake = pairs
    _, real_norms = _naive(critic, _single_loss, real, 1.0)
    _, fake_norms = _naive(critic, _single_loss, fake, 1.0)
    _, norms = clipping.clipped_gradient_sum(
        critic, losses.wgan_critic, pairs, 1.0)
    np.testing.assert_allclose(norms.numpy(), pair_norms, rtol=1e-4)
    separate = np.sqrt(real_norms**2 + fake_norms**2)
    assert np.all(np.abs(separate - pair_norms) > 1e-2 * pair_norms)


def _one_layer_model(layer, input_shape):
    """Only `layer` is trainable; a fixed nonlinear head makes the score."""
    inputs = tf.keras.Input(input_shape)
    x = tf.keras.layers.Flatten()(layer(inputs))
    score = tf.keras.layers.Lambda(
        lambda h: tf.reduce_sum(tf.sin(h), axis=1, keepdims=True))(x)
    return tf.keras.Model(inputs, score)


LAYERS = {
    "dense": (lambda: tf.keras.layers.Dense(5), (7,)),
    "dense_tanh": (lambda: tf.keras.layers.Dense(5, activation="tanh"), (7,)),
    "dense_rank3": (lambda: tf.keras.layers.Dense(5), (3, 7)),
    "conv_same_s1": (lambda: tf.keras.layers.Conv2D(4, 3, padding="same"), (7, 7, 3)),
    "conv_valid_s1": (lambda: tf.keras.layers.Conv2D(4, 3), (7, 7, 3)),
    "conv_same_s2": (lambda: tf.keras.layers.Conv2D(4, 3, 2, "same"), (7, 7, 3)),
    "conv_valid_s2": (lambda: tf.keras.layers.Conv2D(4, 3, 2), (7, 7, 3)),
    "conv_k4_s2_nobias": (lambda: tf.keras.layers.Conv2D(
        4, 4, 2, "same", use_bias=False), (8, 8, 2)),
    "group_norm": (lambda: tf.keras.layers.GroupNormalization(2), (5, 5, 4)),
    "layer_norm": (lambda: tf.keras.layers.LayerNormalization(), (5, 5, 4)),
    "layer_norm_hwc": (lambda: tf.keras.layers.LayerNormalization(
        axis=[1, 2, 3]), (5, 5, 4)),
}


@pytest.mark.parametrize("method", ["ghost", "direct"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_per_layer_norms_match_naive(name, method):
    make_layer, input_shape = LAYERS[name]
    model = _one_layer_model(make_layer(), input_shape)
    _randomize(model, 2)
    pairs = _pairs(4, input_shape, 3)
    _, expected_norms = _naive(model, losses.wgan_critic, pairs, 1.0)
    clip = float(np.median(expected_norms))
    expected, _ = _naive(model, losses.wgan_critic, pairs, clip)
    clipped_sum, norms = clipping.clipped_gradient_sum(
        model, losses.wgan_critic, pairs, clip, method=method)
    np.testing.assert_allclose(norms.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


def test_single_input_loss(critic, pairs):
    real, _ = pairs
    expected, expected_norms = _naive(critic, _single_loss, real, 0.5)
    clipped_sum, norms = clipping.clipped_gradient_sum(critic, _single_loss, real, 0.5)
    np.testing.assert_allclose(norms.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


def test_huge_gradient_changes_sum_by_at_most_clip():
    inputs = tf.keras.Input((8, 8, 2))
    x = tf.keras.layers.LeakyReLU(0.2)(tf.keras.layers.Conv2D(4, 3, 2)(inputs))
    model = tf.keras.Model(
        inputs, tf.keras.layers.Dense(1)(tf.keras.layers.Flatten()(x)))
    _randomize(model, 4)
    real, fake = _pairs(5, (8, 8, 2), 5)
    real = tf.concat([1e4 * real[:1], real[1:]], axis=0)
    l2_norm_clip = 1.0
    with_all, norms = clipping.clipped_gradient_sum(
        model, losses.wgan_critic, (real, fake), l2_norm_clip)
    without, _ = clipping.clipped_gradient_sum(
        model, losses.wgan_critic, (real[1:], fake[1:]), l2_norm_clip)
    assert norms[0] > 1e3 * l2_norm_clip
    difference = tf.linalg.global_norm([a - b for a, b in zip(with_all, without)])
    assert 0.999 * l2_norm_clip <= difference <= l2_norm_clip * (1 + 1e-4)


def test_noise_std_and_mean():
    l2_norm_clip, noise_multiplier, expected_batch_size = 2.0, 1.5, 10.0
    zero_sum = [tf.zeros([200, 250]), tf.zeros([3])]
    model = _model_with(tf.keras.layers.GroupNormalization(groups=2))
    private = step.PrivateStep(model, tf.keras.optimizers.SGD(1.0), losses.wgan_critic,
                               l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
                               expected_batch_size=expected_batch_size)
    noised = tf.function(private.noised_mean)
    first, second = noised(zero_sum)[0].numpy(), noised(zero_sum)[0].numpy()
    std = noise_multiplier * l2_norm_clip / expected_batch_size
    for draw in (first, second):
        assert draw.std() == pytest.approx(std, rel=0.03)
        assert abs(draw.mean()) < 4 * std / np.sqrt(draw.size)
    assert not np.allclose(first, second)


def test_normalised_by_expected_not_realised_batch(critic, pairs):
    """With zero noise the SGD(lr=1) update is -clipped_sum / expected size."""
    model = models.build_critic(patch_size=PATCH, base_filters=4)
    model.set_weights(critic.get_weights())
    realised = tuple(t[:3] for t in pairs)
    clipped_sum, _ = clipping.clipped_gradient_sum(
        model, losses.wgan_critic, realised, 0.5)
    before = [v.numpy() for v in model.trainable_variables]
    private = step.PrivateStep(
        model, tf.keras.optimizers.SGD(1.0), losses.wgan_critic, l2_norm_clip=0.5,
        noise_multiplier=0.0, expected_batch_size=10)
    private(realised)
    updates = [b - v.numpy() for b, v in zip(before, model.trainable_variables)]
    _assert_grads_close([tf.constant(u) for u in updates],
                        [g / 10.0 for g in clipped_sum])
    for expected_batch_size in (3.0, 10.0):
        grads = step.PrivateStep(
            model, tf.keras.optimizers.SGD(1.0), losses.wgan_critic, l2_norm_clip=0.5,
            noise_multiplier=0.0, expected_batch_size=expected_batch_size
        ).noised_mean(clipped_sum)
        _assert_grads_close(grads, [g / expected_batch_size for g in clipped_sum])


def _model_with(layer):
    inputs = tf.keras.Input((8, 8, 2))
    x = layer(tf.keras.layers.Conv2D(4, 3, 2)(inputs))
    return tf.keras.Model(
        inputs, tf.keras.layers.Dense(1)(tf.keras.layers.Flatten()(x)))


@pytest.mark.parametrize("vmap", [False, True])
def test_batch_norm_rejected(vmap):
    model = _model_with(tf.keras.layers.BatchNormalization())
    clipped_sum = (clipping.clipped_gradient_sum_vmap if vmap
                   else clipping.clipped_gradient_sum)
    with pytest.raises(ValueError, match="BatchNormalization"):
        clipped_sum(model, losses.wgan_critic, _pairs(2, (8, 8, 2), 0), 1.0)


def test_unsupported_trainable_layer_rejected():
    model = _model_with(tf.keras.layers.Conv2DTranspose(2, 3))
    with pytest.raises(NotImplementedError, match="clipped_gradient_sum_vmap"):
        clipping.clipped_gradient_sum(
            model, losses.wgan_critic, _pairs(2, (8, 8, 2), 0), 1.0)


@pytest.mark.parametrize("vmap", [False, True])
def test_variable_batch_in_one_tf_function(critic, pairs, vmap):
    model = models.build_critic(patch_size=PATCH, base_filters=4)
    model.set_weights(critic.get_weights())
    private = step.PrivateStep(
        model, tf.keras.optimizers.SGD(0.1), losses.wgan_critic, l2_norm_clip=1.0,
        noise_multiplier=0.0, expected_batch_size=4,
        clipping_method="vmap" if vmap else "ghost")
    spec = [tf.TensorSpec([None, PATCH, PATCH, 2])] * 2
    run = tf.function(lambda real, fake: clipping.norm_stats(
        private((real, fake))["per_record_norms"], 1.0), input_signature=spec)
    stats = run(*(t[:4] for t in pairs))
    traces = run.experimental_get_tracing_count()
    stats = run(*(t[:1] for t in pairs))
    assert stats["batch_size"] == 1
    before = model.get_weights()
    stats = run(*(t[:0] for t in pairs))
    assert run.experimental_get_tracing_count() == traces
    assert stats["batch_size"] == 0 and stats["norm_q50"] == 0.0
    assert stats["clipped_fraction"] == 0.0
    for b, a in zip(before, model.get_weights()):  # noise 0: zero update
        np.testing.assert_array_equal(b, a)


def test_empty_batch_gives_zero_sum(critic, pairs):
    empty = tuple(t[:0] for t in pairs)
    clipped_sum, norms = clipping.clipped_gradient_sum(
        critic, losses.wgan_critic, empty, 1.0)
    assert norms.shape == (0,)
    assert all(not np.any(g.numpy()) for g in clipped_sum)


def test_norm_stats():
    norms = tf.range(1.0, 11.0)
    stats = clipping.norm_stats(norms, 5.5)
    assert float(stats["clipped_fraction"]) == pytest.approx(0.5)
    assert [float(stats[k]) for k in ("norm_q10", "norm_q50", "norm_q90")] == [
        2.0, 5.0, 9.0]
    assert stats["batch_size"] == 10


def _gradient_penalty_loss(critic, inputs):
    """WGAN-GP per-example loss: needs the vmap path (second order)."""
    real, fake = inputs
    mixed = 0.3 * real + 0.7 * fake
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        score = critic(mixed)
    slopes = tf.norm(tf.reshape(tape.gradient(score, mixed), [tf.shape(mixed)[0], -1]),
                     axis=1)
    return critic(fake)[:, 0] - critic(real)[:, 0] + 10.0 * (slopes - 1.0)**2


def test_vmap_handles_gradient_penalty():
    model = _model_with(tf.keras.layers.LeakyReLU(0.2))
    _randomize(model, 6)
    pairs = _pairs(3, (8, 8, 2), 7)
    _, norms = _naive(model, _gradient_penalty_loss, pairs, 1.0)
    clip = float(np.median(norms))
    expected, expected_norms = _naive(model, _gradient_penalty_loss, pairs, clip)
    clipped_sum, norms = clipping.clipped_gradient_sum_vmap(
        model, _gradient_penalty_loss, pairs, clip)
    np.testing.assert_allclose(norms.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


def _ns_r1_loss(critic, inputs):
    """Non-saturating loss + R1 (gamma = 10): second order, the vmap path."""
    return losses.ns_critic(critic, inputs) + 5.0 * losses.r1_penalty(critic, inputs[0])


def test_vmap_handles_r1_penalty(pairs):
    model = models.build_critic(patch_size=PATCH, base_filters=4, normalization="none")
    _randomize(model, 8)
    _, norms = _naive(model, _ns_r1_loss, pairs, 1.0)
    clip = float(np.median(norms))
    expected, expected_norms = _naive(model, _ns_r1_loss, pairs, clip)
    clipped_sum, got = clipping.clipped_gradient_sum_vmap(model, _ns_r1_loss, pairs, clip)
    np.testing.assert_allclose(got.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    """D(x) = w.x + b has grad_x D = w everywhere: R1 = ||w||^2 for every row."""
    model = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(4, 4, 2)),
                                 tf.keras.layers.Dense(1)])
    _randomize(model, 9)
    w = model.layers[1].kernel.numpy()
    real = tf.random.normal([3, 4, 4, 2], seed=2)
    np.testing.assert_allclose(losses.r1_penalty(model, real).numpy(),
                               np.full(3, np.sum(w ** 2)), rtol=1e-5)


# --- records of k rows (patient-level DP) ---------------------------------------------------

GROUP = 3  # rows per record: BATCH = 6 rows = 2 patients


def _mean_pair_loss(critic, inputs):
    """Row loss / k, so a record's loss is the mean over its k rows, as in TF Privacy's
    microbatches (which average the loss vector within each microbatch)."""
    return losses.wgan_critic(critic, inputs) / GROUP


def _tf_privacy_microbatches(model, loss_fn, inputs, l2_norm_clip, num_microbatches):
    optimizer = tensorflow_privacy.DPKerasSGDOptimizer(
        l2_norm_clip=l2_norm_clip, noise_multiplier=0.0,
        num_microbatches=num_microbatches, learning_rate=0.1)
    grads_and_vars = optimizer._compute_gradients(  # pylint: disable=protected-access
        lambda: loss_fn(model, inputs) * GROUP, model.trainable_variables)
    return [g * num_microbatches for g, _ in grads_and_vars]


@pytest.mark.parametrize("clip", ["binding", "none"])
@pytest.mark.parametrize("method", ["auto", "ghost", "direct", "vmap"])
def test_grouped_records_match_tf_privacy_microbatches(critic, pairs, reference, clip,
                                                       method):
    """Independent check: TF Privacy's microbatching clips the gradient of each
    microbatch's mean loss; with k = 3 rows per record ours must give the same sum."""
    l2_norm_clip = reference[clip][0]
    if method == "vmap":
        clipped_sum, norms = clipping.clipped_gradient_sum_vmap(
            critic, _mean_pair_loss, pairs, l2_norm_clip, group_size=GROUP)
    else:
        clipped_sum, norms = clipping.clipped_gradient_sum(
            critic, _mean_pair_loss, pairs, l2_norm_clip, method=method, group_size=GROUP)
    assert norms.shape == (BATCH // GROUP,)
    _assert_grads_close(clipped_sum, _tf_privacy_microbatches(
        critic, _mean_pair_loss, pairs, l2_norm_clip, BATCH // GROUP))
    # and the per-record norms are those of the group's summed gradient (naive loop)
    for r in range(BATCH // GROUP):
        rows = tuple(t[r * GROUP:(r + 1) * GROUP] for t in pairs)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(_mean_pair_loss(critic, rows))
        grads = tape.gradient(loss, critic.trainable_variables)
        np.testing.assert_allclose(norms[r].numpy(), tf.linalg.global_norm(grads).numpy(),
                                   rtol=1e-4)


def test_one_patient_moves_the_sum_by_at_most_the_clip(critic):
    """Neighbouring batches: with and without one patient (k rows, one with an extreme
    input so its gradient is huge). The clipped sums differ by <= C."""
    real, fake = _pairs(3 * GROUP, (PATCH, PATCH, 2), 7)
    real = tf.concat([real[:GROUP - 1] * 50.0, real[GROUP - 1:]], axis=0)  # patient 0
    clip = 1e-3
    with_patient, norms = clipping.clipped_gradient_sum(
        critic, _mean_pair_loss, (real, fake), clip, group_size=GROUP)
    without, _ = clipping.clipped_gradient_sum(
        critic, _mean_pair_loss, (real[GROUP:], fake[GROUP:]), clip, group_size=GROUP)
    assert norms[0] > 100 * clip
    diff = tf.linalg.global_norm([a - b for a, b in zip(with_patient, without)])
    assert float(diff) <= clip * (1 + 1e-4)
    assert float(diff) >= clip * (1 - 1e-3)  # a clipped record contributes exactly C


def test_group_size_must_divide_into_records(critic, pairs):
    with pytest.raises(ValueError, match="group_size"):
        clipping.clipped_gradient_sum(critic, _mean_pair_loss, pairs, 1.0, group_size=0)


@pytest.mark.parametrize("loss_name", ["hinge", "ns"])
@pytest.mark.parametrize("method", ["auto", "vmap"])
def test_modern_losses_clipped_sum_matches_naive(critic, pairs, loss_name, method):
    """hinge / non-saturating critic losses: fast per-example clipping == naive loop."""
    loss_fn = losses.critic_loss(loss_name)
    _, norms = _naive(critic, loss_fn, pairs, 1.0)
    clip = float(np.median(norms))            # some rows clipped, some not
    expected, expected_norms = _naive(critic, loss_fn, pairs, clip)
    if method == "vmap":
        clipped_sum, got = clipping.clipped_gradient_sum_vmap(critic, loss_fn, pairs, clip)
    else:
        clipped_sum, got = clipping.clipped_gradient_sum(critic, loss_fn, pairs, clip)
    np.testing.assert_allclose(got.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


@pytest.mark.parametrize("loss_name", ["wgan", "hinge", "ns"])
@pytest.mark.parametrize("method", ["auto", "ghost"])
def test_unnormalised_critic_clipped_sum_matches_naive(pairs, loss_name, method):
    """The modern recipe's critic (no GroupNorm, biases in every conv): fast per-example
    clipping == naive loop, with some rows clipped."""
    model = models.build_critic(patch_size=PATCH, base_filters=4, normalization="none")
    _randomize(model, 3)
    assert not any("group" in layer.name for layer in model.layers)
    loss_fn = losses.critic_loss(loss_name)
    _, norms = _naive(model, loss_fn, pairs, 1.0)
    clip = float(np.median(norms))
    expected, expected_norms = _naive(model, loss_fn, pairs, clip)
    clipped_sum, got = clipping.clipped_gradient_sum(model, loss_fn, pairs, clip, method=method)
    np.testing.assert_allclose(got.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)


@pytest.mark.parametrize("stages", [2, 3])
def test_frozen_stages_clip_and_noise_only_the_trainable_rest(pairs, stages):
    """A critic whose first stages are frozen (public prior features): the per-example
    norms and the clipped sum are those of the trainable variables alone (naive loop), and
    the noise of the DP step has exactly their dimension."""
    model = models.build_critic(patch_size=PATCH, base_filters=4)
    _randomize(model, 4)
    left = models.freeze_critic_stages(model, stages)
    assert left == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert left < sum(int(np.prod(v.shape)) for v in model.weights)
    loss_fn = losses.critic_loss("wgan")
    _, norms = _naive(model, loss_fn, pairs, 1.0)
    clip = float(np.median(norms))
    expected, expected_norms = _naive(model, loss_fn, pairs, clip)
    clipped_sum, got = clipping.clipped_gradient_sum(model, loss_fn, pairs, clip)
    assert len(clipped_sum) == len(model.trainable_variables)
    np.testing.assert_allclose(got.numpy(), expected_norms, rtol=1e-4)
    _assert_grads_close(clipped_sum, expected)
