"""The white-box attack: the run's critic scores real pairs.

critic               D(x), the restored critic on the (image, label) pair as it is trained on
                     it (wgan.to_pairs).
critic, calibrated   D(x) minus the mean of D over the 7 other flips/rotations of x: the
                     critic's liking for this content irrespective of its exact orientation is
                     the patch's difficulty reference; what remains is how much more it likes
                     this exact patch.
The critic is the one network that reads patient data and it is never released: this attack
is what someone holding the private checkpoint could do.
"""
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfdpgan import errors
from tfdpgan.gan import run as gan_run
from tfdpgan.gan import wgan

__all__ = ["critic_scores", "restore_critic"]


def _dihedral_others(x):
    """The 7 non-identity elements of the dihedral group of the square applied to [B, P, P, C]
    (flips, transposes, rotations by 90°), both channels alike."""
    t = tf.transpose(x, [0, 2, 1, 3])
    return [tf.reverse(x, [1]), tf.reverse(x, [2]), tf.reverse(x, [1, 2]),
            t, tf.reverse(t, [1]), tf.reverse(t, [2]), tf.reverse(t, [1, 2])]


def _score_fn(critic, calibrate: bool):
    @tf.function(reduce_retracing=True)
    def score(x):
        raw = critic(x, training=False)[:, 0]
        if not calibrate:
            return raw, raw
        others = _dihedral_others(x)
        ref = tf.reshape(critic(tf.concat(others, 0), training=False)[:, 0],
                         [len(others), -1])
        return raw, raw - tf.reduce_mean(ref, axis=0)
    return score


def critic_scores(critic, images, labels, batch_size: int = 256, calibrate: bool = True):
    """(raw, calibrated) critic scores of real pairs; calibrated is None if not ``calibrate``.

    raw = D(x) on the pair the critic is trained on (wgan.to_pairs). calibrated = D(x) minus
    the mean of D over the 7 other elements of the dihedral group of x (flips, transposes,
    rotations by 90°), applied to both channels."""
    score = _score_fn(critic, calibrate)
    n = len(images)
    raw, cal = np.empty(n), np.empty(n)
    started, last_log = time.time(), time.time()
    for s in range(0, n, batch_size):
        image = tf.constant(np.asarray(images[s:s + batch_size], np.float32)[..., None])
        label = tf.constant(np.asarray(labels[s:s + batch_size], np.float32)[..., None])
        r, c = score(wgan.to_pairs(image, label))
        raw[s:s + batch_size], cal[s:s + batch_size] = r.numpy(), c.numpy()
        if time.time() - last_log > 30:
            logging.info("critic scores: %d/%d patches (%.0f s)", min(s + batch_size, n), n,
                         time.time() - started)
            last_log = time.time()
    return raw, (cal if calibrate else None)


def restore_critic(run: dict, checkpoint: str, patch_size: int):
    """The critic of the run (its run.json object ``run``), rebuilt as training builds it
    (tfdpgan.gan.run.build_wgan with the run's typed budget plan), with the weights of
    ``checkpoint`` (only the critic is read). WorkdirError if the checkpoint's critic does
    not match the run's settings."""
    config = gan_run.config_from_run(run)
    gan = gan_run.build_wgan(config, patch_size, gan_run.plan_from_run(run))
    status = tf.train.Checkpoint(critic=gan.critic).restore(checkpoint)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise errors.WorkdirError(f"{checkpoint}: the critic in the checkpoint does not match "
                                  f"the run's settings ({str(e)[:200]})") from None
    status.expect_partial()
    return gan.critic
