"""The modern recipe's free parts: EMA, adaptive n_critic and a public prior cost no privacy."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import errors, workdir
from tfdpgan.gan import run, schedule, training, wgan
from tiny import TINY

# keys that differ between two otherwise identical runs for reasons other than privacy
_NOT_PRIVACY = {"public_prior"}


def _config(tmp_path, data, name, **changes):
    base = dict(TINY, critic_steps=6, epsilon=3.0, sampling_seed=5)
    base.update(changes)
    return run.TrainConfig(workdir=str(tmp_path / name), data=data, **base)


def _privacy(card):
    return {k: v for k, v in card.items() if k not in _NOT_PRIVACY}


@pytest.fixture(scope="module")
def plain_card(patch_records, tmp_path_factory):
    return training.train(_config(tmp_path_factory.mktemp("plain"), patch_records, "w"))


def test_ema_costs_no_privacy_and_is_what_is_released(patch_records, tmp_path, plain_card):
    gan_config = dataclasses.replace(TINY["gan"], ema_decay=0.5)
    config = _config(tmp_path, patch_records, "ema", gan=gan_config)
    card = training.train(config)
    assert _privacy(card) == _privacy(plain_card)
    _, gan, _ = run.restore(config.workdir)
    assert gan.ema_generator is not None
    raw, ema = gan.generator.get_weights(), gan.ema_generator.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(raw, ema))
    exported = tf.saved_model.load(workdir.path(config.workdir, workdir.GENERATOR))
    z = tf.random.normal([2, TINY["gan"].latent_dim], seed=1)
    out = exported.signatures["serving_default"](latent=z)["image"].numpy()
    np.testing.assert_allclose(out, gan.ema_generator(z, training=False)[..., :1].numpy(),
                               atol=1e-5)


def test_instance_noise_and_unnormalised_critic_cost_no_privacy(patch_records, tmp_path,
                                                                plain_card):
    """Instance noise randomises each row on its own and the critic's normalisation is
    architecture: neither changes the card (steps, σ, ε, δ)."""
    gan_config = dataclasses.replace(TINY["gan"], instance_noise=0.2, loss="hinge")
    config = _config(tmp_path, patch_records, "noisy", gan=gan_config, critic_norm="none")
    card = training.train(config)
    assert _privacy(card) == _privacy(plain_card)
    _, gan, _ = run.restore(config.workdir)
    assert not any("group" in layer.name for layer in gan.critic.layers)
    pairs = tf.zeros([4, *gan.critic.input_shape[1:]])
    noisy = gan.with_instance_noise(pairs)
    assert 0.1 < float(tf.math.reduce_std(noisy)) < 0.3


def test_adaptive_schedule_doubles_n_while_the_critic_is_weak():
    s = schedule.CriticSchedule(2, adaptive=True, target=0.6, max_n=8)
    fired = [s.critic_stepped() for _ in range(4)]
    assert fired == [False, True, False, True]
    assert s.update(tf.constant([0.5, 1.0, -1.0])) == pytest.approx(1 / 3)
    assert int(s.n) == 4
    s.update(tf.constant([1.0]))
    s.update(tf.constant([1.0]))
    assert int(s.n) == 8                     # capped
    s.update(tf.constant([-1.0, -2.0]))      # strong critic: n stays
    assert int(s.n) == 8
    fixed = schedule.CriticSchedule(2, adaptive=False)
    fixed.update(tf.constant([1.0]))
    assert int(fixed.n) == 2


def test_adaptive_signal_reads_no_private_data(patch_records, tmp_path, plain_card):
    """The schedule's input is the critic's score of fresh fakes: the traced function takes
    only a sample count; and the card of an adaptive run equals the plain run's."""
    config = _config(tmp_path, patch_records, "adaptive", adaptive_n_critic=True,
                     max_n_critic=4)
    card = training.train(config)
    assert _privacy(card) == _privacy(plain_card)
    _, gan, _ = run.restore(config.workdir)
    signature = gan.fake_scores.get_concrete_function().structured_input_signature[0]
    assert [spec.shape.rank for spec in signature] == [0]


def test_public_prior_is_stated_and_costs_no_privacy(patch_records, tiny_dataset, tmp_path,
                                                     plain_card):
    prior = _config(tmp_path, tiny_dataset[1], "prior", epsilon=float("inf"))
    training.train(prior)
    config = _config(tmp_path, patch_records, "fine", init_from=prior.workdir)
    card = training.train(config)
    assert _privacy(card) == _privacy(plain_card)
    assert card["public_prior"]["workdir"] == os.path.basename(prior.workdir)
    assert os.sep not in card["public_prior"]["data"]       # released: no absolute paths
    assert card["public_prior"]["prior_private"] is False
    assert "Public prior" in open(workdir.path(config.workdir, workdir.PRIVACY_MD)).read()


def test_frozen_critic_stages_keep_the_prior_and_cost_no_privacy(patch_records, tiny_dataset,
                                                                tmp_path, plain_card):
    """--critic_frozen_stages: the frozen stages end the private run exactly as the prior
    left them, the rest trains, the card's privacy numbers are unchanged and it says so."""
    prior = _config(tmp_path, tiny_dataset[1], "prior", epsilon=float("inf"))
    training.train(prior)
    config = _config(tmp_path, patch_records, "frozen", init_from=prior.workdir,
                     critic_frozen_stages=1)
    card = training.train(config)
    assert _privacy(card) == _privacy(plain_card)
    assert card["public_prior"]["critic_frozen_stages"] == 1
    assert "stage(s) kept the prior" in open(workdir.path(config.workdir,
                                                          workdir.PRIVACY_MD)).read()
    _, before, _ = run.restore(prior.workdir)
    _, after, _ = run.restore(config.workdir)
    first = [layer.name for layer in after.critic.layers if not layer.trainable]
    assert first and all(not layer.trainable_weights for layer in after.critic.layers
                         if layer.name in first)
    for a, b in zip(after.critic.layers, before.critic.layers):
        same = all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
        if a.name in first:
            assert same, a.name
        elif a.get_weights():
            assert not same, a.name
    with pytest.raises(errors.SettingsError, match="needs --init_from"):
        training.train(_config(tmp_path, patch_records, "no_prior", critic_frozen_stages=1))
    assert not os.path.exists(tmp_path / "no_prior")
    with pytest.raises(errors.SettingsError, match=r"critic_frozen_stages=9.* has \d stages"):
        training.train(_config(tmp_path, patch_records, "too_many", init_from=prior.workdir,
                               critic_frozen_stages=9))
    assert not os.path.exists(tmp_path / "too_many")


def test_prior_on_the_private_data_is_refused(patch_records, tmp_path):
    prior = _config(tmp_path, patch_records, "leaky_prior", epsilon=float("inf"))
    training.train(prior)
    config = _config(tmp_path, patch_records, "fine", init_from=prior.workdir)
    with pytest.raises(errors.SettingsError, match="public data"):
        training.train(config)


def test_prior_with_another_architecture_is_refused(patch_records, tiny_dataset, tmp_path):
    prior = _config(tmp_path, tiny_dataset[1], "wide_prior", epsilon=float("inf"),
                    base_filters=8)
    training.train(prior)
    config = _config(tmp_path, patch_records, "fine", init_from=prior.workdir)
    with pytest.raises(errors.SettingsError, match="base_filters=8.*this run.*base_filters=4"):
        training.train(config)
    assert not os.path.exists(config.workdir)      # refused before any folder


@pytest.mark.parametrize("loss", ["hinge", "ns"])
def test_modern_losses_train_privately_without_weight_clipping(patch_records, tmp_path, loss):
    gan_config = wgan.WGANConfig(latent_dim=8, loss=loss, optimizer="adam", critic_lr=0.05,
                                 generator_lr=1e-3, adam_beta1=0.0, adam_beta2=0.99)
    config = _config(tmp_path, patch_records, loss, gan=gan_config, critic_steps=4)
    card = training.train(config)
    assert card["critic_steps"] == 4 and 2.7 <= card["epsilon"] <= 3.0
    _, gan, _ = run.restore(config.workdir)
    assert max(np.abs(v.numpy()).max() for v in gan.critic.trainable_variables) > 0.01


def test_r1_penalty_costs_no_privacy_and_uses_the_per_example_path(patch_records, tmp_path,
                                                                   plain_card):
    """R1 changes each row's loss (row i alone) and not the sampling: the card is unchanged."""
    gan_config = dataclasses.replace(TINY["gan"], loss="ns", r1_weight=10.0)
    config = _config(tmp_path, patch_records, "r1", gan=gan_config, critic_norm="none")
    card = training.train(config)
    assert _privacy(card) == _privacy(plain_card)
    _, gan, _ = run.restore(config.workdir)
    assert gan.config.r1_weight == 10.0 and gan.private_step.clipping_method == "vmap"


@pytest.mark.parametrize("loss", ["wgan", "wgan_gp"])
def test_r1_penalty_is_refused_for_wasserstein_losses(patch_records, tmp_path, loss):
    gan_config = dataclasses.replace(TINY["gan"], loss=loss, r1_weight=1.0)
    config = _config(tmp_path, patch_records, "r1_" + loss, gan=gan_config)
    with pytest.raises(errors.SettingsError, match="r1_weight.*hinge or ns"):
        training.train(config)
    assert not os.path.exists(config.workdir)


def test_restore_refuses_a_checkpoint_of_other_networks(patch_records, tmp_path):
    """run.restore never hands back silently random networks (export, --init_from)."""
    config = _config(tmp_path, patch_records, "w", critic_steps=2)
    training.train(config)
    run_json = workdir.path(config.workdir, workdir.RUN_JSON)
    import json
    record = json.load(open(run_json))
    record["base_filters"] = 8          # the rebuilt networks no longer fit the checkpoint
    json.dump(record, open(run_json, "w"))
    with pytest.raises(errors.WorkdirError, match="does not match"):
        run.restore(config.workdir)


def test_restore_reads_the_checkpoint_it_is_given(patch_records, tmp_path):
    """benchmarks/prior_fid.py scores a run checkpoint by checkpoint: restore(run, prefix)
    must give that checkpoint's networks, not the latest's."""
    config = _config(tmp_path, patch_records, "ckpts", epsilon=float("inf"), checkpoint_every=3,
                     keep_checkpoints=3)
    training.train(config)
    state = tf.train.get_checkpoint_state(workdir.path(config.workdir, workdir.CHECKPOINTS))
    first, last = state.all_model_checkpoint_paths[0], state.model_checkpoint_path
    assert first.endswith("ckpt-3") and last.endswith("ckpt-6")
    _, early, _ = run.restore(config.workdir, first)
    _, late, _ = run.restore(config.workdir, last)
    _, latest, _ = run.restore(config.workdir)
    for a, b in zip(late.generator.get_weights(), latest.generator.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(early.generator.get_weights(), late.generator.get_weights()))
