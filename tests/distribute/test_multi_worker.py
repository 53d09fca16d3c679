"""MultiWorkerMirroredStrategy with two local workers on 127.0.0.1 (two processes, TF_CONFIG):
the same critic update as one device, and a training run whose card is the single-device one,
written by the chief only."""
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tfdpgan import distribute, workdir
from tfdpgan.dp import step
from tfdpgan.gan import losses, models, run, training
from tiny import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 600


def _run_workers(argv, tmp_path):
    """Run ``argv`` as worker 0 and worker 1 of a local cluster; returns their outputs."""
    procs = []
    for index, tf_config in enumerate(distribute.local_cluster(2)):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = dict(os.environ, TF_CONFIG=tf_config, TMPDIR=str(scratch),
                   TF_CPP_MIN_LOG_LEVEL="2")
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, out[-3000:]
        outputs.append(out)
    return outputs


def test_two_workers_give_the_one_device_update_without_noise(tmp_path):
    patch, clip, expected, chunk = 16, 0.05, 12.0, 9
    critic = models.build_critic(patch, base_filters=4)
    weights = critic.get_weights()
    rng = np.random.default_rng(4)
    real, fake = (rng.uniform(-1, 1, (13, patch, patch, 2)).astype(np.float32)
                  for _ in range(2))
    weight = np.ones(13, np.float32)
    inp, out = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    np.savez(inp, real=real, fake=fake, weight=weight, patch=patch, clip=clip,
             expected=expected, chunk=chunk, num_weights=len(weights),
             **{f"w{i}": w for i, w in enumerate(weights)})
    _run_workers([sys.executable, os.path.join(ROOT, "tests", "distribute", "worker_step.py"),
                  inp, out], tmp_path)

    def loss(model, rows):
        r, f, w = rows
        return w * losses.critic_loss("wgan")(model, (r, f))

    step.PrivateStep(critic, tf.keras.optimizers.legacy.SGD(1.0), loss, l2_norm_clip=clip,
                     noise_multiplier=0.0, expected_batch_size=expected)(
        (tf.constant(real), tf.constant(fake), tf.constant(weight)))
    got = np.load(out)
    moved = 0.0
    for i, (v, w) in enumerate(zip(critic.get_weights(), weights)):
        np.testing.assert_allclose(got[f"w{i}"], v, rtol=1e-4, atol=1e-6)
        moved = max(moved, float(np.max(np.abs(v - w))))
    assert moved > 1e-4   # the step changed the critic (not a vacuous comparison)


def test_two_worker_training_has_the_single_device_card(tiny_dataset, tmp_path):
    steps = 12
    single = str(tmp_path / "single")
    training.train(run.TrainConfig(workdir=single, data=tiny_dataset[1], epsilon=3.0,
                                   **dict(TINY, critic_steps=steps)))
    multi = str(tmp_path / "multi")
    argv = [sys.executable, "-m", "tfdpgan.train", f"--data={tiny_dataset[1]}",
            f"--workdir={multi}", "--strategy=multi_worker", "--epsilon=3",
            f"--batch_size={TINY['batch_size']}", f"--critic_steps={steps}", "--n_critic=2",
            "--base_filters=4", "--latent_dim=8", "--checkpoint_every=5", "--tf_seed=0",
            "--init_from="]
    _run_workers(argv, tmp_path)

    def card(w):
        with open(workdir.path(w, workdir.PRIVACY_JSON)) as f:
            return {k: v for k, v in json.load(f).items() if k != "tfdpgan_version"}

    assert card(multi) == card(single)
    assert os.path.isdir(workdir.path(multi, workdir.GENERATOR))
    # the worker's scratch workdir is gone; it wrote nothing else
    assert not os.listdir(tmp_path / "tmp1")
    # resume: both workers restore the chief's ckpt-10 (the worker reads it from the shared
    # workdir) and finish the same 12 steps with the same card
    ckpt = workdir.path(multi, workdir.CHECKPOINTS)
    for name in os.listdir(ckpt):
        if name.startswith(f"ckpt-{steps}"):
            os.remove(os.path.join(ckpt, name))
    tf.compat.v1.train.update_checkpoint_state(
        ckpt, os.path.join(ckpt, "ckpt-10"),
        all_model_checkpoint_paths=[os.path.join(ckpt, "ckpt-10")])
    for index in range(2):
        os.rmdir(tmp_path / f"tmp{index}")
    outputs = _run_workers(argv, tmp_path)
    assert all("ckpt-10" in out and "resumed from" in out for out in outputs), outputs[1][-2000:]
    assert tf.train.latest_checkpoint(ckpt).endswith(f"ckpt-{steps}")
    assert card(multi) == card(single)
