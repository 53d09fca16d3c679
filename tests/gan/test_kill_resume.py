"""Crash safety: SIGKILL a tiny training at seeded random points (during checkpoint writes,
mid-training and during the generator export), rerun the same command each time, and the
finished workdir equals an uninterrupted run's: steps, privacy.json, exported generator.

Kill points are found by polling the workdir (no test hooks in the code): TensorFlow writes a
checkpoint into ``ckpt-N_temp/`` before merging it into ``ckpt-N.*``, and the export stages the
SavedModel in ``release/.generator.tmp-*`` before renaming it to ``release/generator/``."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfdpgan import workdir as workdir_lib
from tfdpgan.gan import export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
POLL = 0.002


def _command(rec_dir, run_dir):
    return [sys.executable, "-m", "tfdpgan.train", f"--data={rec_dir}", f"--workdir={run_dir}",
            "--epsilon=3", "--batch_size=20", f"--critic_steps={STEPS}", "--n_critic=2",
            "--base_filters=4", "--latent_dim=8", "--checkpoint_every=5",
            "--summary_every=10", "--image_every=20", "--sampling_seed=3", "--tf_seed=0",
            "--init_from="]


def _start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _entries(folder):
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _checkpoint_write(run_dir, rng):
    """Fires during the k-th checkpoint this process writes: while it is in its _temp folder,
    or (if polling missed that) just after its index appeared, before the state file update."""
    ckpt = workdir_lib.path(run_dir, workdir_lib.CHECKPOINTS)
    k, before, seen = rng.randint(1, 3), _entries(ckpt), set()

    def fired():
        seen.update(n.split("_")[0].split(".")[0] for n in _entries(ckpt) - before
                    if n.startswith("ckpt-") and (n.endswith("_temp") or n.endswith(".index")))
        return len(seen) >= k
    return fired


def _mid_training(run_dir, rng):
    """Fires a random 0-0.3 s after this process wrote its first new checkpoint."""
    ckpt = workdir_lib.path(run_dir, workdir_lib.CHECKPOINTS)
    before, at = {n for n in _entries(ckpt) if n.endswith(".index")}, []

    def fired():
        if not at and {n for n in _entries(ckpt) if n.endswith(".index")} - before:
            at.append(time.time() + rng.uniform(0.0, 0.3))
        return bool(at) and time.time() >= at[0]
    return fired


def _export(late):
    """Fires when the SavedModel staging folder appears (``late``: once its assets.extra is
    being written, i.e. just before the rename)."""
    def make(run_dir, rng):
        del rng

        release = workdir_lib.release_dir(run_dir)

        def fired():
            staging = [n for n in _entries(release) if n.startswith(".generator.tmp-")]
            return bool(staging) and (not late or any(
                os.path.isdir(os.path.join(release, s, workdir_lib.ASSETS_EXTRA))
                for s in staging))
        return fired
    return make


KILLS = [("checkpoint write", _checkpoint_write), ("mid-training", _mid_training),
         ("checkpoint write", _checkpoint_write), ("export", _export(late=False)),
         ("export, late", _export(late=True))]


def _run_and_kill(cmd, fired):
    """Start ``cmd``; SIGKILL it when ``fired()``. True if it was killed while running."""
    proc = _start(cmd)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if fired():
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            return proc.returncode == -signal.SIGKILL
        time.sleep(POLL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    return False


@pytest.fixture(scope="module")
def killed_and_reference(tiny_dataset, tmp_path_factory):
    rec = tiny_dataset[1]
    root = tmp_path_factory.mktemp("kill_resume")
    reference, killed = str(root / "reference"), str(root / "killed")
    ref_proc = _start(_command(rec, reference))   # runs alongside the kill loop
    rng = random.Random(13)
    kills = [name for name, trigger in KILLS
             if _run_and_kill(_command(rec, killed), trigger(killed, rng))]
    final = subprocess.run(_command(rec, killed), cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    _, stderr = ref_proc.communicate(timeout=600)
    assert ref_proc.returncode == 0, stderr[-3000:]
    print(f"SIGKILLed {len(kills)} times: {kills}")
    return reference, killed, kills


def test_at_least_three_kills_hit_a_running_training(killed_and_reference):
    _, _, kills = killed_and_reference
    assert len(kills) >= 3, kills
    assert "checkpoint write" in kills and any(k.startswith("export") for k in kills), kills


def test_steps_and_privacy_card_equal_an_uninterrupted_run(killed_and_reference):
    reference, killed, _ = killed_and_reference
    ref_card, card = workdir_lib.read_card(reference), workdir_lib.read_card(killed)
    assert card["critic_steps"] == STEPS
    assert card == ref_card
    for name in (workdir_lib.PRIVACY_JSON, workdir_lib.NORMALIZATION_JSON):
        with open(os.path.join(workdir_lib.path(killed, workdir_lib.GENERATOR),
                               workdir_lib.ASSETS_EXTRA, name)) as f, \
                open(os.path.join(workdir_lib.path(reference, workdir_lib.GENERATOR),
                                  workdir_lib.ASSETS_EXTRA, name)) as g:
            assert json.load(f) == json.load(g)
    ckpt = workdir_lib.path(killed, workdir_lib.CHECKPOINTS)
    latest = open(os.path.join(ckpt, "checkpoint")).readline()
    assert latest.strip() == f'model_checkpoint_path: "ckpt-{STEPS}"'


def test_no_half_written_outputs_are_left(killed_and_reference):
    _, killed, _ = killed_and_reference
    leftovers = [n for folder in (killed, workdir_lib.release_dir(killed),
                                  workdir_lib.private_dir(killed))
                 for n in _entries(folder) if n.startswith(".")]
    leftovers += [n for n in _entries(workdir_lib.path(killed, workdir_lib.CHECKPOINTS))
                  if n.endswith("_temp") or ".tmp" in n]
    assert leftovers == []


def test_exported_generator_equals_an_uninterrupted_run(killed_and_reference):
    reference, killed, _ = killed_and_reference
    latent = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    outputs = []
    for run_dir in (reference, killed):
        fn, latent_dim, _ = export.load_generator(
            workdir_lib.path(run_dir, workdir_lib.GENERATOR))
        assert latent_dim == 8
        outputs.append({k: v.numpy() for k, v in fn(latent=latent).items()})
    np.testing.assert_array_equal(outputs[1]["image"], outputs[0]["image"])
    np.testing.assert_array_equal(outputs[1]["label"], outputs[0]["label"])
