"""The training loop: train (or resume) a GAN whose critic is differentially private.

The record is a patch (``privacy_unit="patch"``, the paper's setting) or a patient
(``"patient"``: each step Poisson-samples patients and takes up to ``patches_per_patient`` of
each sampled patient's patches; the patient's summed contribution is clipped once). The noise
multiplier is calibrated before training for the planned critic steps and the sampling rate
q = batch_size / N (N records of the unit, batch_size the expected records per step); training
never runs more steps than the budget allows, and privacy.json is computed from the steps
actually run. The privacy ledger (critic steps taken) is part of the checkpoint, so a resumed
run reports exactly what an uninterrupted one would.

Crash safety: every output is written atomically (tfdpgan.atomic; TensorFlow's checkpoint
writer stages ``ckpt-N_temp/`` and renames), so a SIGKILL at any point leaves the last complete
checkpoint and outputs; rerunning the same command removes the half-written leftovers and
resumes. Determinism: with ``tf_seed`` set (it seeds TensorFlow, Keras' initialisers, Python's
``random`` and NumPy's global generator) and ``sampling_seed`` set, the same settings give the
same losses and weights on one machine (tests/test_determinism.py).
"""
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfdpgan import atomic, errors, viz, workdir
from tfdpgan.data import default_data, pipeline, records
from tfdpgan.dp import accounting
from tfdpgan.dp import card as privacy_card
from tfdpgan.gan import export, run as run_lib, schedule as schedule_lib, wgan

__all__ = ["train", "batches", "finish", "check_settings", "discarded_steps"]


def check_settings(config: run_lib.TrainConfig):
    """Refuse settings that are invalid before anything is read or written."""
    if config.privacy_unit not in privacy_card.UNITS:
        raise errors.SettingsError(f"privacy_unit must be one of {privacy_card.UNITS}, got "
                                   f"{config.privacy_unit!r}")
    if config.patches_per_patient < 1:
        raise errors.SettingsError(f"patches_per_patient must be >= 1, got "
                                   f"{config.patches_per_patient}")
    if config.private and not config.l2_norm_clip > 0:
        raise errors.SettingsError(f"l2_norm_clip must be positive for a private run, got "
                                   f"{config.l2_norm_clip} (a zero clip makes every step "
                                   f"pure noise)")


def _num_records(config, info: dict, arrays: pipeline.PatchArrays) -> int:
    """N of the unit from dataset.json, checked against the records actually loaded."""
    n = privacy_card.count_records(info, config.privacy_unit)
    loaded = (sum(len(r) > 0 for r in arrays.patient_records())
              if config.privacy_unit == "patient" else len(arrays))
    if n != loaded:
        raise errors.InputDataError(f"dataset.json says {n} training {config.privacy_unit}"
                                    f" records but the shards hold {loaded}")
    return n


def train(config: run_lib.TrainConfig, flags_text: str = "") -> dict:
    """Run (or resume) training in ``config.workdir``; returns the final privacy card."""
    check_settings(config)
    rec_dir = config.data or default_data.prepare(config.phantom, config.cache_dir)[1]
    info = records.read_dataset_json(rec_dir)
    arrays = pipeline.load_arrays(rec_dir, "train")
    plan = privacy_card.make_plan(
        num_records=_num_records(config, info, arrays), expected_batch_size=config.batch_size,
        critic_steps=config.critic_steps, epsilon=config.epsilon,
        noise_multiplier=config.noise_multiplier, delta=config.delta,
        accountant=config.accountant, both_given=config.epsilon_and_noise_given)
    run_dir = config.workdir
    os.makedirs(run_dir, exist_ok=True)  # only once the data and the settings are valid
    if flags_text:
        atomic.write_text_atomic(workdir.path(run_dir, workdir.FLAGS_TXT), flags_text)
    run_lib.check_same_run(run_dir, run_lib.run_record(config, plan, rec_dir))
    _remove_leftovers(run_dir)
    if config.tf_seed is not None:
        # Keras initialisers without a seed draw one from Python's `random`: seed it too
        tf.keras.utils.set_random_seed(config.tf_seed)
    prior = run_lib.describe_prior(config.init_from, rec_dir) if config.init_from else None
    gan = run_lib.build_wgan(config, info["patch_size"], plan)
    step = tf.Variable(0, dtype=tf.int64, name="critic_step")
    seed = tf.Variable(config.sampling_seed if config.sampling_seed is not None
                       else pipeline.new_secret_seed(), dtype=tf.int64, name="sampling_seed")
    schedule = schedule_lib.CriticSchedule(config.critic_steps_per_generator_step,
                                           config.adaptive_n_critic, max_n=config.max_n_critic)
    manager = tf.train.CheckpointManager(run_lib.make_checkpoint(gan, step, seed, schedule),
                                         workdir.path(run_dir, workdir.CHECKPOINTS),
                                         max_to_keep=config.keep_checkpoints)
    if manager.latest_checkpoint:
        _resume(manager, gan, step, seed, schedule)
    elif config.init_from:
        run_lib.init_from_prior(gan, config.init_from)
        logging.info("initialised generator and critic from %s (public prior)",
                     config.init_from)
    writer = tf.summary.create_file_writer(run_dir)
    _log_plan(config, plan, writer)
    _warn_weak(config, plan, info)
    # steps rolled back after a divergence were spent: the budget left shrinks by them
    plan = dataclasses.replace(plan, critic_steps=max(
        plan.critic_steps - discarded_steps(run_dir), int(step)))
    data = batches(config, arrays, plan, int(seed.numpy()), int(step))
    _loop(config, plan, gan, schedule, data, step, manager, writer)
    return finish(run_dir, gan, config, plan, int(step), info, writer, prior)


def _resume(manager, gan, step, seed, schedule):
    """Restore the latest checkpoint. One written before the random generator's state was
    saved resumes with a fresh, unpredictable generator state: restarting it from --tf_seed
    would repeat the DP noise of the first steps (two updates would then differ by a
    noise-free amount)."""
    latest = manager.latest_checkpoint
    saved = {name.split("/")[0] for name, _ in tf.train.list_variables(latest)}
    if "rng" in saved:
        manager.checkpoint.restore(latest).assert_existing_objects_matched()
    else:
        run_lib.make_checkpoint(gan, step, seed, schedule, with_rng=False) \
            .restore(latest).assert_existing_objects_matched()
        gan.rng.reset(tf.random.Generator.from_non_deterministic_state().state)
        logging.warning("%s has no random-generator state (older tfdpgan): resuming with a "
                        "fresh one; this run is not bit-identical to an uninterrupted one",
                        latest)
    logging.info("resumed from %s at critic step %d", latest, int(step))


def _remove_leftovers(run_dir):
    """Half-written outputs of a killed earlier process of this run (the workdir holds one
    run, written by one process): atomic.* temporaries and staging folders, TensorFlow's
    ``ckpt-N_temp/`` and ``checkpoint.tmp*``. The complete outputs are never touched."""
    ckpt = workdir.path(run_dir, workdir.CHECKPOINTS)
    removed = (atomic.remove_leftovers(run_dir, staged=[workdir.GENERATOR])
               + atomic.remove_leftovers(ckpt))
    for name in sorted(os.listdir(ckpt)) if os.path.isdir(ckpt) else []:
        path = os.path.join(ckpt, name)
        if name.startswith("ckpt-") and name.endswith("_temp") and os.path.isdir(path):
            shutil.rmtree(path)
        elif name.startswith("checkpoint.tmp") and os.path.isfile(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        logging.info("removed what an interrupted earlier process left: %s", removed)


def _loop(config, plan, gan, schedule, data, step, manager, writer):
    """One private critic update per batch, a generator step when the schedule says so,
    logs and checkpoints; a final checkpoint at the last step. SIGINT/SIGTERM: checkpoint
    at the current step, then errors.Interrupted. A non-finite update or generator loss:
    errors.TrainingDiverged, keeping the last good checkpoint (see _diverged)."""
    total, start, start_step = plan.critic_steps, time.time(), int(step)
    generator_metrics = {}
    rows_per_step = tf.constant(config.batch_size * run_lib.group_size(config), tf.int32)
    with _StopSignals() as stop:
        for pairs, weight in data:
            metrics = gan.critic_step(pairs, weight)
            step.assign_add(1)
            s = int(step)
            if schedule.critic_stepped():
                generator_metrics = gan.generator_step(rows_per_step)
                accuracy = schedule.update(gan.fake_scores(rows_per_step))
                generator_metrics = {**generator_metrics, "n_critic": int(schedule.n),
                                     "critic_accuracy_on_fakes": accuracy}
            if not all(math.isfinite(float(m[k])) for m, k in (
                    (metrics, "update_norm"), (generator_metrics, "generator_loss")) if k in m):
                _diverged(config, plan, manager, s)
            if s % config.summary_every == 0 or s == total:
                metrics = {**metrics, **generator_metrics, **gan.critic_metrics(pairs)}
                rate = (s - start_step) / max(time.time() - start, 1e-9)
                _write_scalars(writer, s, metrics, config, plan, rate)
                logging.info("critic step %d/%d  W %.4f  eps %.3f  %.2f steps/s  ~%.0f s left",
                             s, total, float(metrics["wasserstein_estimate"]),
                             _epsilon(config, plan, s), rate, (total - s) / max(rate, 1e-9))
            if s % config.image_every == 0:
                _write_images(writer, gan, s, config.num_samples_png)
            if s % config.checkpoint_every == 0 or stop.signum:
                manager.save(checkpoint_number=s)
            if stop.signum:
                raise errors.Interrupted(
                    f"stopped by {signal.Signals(stop.signum).name} at critic step {s}/{total}; "
                    f"checkpoint saved; run the same command to resume", stop.signum)
    if manager.latest_checkpoint != os.path.join(manager.directory, f"ckpt-{int(step)}"):
        manager.save(checkpoint_number=int(step))


class _StopSignals:
    """Remembers SIGINT/SIGTERM during the loop (the loop stops at the next step boundary)."""

    def __init__(self):
        self.signum, self._previous = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def discarded_steps(run_dir: str) -> int:
    """Critic steps that ran but were rolled back after a divergence (ledger.json); they are
    spent privacy and are added to the steps of the card."""
    path = os.path.join(run_dir, workdir.CHECKPOINTS, workdir.LEDGER_JSON)
    return int(workdir.read_json(path, "the privacy ledger")["discarded_critic_steps"]) \
        if os.path.isfile(path) else 0


def _diverged(config, plan, manager, s):
    """Record the steps after the last good checkpoint as spent, then stop."""
    last = tf.train.get_checkpoint_state(manager.directory)
    good = int(last.model_checkpoint_path.rsplit("-", 1)[1]) if last else 0
    spent = discarded_steps(config.workdir) + (s - good)
    atomic.write_json_atomic(os.path.join(manager.directory, workdir.LEDGER_JSON),
                             {"discarded_critic_steps": spent})
    raise errors.TrainingDiverged(
        f"non-finite critic update or generator loss at critic step {s}: training stopped. "
        f"The last good checkpoint (step {good}) is kept; the {s - good} steps after it count "
        f"as spent privacy ({spent} discarded in all, ε so far "
        f"{_epsilon(config, plan, good + spent):.3f}). Lower --critic_lr / "
        f"--generator_lr in a new --workdir, or resume this one to retry.")


def batches(config, arrays, plan, seed: int, start_step: int):
    """(pairs [B, P, P, 2], row weights [B]) per critic step from ``start_step`` on.

    patch unit: Poisson over patches, weight 1. patient unit: Poisson over patients, k rows
    per sampled patient (weight 1/k per real patch, 0 for padding), so a patient's record
    loss is the mean over its k slots."""
    num_steps = max(plan.critic_steps - start_step, 0)
    if config.privacy_unit == "patch":
        data = pipeline.poisson(arrays, plan.sampling_rate, seed, start_step=start_step,
                                num_steps=num_steps)
        return data.map(lambda b: (wgan.to_pairs(b["image"], b["label"]),
                                   tf.ones([tf.shape(b["image"])[0]], tf.float32)))
    k = config.patches_per_patient
    data = pipeline.patient_grouped(arrays, plan.sampling_rate, k, seed,
                                    start_step=start_step, num_steps=num_steps)

    def flatten(b):
        patch = b["image"].shape[2]
        image = tf.reshape(b["image"], [-1, patch, patch, 1])
        label = tf.reshape(b["label"], [-1, patch, patch, 1])
        weight = tf.reshape(tf.cast(b["valid"], tf.float32), [-1]) / k
        return wgan.to_pairs(image, label), weight

    return data.map(flatten)


def _epsilon(config, plan, steps):
    if not config.private:
        return math.inf
    return accounting.compute_epsilon(plan.noise_multiplier, plan.sampling_rate, steps,
                                      plan.delta, config.accountant)


def _warn_weak(config, plan, info):
    """Valid but weak settings: said loudly, not refused."""
    if config.private and config.epsilon > 10:
        logging.warning("WEAK PRIVACY: epsilon = %g > 10 is a weak guarantee", config.epsilon)
    if config.private and plan.delta > 1.0 / (10 * plan.num_records):
        logging.warning("WEAK PRIVACY: delta = %g > 1/(10 N) = %g", plan.delta,
                        1.0 / (10 * plan.num_records))
    k = info.get("patches_per_patient") or 0
    if config.private and config.privacy_unit == "patch" and k > 1:
        eps_k, _ = accounting.group_privacy_epsilon_delta(
            _epsilon(config, plan, plan.critic_steps), plan.delta, k)
        logging.warning("PATCH-LEVEL PRIVACY: a patient contributed up to %d patches, so a "
                        "whole patient is only protected at epsilon %.3g (group privacy); "
                        "use --privacy_unit=patient to protect patients", k, eps_k)
    if config.private and config.noise_multiplier is not None and \
            plan.critic_steps < config.critic_steps:
        logging.warning("BUDGET CAP: noise multiplier %g reaches epsilon %g after %d of the "
                        "%d planned critic steps; training stops there", plan.noise_multiplier,
                        config.epsilon, plan.critic_steps, config.critic_steps)


def _log_plan(config, plan, writer):
    if config.private:
        logging.info("DP critic (per %s): noise multiplier %.4f, clip %g, q %.5f (batch %d "
                     "of %d), delta %.3g, %d critic steps -> epsilon %.3f (%s)",
                     config.privacy_unit, plan.noise_multiplier, config.l2_norm_clip,
                     plan.sampling_rate, config.batch_size, plan.num_records,
                     plan.delta, plan.critic_steps,
                     _epsilon(config, plan, plan.critic_steps), config.accountant)
    else:
        logging.warning("epsilon=inf: training WITHOUT differential privacy")
    with writer.as_default():
        tf.summary.text("run/plan", json.dumps(plan.as_dict(), indent=2), step=0)


def _write_scalars(writer, s, metrics, config, plan, rate):
    with writer.as_default():
        for name, value in metrics.items():
            tf.summary.scalar(f"train/{name}", value, step=s)
        tf.summary.scalar("privacy/epsilon", _epsilon(config, plan, s)
                          if config.private else -1.0, step=s)
        tf.summary.scalar("privacy/noise_multiplier", plan.noise_multiplier, step=s)
        tf.summary.scalar("perf/steps_per_sec", rate, step=s)
    writer.flush()


def _write_images(writer, gan, s, n):
    pairs = gan.sample(n).numpy()
    grid = viz.overlay_grid(pairs[..., 0], (pairs[..., 1] > 0).astype(np.uint8))
    with writer.as_default():
        tf.summary.image("samples/image_and_label_overlay", grid[None], step=s)
    return grid


def finish(run_dir, gan, config, plan, steps_run, info, writer, prior=None) -> dict:
    """Privacy card, samples.png and the exported generator, from the steps actually run.
    ``prior``: run_lib.describe_prior of the public prior the run started from, if any."""
    card = privacy_card.make_card(
        private=config.private, noise_multiplier=plan.noise_multiplier,
        l2_norm_clip=config.l2_norm_clip, expected_batch_size=config.batch_size,
        num_records=plan.num_records, critic_steps=steps_run + discarded_steps(run_dir),
        delta=plan.delta,
        accountant=config.accountant,
        target_epsilon=config.epsilon if math.isfinite(config.epsilon) else None,
        privacy_unit=config.privacy_unit,
        patches_per_patient=(config.patches_per_patient if config.privacy_unit == "patient"
                             else info.get("patches_per_patient")),
        data_independent_preprocessing=not info["normalization"].get("data_dependent", True),
        public_prior=prior)
    privacy_card.write_card(run_dir, card)
    grid = _write_images(writer, gan, steps_run, config.num_samples_png)
    atomic.write_bytes_atomic(workdir.path(run_dir, workdir.SAMPLES_PNG),
                              tf.io.encode_png(grid).numpy())
    with writer.as_default():
        tf.summary.text("privacy/statement", privacy_card.render_markdown(card),
                        step=steps_run)
        if os.path.isfile(workdir.path(run_dir, workdir.FLAGS_TXT)):
            with open(workdir.path(run_dir, workdir.FLAGS_TXT)) as f:
                tf.summary.text("run/flags", "```\n" + f.read() + "\n```", step=steps_run)
    writer.flush()
    export.export_generator(gan.release_generator, workdir.path(run_dir, workdir.GENERATOR),
                            run_lib.release_assets(card, info))
    return card
