"""The private critic step under MirroredStrategy on 2 logical CPU devices (tests/conftest.py
splits the CPU): same update as one device, noise added exactly once, one global Poisson
sample, replicas in sync, training and resume under the strategy."""
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import distribute, errors, workdir
from tfdpgan.data import pipeline
from tfdpgan.dp import step
from tfdpgan.gan import losses, models, run, training, wgan
from tiny import TINY

PATCH = 16


@pytest.fixture(scope="module")
def mirrored():
    strategy = distribute.make_strategy("mirrored", cpu_devices=2)
    assert strategy.num_replicas_in_sync == 2
    return strategy


def _critic(weights=None):
    critic = models.build_critic(PATCH, base_filters=4, normalization="group")
    if weights is not None:
        critic.set_weights(weights)
    return critic


def _loss(critic, rows):
    real, fake, weight = rows
    return weight * losses.critic_loss("wgan")(critic, (real, fake))


def _rows(n, seed=0, zero_weight_from=None):
    rng = np.random.default_rng(seed)
    real = rng.uniform(-1, 1, (n, PATCH, PATCH, 2)).astype(np.float32)
    fake = rng.uniform(-1, 1, (n, PATCH, PATCH, 2)).astype(np.float32)
    weight = np.ones(n, np.float32)
    if zero_weight_from is not None:
        weight[zero_weight_from:] = 0
    return real, fake, weight


def _private_step(critic, *, noise, clip, expected, lr=1.0, seed=0):
    return step.PrivateStep(critic, tf.keras.optimizers.legacy.SGD(lr), _loss,
                            l2_norm_clip=clip, noise_multiplier=noise,
                            expected_batch_size=expected,
                            rng=tf.random.Generator.from_seed(seed))


def _distributed_update(strategy, weights, rows, *, noise, clip, expected, chunk, seed=0,
                        steps=1):
    """The replicas' critic weights after each of ``steps`` distributed private steps on the
    global ``rows``: [step][variable] -> (replica 0, replica 1) arrays."""
    with strategy.scope():
        critic = _critic(weights)
        private = _private_step(critic, noise=noise, clip=clip, expected=expected, seed=seed)
    real, fake, weight = (tf.constant(a) for a in rows)
    both, weight = distribute.pad_global_batch(tf.concat([real, fake], -1), weight,
                                               strategy.num_replicas_in_sync, chunk)
    step_fn = distribute.replicated(
        strategy, lambda both, weight: private((both[..., :2], both[..., 2:], weight)))
    snapshots = []
    for _ in range(steps):
        step_fn(both, weight)
        snapshots.append([tuple(x.numpy() for x in v.values)
                          for v in critic.trainable_variables])
    return snapshots


def test_two_replicas_give_the_one_device_update_without_noise(mirrored):
    weights = _critic().get_weights()
    rows = _rows(13, seed=1)   # odd: the replicas' slices carry weight-0 padding
    single = _critic(weights)
    _private_step(single, noise=0.0, clip=0.05, expected=12.0)(
        tuple(tf.constant(a) for a in rows))
    replicas = _distributed_update(mirrored, weights, rows, noise=0.0, clip=0.05,
                                   expected=12.0, chunk=9)[0]
    for v, (r0, r1) in zip(single.trainable_variables, replicas):
        np.testing.assert_allclose(r0, v.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(r0, r1)   # replicas in sync
    changed = [np.max(np.abs(v.numpy() - w)) for v, w in
               zip(single.trainable_variables, weights)]
    assert max(changed) > 1e-4   # the step did something (not a vacuous comparison)


def test_global_noise_std_is_sigma_c_over_expected_batch(mirrored):
    """All rows weight 0: the update is pure noise, -N(0, (σC)^2)/E per coordinate with SGD
    lr 1. Noise on every replica would give sqrt(2) times that std, noise / R 1/sqrt(2)."""
    sigma, clip, expected = 1.3, 0.5, 10.0
    weights = _critic().get_weights()
    rows = _rows(8, zero_weight_from=0)
    snapshots = _distributed_update(mirrored, weights, rows, noise=sigma, clip=clip,
                                    expected=expected, chunk=8, seed=3, steps=8)
    before = [weights] + [[r0 for r0, _ in snap] for snap in snapshots[:-1]]
    deltas = np.concatenate([(r0 - w).ravel() for snap, prev in zip(snapshots, before)
                             for (r0, _), w in zip(snap, prev)])
    assert deltas.size > 5000
    expected_std = sigma * clip / expected
    measured = float(np.std(deltas))
    # sampling error of the std over n normals: ~1/sqrt(2n) relative (< 1% here)
    assert abs(measured / expected_std - 1.0) < 0.05, (measured, expected_std)
    assert abs(float(np.mean(deltas))) < 4 * expected_std / math.sqrt(deltas.size)
    for snap in snapshots:   # one noise draw, applied identically everywhere
        for r0, r1 in snap:
            np.testing.assert_array_equal(r0, r1)


def test_tf_privacy_backend_is_refused_with_two_replicas(mirrored):
    with mirrored.scope():
        critic = _critic()
        opt = step.make_optimizer("rmsprop", 1e-3, dp_backend="tf_privacy", l2_norm_clip=1.0,
                                  noise_multiplier=1.0)
        private = step.PrivateStep(critic, opt, _loss, l2_norm_clip=1.0, noise_multiplier=1.0,
                                   expected_batch_size=4, backend="tf_privacy")
    rows = tuple(tf.constant(a) for a in _rows(4))
    with pytest.raises(errors.SettingsError, match="every replica"):
        mirrored.run(private, args=(rows,))


def test_padding_and_slices_keep_the_one_global_poisson_sample(mirrored):
    """Every sampled record lands in exactly one replica's slice, once; the pads have weight 0;
    each record's inclusion rate over many steps is q (the global sample's rate)."""
    n, q, steps, group = 50, 0.2, 400, 2
    counts = np.zeros(n)
    chunk = distribute.chunk_records(n * q, 2)

    split = distribute.replicated(mirrored, lambda ids, weight: (ids, weight))

    for s in range(steps):
        idx = pipeline.poisson_indices(n, q, seed=7, step=s)
        counts[idx] += 1
        if s >= 40:   # the split itself: checked on 40 steps (slices are exact, not random)
            continue
        rows = np.repeat(idx, group).astype(np.float32)   # a record = 2 consecutive rows
        ids = tf.constant(rows)[:, None, None, None] * tf.ones([1, 2, 2, 1])
        padded, weight = distribute.pad_global_batch(
            ids, tf.ones([len(rows)]), 2, chunk, group_size=group)
        assert padded.shape[0] % (2 * chunk * group) == 0
        got_ids, got_w = (mirrored.gather(x, axis=0) for x in split(padded, weight))
        got = got_ids.numpy()[:, 0, 0, 0][got_w.numpy() > 0]
        np.testing.assert_array_equal(got, rows)   # no record lost, duplicated or split
    rate = counts / steps
    # binomial: each record's rate within 4.5 SD of q; the overall rate much tighter
    sd = math.sqrt(q * (1 - q) / steps)
    assert np.all(np.abs(rate - q) < 4.5 * sd)
    assert abs(rate.mean() - q) < 4.5 * sd / math.sqrt(n)


def test_wgan_critic_and_generator_steps_keep_replicas_in_sync(mirrored):
    config = wgan.WGANConfig(latent_dim=8, noise_multiplier=1.0, l2_norm_clip=0.1,
                             expected_batch_size=6.0, ema_decay=0.5)
    with mirrored.scope():
        gan = wgan.WGAN(models.build_generator(8, PATCH, 4), _critic(), config, seed=0)
    real = tf.constant(_rows(7)[0])
    stats = gan.critic_step(real)
    assert int(stats["batch_size"]) == 7
    assert math.isfinite(float(stats["update_norm"]))
    assert math.isfinite(float(gan.generator_step(tf.constant(6))["generator_loss"]))
    assert gan.fake_scores(tf.constant(6)).shape[0] == 6
    for model in (gan.critic, gan.generator, gan.ema_generator):
        # (BatchNorm's moving statistics are per-replica ON_READ variables, read as the mean)
        for v in model.variables:
            if v.synchronization == tf.VariableSynchronization.ON_READ:
                continue
            a, b = (x.numpy() for x in v.values)
            np.testing.assert_array_equal(a, b, err_msg=v.name)
    for v in gan.critic.trainable_variables:   # weight clipping applied on both
        assert np.max(np.abs(v.values[1].numpy())) <= config.weight_clip + 1e-7


def _card(w):
    with open(workdir.path(w, workdir.PRIVACY_JSON)) as f:
        return {k: v for k, v in json.load(f).items() if k != "tfdpgan_version"}


def test_training_under_mirrored_resumes_and_has_the_single_device_card(tiny_dataset,
                                                                        tmp_path, monkeypatch):
    settings = dict(TINY, critic_steps=20, checkpoint_every=10, keep_checkpoints=5)
    single = str(tmp_path / "single")
    training.train(run.TrainConfig(workdir=single, data=tiny_dataset[1], epsilon=3.0,
                                   **settings))
    mirrored_dir = str(tmp_path / "mirrored")
    config = run.TrainConfig(workdir=mirrored_dir, data=tiny_dataset[1], epsilon=3.0,
                             strategy="mirrored", cpu_devices=2, **settings)
    training.train(config)
    assert _card(mirrored_dir) == _card(single)
    # resume: drop the final checkpoint and rerun; it continues from step 10
    ckpt = workdir.path(mirrored_dir, workdir.CHECKPOINTS)
    for name in os.listdir(ckpt):
        if name.startswith("ckpt-20"):
            os.remove(os.path.join(ckpt, name))
    tf.compat.v1.train.update_checkpoint_state(
        ckpt, os.path.join(ckpt, "ckpt-10"),
        all_model_checkpoint_paths=[os.path.join(ckpt, "ckpt-10")])
    resumed, resume = [], training._resume   # pylint: disable=protected-access
    monkeypatch.setattr(training, "_resume",
                        lambda manager, latest, *a: (resumed.append(latest),
                                                     resume(manager, latest, *a)))
    training.train(config)
    assert len(resumed) == 1 and resumed[0].endswith("ckpt-10")
    assert tf.train.latest_checkpoint(ckpt).endswith("ckpt-20")
    assert _card(mirrored_dir) == _card(single)


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG"), ("{not json", "not a valid cluster spec"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
     "not a valid cluster spec")])
def test_multi_worker_without_a_valid_tf_config_is_refused(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(errors.SettingsError, match=message):
        distribute.make_strategy("multi_worker")
    with pytest.raises(errors.SettingsError, match="strategy must be one of"):
        distribute.make_strategy("tpu")
