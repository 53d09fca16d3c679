"""Divergence and signals: the run stops cleanly, keeps its last good checkpoint, and every
critic step that ran stays counted."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tfdpgan import errors, workdir
from tfdpgan.gan import run, training, wgan
from tiny import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_divergence_stops_keeps_the_last_good_checkpoint_and_counts_the_steps(
        patch_records, tmp_path):
    # absurd learning rates: the weights overflow within a few steps
    gan = wgan.WGANConfig(latent_dim=8, optimizer="adam", loss="hinge", critic_lr=1e30,
                          generator_lr=1e30)
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=patch_records, epsilon=3.0,
                             l2_norm_clip=1.0, **dict(TINY, gan=gan, critic_steps=30,
                                                      checkpoint_every=1))
    with pytest.raises(errors.TrainingDiverged, match="last good checkpoint") as info:
        training.train(config)
    ckpt_dir = workdir.path(config.workdir, workdir.CHECKPOINTS)
    ledger = json.load(open(os.path.join(ckpt_dir, workdir.LEDGER_JSON)))
    assert ledger["discarded_critic_steps"] >= 1
    assert training.discarded_steps(config.workdir) == ledger["discarded_critic_steps"]
    assert not workdir.is_finished(config.workdir)
    assert "step" in str(info.value)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_run_resumes(patch_records, tmp_path):
    w = str(tmp_path / "w")
    cmd = [sys.executable, "-m", "tfdpgan.train", f"--data={patch_records}", f"--workdir={w}",
           "--epsilon=3", "--batch_size=20", "--critic_steps=300", "--n_critic=2",
           "--base_filters=4", "--latent_dim=8", "--checkpoint_every=1000",
           "--summary_every=1000", "--image_every=1000", "--sampling_seed=3",
           "--init_from="]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    events = workdir.path(w, workdir.TENSORBOARD)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            os.path.isdir(events) and any(n.startswith("events") for n in os.listdir(events))):
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "error: stopped by SIGTERM" in stderr
    saved = workdir.path(w, workdir.CHECKPOINTS)
    assert any(n.startswith("ckpt-") for n in os.listdir(saved))   # though checkpoint_every=1000
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert workdir.read_card(w)["critic_steps"] == 300


def test_discarded_steps_shrink_the_budget_and_stay_on_the_card(patch_records, tmp_path):
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=patch_records, epsilon=3.0,
                             **dict(TINY, critic_steps=12))
    ckpt_dir = workdir.path(config.workdir, workdir.CHECKPOINTS)
    os.makedirs(ckpt_dir)
    with open(os.path.join(ckpt_dir, workdir.LEDGER_JSON), "w") as f:
        json.dump({"discarded_critic_steps": 5}, f)
    card = training.train(config)
    assert card["critic_steps"] == 12                       # 7 run + 5 discarded
    assert "ckpt-7.index" in os.listdir(ckpt_dir)
    assert card["epsilon"] <= 3.0
