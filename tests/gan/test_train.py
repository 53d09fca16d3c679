"""End-to-end training at tiny sizes: privacy card, export, TensorBoard, resume, sampling."""
import dataclasses
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

from tfdpgan import train as train_command, workdir as workdir_lib
from tfdpgan.dp import accounting, clipping, step
from tfdpgan.dp import card as privacy_card
from tfdpgan.data import records
from tfdpgan.gan import export, losses, run, sample, training, wgan
from tiny import CARD_KEYS, TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _at(config, name):
    return workdir_lib.path(config.workdir, name)


def _plan(noise_multiplier):
    return privacy_card.Plan(sampling_rate=0.1, delta=1e-5, noise_multiplier=noise_multiplier,
                             critic_steps=10, num_records=100, expected_batch_size=10.0)


@pytest.fixture(scope="module")
def private_run(patch_records, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    config = run.TrainConfig(workdir=workdir, data=patch_records, epsilon=3.0,
                             log_private_stats=True, **TINY)
    card = training.train(config, flags_text="--epsilon=3\n")
    return config, card


def test_privacy_card_matches_budget_and_accountant(private_run, patch_records):
    config, card = private_run
    on_disk = json.load(open(_at(config, workdir_lib.PRIVACY_JSON)))
    assert on_disk == card and CARD_KEYS <= set(card)
    n = records.read_dataset_json(patch_records)["counts"]["train"]
    assert card["num_records"] == n and card["sampling"] == "poisson"
    assert card["sampling_rate"] == pytest.approx(config.batch_size / n)
    assert card["delta"] == pytest.approx(min(1e-5, 1 / (10 * n)))
    assert card["critic_steps"] == config.critic_steps
    assert 0.9 * 3.0 <= card["epsilon"] <= 3.0
    # independent recomputation from the card's own numbers
    assert card["epsilon"] == pytest.approx(accounting.compute_epsilon(
        card["noise_multiplier"], card["sampling_rate"], card["critic_steps"], card["delta"],
        card["accountant"]))
    assert card["epsilon_pld"] <= card["epsilon_rdp"]
    text = open(_at(config, workdir_lib.PRIVACY_MD)).read()
    assert "per **patch**" in text and "group privacy" in text


def test_generator_export_signature_and_card(private_run):
    config, _ = private_run
    path = _at(config, workdir_lib.GENERATOR)
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    latent = fn.structured_input_signature[1]["latent"]
    assert latent.dtype == tf.float32 and latent.shape.as_list() == [None, 8]
    out = fn(latent=tf.random.normal([3, 8]))
    assert out["image"].shape == (3, 16, 16, 1) and out["label"].shape == (3, 16, 16, 1)
    assert set(np.unique(out["label"].numpy())) <= {0.0, 1.0}
    assert np.abs(out["image"].numpy()).max() <= 1.0
    card = json.load(open(os.path.join(path, "assets.extra", "privacy.json")))
    assert card == json.load(open(_at(config, workdir_lib.PRIVACY_JSON)))
    shown = subprocess.run(["saved_model_cli", "show", "--dir", path, "--all"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "serving_default" in shown.stdout and "latent" in shown.stdout
    assert os.path.isfile(_at(config, workdir_lib.SAMPLES_PNG))


def test_released_generator_carries_no_patient_details(private_run, patch_records):
    config, _ = private_run
    gen = _at(config, workdir_lib.GENERATOR)
    assert sorted(os.listdir(os.path.join(gen, "assets.extra"))) == [
        "normalization.json", "privacy.json"]
    info = records.read_dataset_json(patch_records)
    # distinctive private strings of dataset.json: source checksums and paths
    secrets = [patch_records.encode()] + [
        value.encode() for p in info["patients"].values()
        for value in [*p["sha256"].values(), p["files"]["image"]]]
    for folder, _, files in os.walk(gen):
        for name in files:
            data = open(os.path.join(folder, name), "rb").read()
            assert not any(s in data for s in secrets), name


def _tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_tensorboard_tags(private_run):
    """With log_private_stats: DP-safe quantities in release/, the others only in private/."""
    config, _ = private_run
    released = _tags(_at(config, workdir_lib.TENSORBOARD))
    private = _tags(_at(config, workdir_lib.TENSORBOARD_PRIVATE))
    for tag in ("train/generator_loss", "train/update_norm", "train/n_critic",
                "privacy/epsilon", "privacy/noise_multiplier", "perf/steps_per_sec",
                "samples/image_and_label_overlay", "privacy/statement", "run/plan"):
        assert tag in released, (tag, sorted(released))
    for tag in ("train/critic_loss", "train/wasserstein_estimate", "train/norm_q50",
                "train/clipped_fraction", "train/batch_size", "run/flags"):
        assert tag in private and tag not in released, (tag, sorted(released))
    assert not released & private


def test_sample_round_trip(private_run, tmp_path):
    config, _ = private_run
    gen = _at(config, workdir_lib.GENERATOR)
    out = str(tmp_path / "syn")
    images, labels = sample.sample_to(gen, 10, out, "tfrecord")
    info = records.read_dataset_json(out)
    assert info["counts"]["train"] == 10 and info["patch_size"] == 16
    parse = records.make_parser(16)
    ds = tf.data.TFRecordDataset(records.shard_paths(out, "train"), records.COMPRESSION)
    ex = next(ds.batch(100).map(parse).as_numpy_iterator())
    assert set(ex["patient_id"]) == {b"synthetic"}
    np.testing.assert_allclose(np.sort(ex["image"].ravel()), np.sort(images.ravel()))
    assert os.path.isfile(os.path.join(out, "privacy.json"))
    sample.sample_to(gen, 5, str(tmp_path / "nii"), "nifti")
    import nibabel as nib
    assert nib.load(str(tmp_path / "nii" / "label.nii.gz")).shape == (16, 16, 5)
    sample.sample_to(gen, 5, str(tmp_path / "png"), "png")
    assert glob.glob(str(tmp_path / "png" / "samples_*.png"))
    with pytest.raises(FileExistsError):
        sample.sample_to(gen, 5, out, "tfrecord")


def test_infinite_epsilon_is_really_non_private(patch_records, tmp_path, monkeypatch):
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=patch_records,
                               epsilon=math.inf, **dict(TINY, critic_steps=4))
    card = training.train(config)
    assert card["private"] is False and card["epsilon"] is None
    assert card["noise_multiplier"] == 0.0
    assert "NOT differentially private" in open(_at(config, workdir_lib.PRIVACY_MD)).read()
    # the critic step is the plain gradient of the mean loss: no clipping, no noise
    def forbidden(*args, **kwargs):
        raise AssertionError("a DP routine ran in a non-private step")
    monkeypatch.setattr(clipping, "clipped_gradient_sum", forbidden)
    monkeypatch.setattr(step.PrivateStep, "noised_mean", forbidden)
    real = tf.random.uniform([6, 16, 16, 2], -1, 1, seed=1)
    fake = tf.random.uniform([6, 16, 16, 2], -1, 1, seed=2)
    gan = run.build_wgan(config, 16, _plan(0.0))
    twin = run.build_wgan(config, 16, _plan(0.0))
    assert gan.config.private is False
    for a, b in zip(twin.critic.variables, gan.critic.variables):
        a.assign(b)
    gan.fakes_for = lambda n: fake[:n]
    gan.critic_step(real)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(twin.per_example_loss(twin.critic, (real, fake, tf.ones([6]))))
    variables = twin.critic.trainable_variables
    twin.critic_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    for a, b in zip(gan.critic.trainable_variables, variables):
        np.testing.assert_allclose(a.numpy(), np.clip(b.numpy(), -0.01, 0.01), rtol=1e-5,
                                   atol=1e-8)


def test_workdir_refuses_different_settings_and_reuses_a_finished_run(private_run):
    config, card = private_run
    flags_before = open(_at(config, workdir_lib.FLAGS_TXT)).read()
    with pytest.raises(ValueError, match="different settings"):
        training.train(dataclasses.replace(config, batch_size=10), flags_text="--batch_size=10\n")
    assert open(_at(config, workdir_lib.FLAGS_TXT)).read() == flags_before   # not overwritten
    # the same settings again: the finished run stands (no step, no new export)
    outputs = [_at(config, workdir_lib.PRIVACY_JSON),
               os.path.join(_at(config, workdir_lib.GENERATOR), "saved_model.pb")]
    stamps = [os.stat(p).st_mtime_ns for p in outputs]
    checkpoints = sorted(os.listdir(_at(config, workdir_lib.CHECKPOINTS)))
    assert training.train(config, flags_text="--epsilon=3\n") == card
    assert [os.stat(p).st_mtime_ns for p in outputs] == stamps
    assert sorted(os.listdir(_at(config, workdir_lib.CHECKPOINTS))) == checkpoints


def _train_cmd(data, workdir, steps):
    return [sys.executable, "-m", "tfdpgan.train", f"--data={data}", f"--workdir={workdir}",
            "--epsilon=3", "--batch_size=20", f"--critic_steps={steps}", "--n_critic=2",
            "--base_filters=4", "--latent_dim=8", "--checkpoint_every=10",
            "--summary_every=1000", "--image_every=1000", "--sampling_seed=11", "--tf_seed=0",
            "--init_from="]


@pytest.mark.slow
def test_kill_and_resume_counts_privacy_like_an_uninterrupted_run(patch_records, tmp_path):
    steps = 400
    resumed = str(tmp_path / "resumed")
    proc = subprocess.Popen(_train_cmd(patch_records, resumed, steps), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(workdir_lib.path(resumed, workdir_lib.CHECKPOINTS), "ckpt-20.index")
    deadline = time.time() + 240
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(first), "no checkpoint appeared before the kill"
    assert not os.path.exists(workdir_lib.path(resumed, workdir_lib.PRIVACY_JSON)), \
        "finished before kill"

    again = subprocess.run(_train_cmd(patch_records, resumed, steps), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    straight = str(tmp_path / "straight")
    once = subprocess.run(_train_cmd(patch_records, straight, steps), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert once.returncode == 0, once.stderr[-3000:]
    card_resumed = workdir_lib.read_card(resumed)
    card_straight = workdir_lib.read_card(straight)
    assert card_resumed == card_straight and card_resumed["critic_steps"] == steps
    # the flags file repeats the run
    flags_txt = open(workdir_lib.path(straight, workdir_lib.FLAGS_TXT)).read()
    assert "--critic_steps=400" in flags_txt and f"--workdir={straight}" in flags_txt


TRAIN_FLAGFILES = sorted(f for f in glob.glob(os.path.join(ROOT, "flags", "*.cfg"))
                         if not os.path.basename(f).startswith("sweep_"))  # test_sweep.py


@pytest.mark.parametrize("cfg", TRAIN_FLAGFILES)
def test_flagfiles_parse(cfg, monkeypatch):
    fv = absl_flags.FlagValues()
    train_command.define_flags(fv)
    monkeypatch.chdir(ROOT)  # flagfiles include each other by repo-relative path
    fv(["train", f"--flagfile={cfg}"])
    config = train_command.config_from_flags(fv)
    assert config.batch_size >= 1 and config.critic_steps >= 1
    assert os.path.basename(cfg) != "paper_wgan.cfg" or not config.private


@pytest.mark.slow
def test_export_command_reexports_from_checkpoint(private_run):
    config, _ = private_run
    gen = _at(config, workdir_lib.GENERATOR)
    z = tf.random.normal([2, 8], seed=3)
    before = tf.saved_model.load(gen).signatures["serving_default"](latent=z)
    done = subprocess.run([sys.executable, "-m", "tfdpgan.export", f"--workdir={config.workdir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = tf.saved_model.load(gen).signatures["serving_default"](latent=z)
    np.testing.assert_allclose(before["image"].numpy(), after["image"].numpy(), atol=1e-5)
    assert os.path.isfile(os.path.join(gen, "assets.extra", "privacy.json"))
    assert os.path.isfile(os.path.join(gen, "assets.extra", "normalization.json"))


@pytest.mark.slow
def test_wgan_gp_trains_privately(patch_records, tmp_path):
    gan_config = wgan.WGANConfig(latent_dim=8, loss="wgan_gp", optimizer="adam",
                                 critic_lr=1e-4, generator_lr=1e-4)
    config = run.TrainConfig(workdir=str(tmp_path / "gp"), data=patch_records, epsilon=3.0,
                               **dict(TINY, critic_steps=4, gan=gan_config))
    card = training.train(config)
    assert card["critic_steps"] == 4 and 2.7 <= card["epsilon"] <= 3.0
    # the penalty is part of the per-example loss, and there is no weight clipping
    gan = run.build_wgan(dataclasses.replace(config, gan=dataclasses.replace(
        gan_config, critic_lr=0.05)), 16, _plan(0.5))
    real = tf.random.uniform([5, 16, 16, 2], -1, 1, seed=4)
    fake = tf.random.uniform([5, 16, 16, 2], -1, 1, seed=5)
    plain = losses.wgan_critic(gan.critic, (real, fake))
    assert np.all(gan.per_example_loss(gan.critic, (real, fake, tf.ones([5]))).numpy()
                  > plain.numpy())
    for _ in range(3):
        gan.critic_step(real)
    assert max(np.abs(v.numpy()).max() for v in gan.critic.trainable_variables) > 0.01


def test_demo_flagfile_is_the_default(monkeypatch):
    parsed = []
    for argv in (["train"], ["train", "--flagfile=flags/demo.cfg"]):
        fv = absl_flags.FlagValues()
        train_command.define_flags(fv)
        monkeypatch.chdir(ROOT)
        fv(argv)
        parsed.append(train_command.config_from_flags(fv))
    assert parsed[0] == parsed[1]


@pytest.mark.slow
def test_bad_data_folder_fails_cleanly(tmp_path):
    workdir = str(tmp_path / "w")
    done = subprocess.run([sys.executable, "-m", "tfdpgan.train", f"--data={tmp_path}/missing",
                           f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing/dataset.json" in errors[0]
    assert not os.path.exists(workdir)


def test_rician_generator_trains_restores_and_exports(patch_records, tmp_path, monkeypatch):
    """--generator_output=rician through the whole run: the flag reaches run.json, the
    checkpoint restores into the same networks, and the exported generator (EMA clone) is
    a deterministic function of the latent whose images carry the noise layer's floor."""
    from tiny import parse_train_flags
    assert parse_train_flags(monkeypatch, "--generator_output=rician").generator_output == "rician"
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=patch_records, epsilon=3.0,
                             generator_output="rician",
                             **dict(TINY, gan=dataclasses.replace(TINY["gan"], ema_decay=0.9)))
    training.train(config)
    assert workdir_lib.read_run(config.workdir)["generator_output"] == "rician"
    restored, gan, _ = run.restore(config.workdir)
    assert restored.generator_output == "rician"
    assert gan.release_generator.get_layer("rician_noise") is not None
    fn, latent_dim, _ = export.load_generator(_at(config, workdir_lib.GENERATOR))
    first, _ = sample.generate(fn, latent_dim, 12, seed=4)
    again, _ = sample.generate(fn, latent_dim, 12, seed=4, batch_size=5)
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert np.std(first - np.roll(first, 1, axis=2)) > 0     # noise texture, not a constant
