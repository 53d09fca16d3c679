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

Distribution (``strategy``: tfdpgan.distribute). The networks are built inside the strategy's
scope; every process draws the same global Poisson batch (the chief's secret seed is shared by
a collective, never written by the workers) and the critic step splits it across replicas with
the noise added once (tfdpgan.dp.step). Only the chief writes the workdir; a worker runs the
same loop against a scratch folder it removes at the end, resuming from the chief's
checkpoints (the workdir must be on a file system all workers read). The plan, and so the
card, does not depend on the strategy.

What goes where (tfdpgan.workdir): the card, PRIVACY.md, samples.png and the generator into
``release/``; flags.txt, run.json and the checkpoints into ``private/``; everything created
owner-only (0700 folders, 0600 files).

TensorBoard. Everything written to ``release/tensorboard`` is DP-safe: settings, the privacy
accounting, or post-processing of the DP mechanism's output (the critic after noised updates)
applied to generated data only:
  privacy/epsilon, privacy/noise_multiplier   accounting of the plan and the steps run
  train/update_norm          global norm of the noised, clipped critic update (the
                             mechanism's output; for ε = ∞ the plain gradient's norm)
  train/generator_loss       critic (post-processing) on generated pairs
  train/n_critic, train/critic_accuracy_on_fakes   the adaptive schedule: critic on fresh fakes
  perf/steps_per_sec         wall-clock rate
  samples/image_and_label_overlay   pairs drawn from the generator
  run/plan (N, q, σ, δ, steps: all on the released card), privacy/statement (PRIVACY.md)
NOT covered by the guarantee (functions of the private batch outside the mechanism), logged
only with ``log_private_stats`` and then into ``private/tensorboard_private``:
  train/critic_loss, train/wasserstein_estimate   critic on a REAL batch (wgan._critic_metrics)
  train/norm_q10, norm_q50, norm_q90, clipped_fraction   per-record gradient norms of the
                             real batch before clipping (dp.clipping.norm_stats)
  train/batch_size           the realised Poisson batch size (an exact count of sampled records)
  run/flags                  flags.txt (holds --tf_seed and data paths)
A metric not named in DP_SAFE_SCALARS is treated as private (default deny). The console
progress line shows the Wasserstein estimate only with ``log_private_stats`` too. For an
ε = ∞ run nothing is covered by any guarantee; the same split is applied.
"""
import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from tfdpgan import atomic, distribute, errors, viz, workdir
from tfdpgan.data import default_data, pipeline, records
from tfdpgan.dp import accounting
from tfdpgan.dp import card as privacy_card
from tfdpgan.gan import (export, models, priors, run as run_lib, schedule as schedule_lib,
                         wgan)

__all__ = ["train", "batches", "finish", "check_settings", "discarded_steps",
           "DP_SAFE_SCALARS", "PRIVATE_SCALARS", "Writers"]

# train/ scalars that are DP-safe (see the module docstring); every other metric is private.
DP_SAFE_SCALARS = ("update_norm", "generator_loss", "n_critic", "critic_accuracy_on_fakes")
# The private ones known today (documentation and tests; the rule is "not DP-safe").
PRIVATE_SCALARS = ("critic_loss", "wasserstein_estimate", "norm_q10", "norm_q50", "norm_q90",
                   "clipped_fraction", "batch_size")


@dataclasses.dataclass
class Writers:
    """TensorBoard writers: ``release`` (DP-safe) and ``private`` (None unless
    log_private_stats)."""
    release: tf.summary.SummaryWriter
    private: Optional[tf.summary.SummaryWriter] = None

    @classmethod
    def open(cls, run_dir: str, log_private_stats: bool) -> "Writers":
        return cls(tf.summary.create_file_writer(workdir.path(run_dir, workdir.TENSORBOARD)),
                   tf.summary.create_file_writer(workdir.path(
                       run_dir, workdir.TENSORBOARD_PRIVATE)) if log_private_stats else None)

    def flush(self):
        for w in (self.release, self.private):
            if w is not None:
                w.flush()


def check_settings(config: run_lib.TrainConfig):
    """Refuse settings that are invalid before anything is read or written."""
    wgan.check_config(config.gan)
    if config.privacy_unit not in privacy_card.UNITS:
        raise errors.SettingsError(f"privacy_unit must be one of {privacy_card.UNITS}, got "
                                   f"{config.privacy_unit!r}")
    if config.patches_per_patient < 1:
        raise errors.SettingsError(f"patches_per_patient must be >= 1, got "
                                   f"{config.patches_per_patient}")
    if config.private and config.tf_seed is not None and config.gan.dp_backend == "tf_privacy":
        raise errors.SettingsError(
            "--tf_seed with --dp_backend=tf_privacy: TF Privacy draws the DP noise from "
            "TensorFlow's process-level random ops, which restart when a run resumes, so with a "
            "fixed seed a resumed run would repeat the noise of its first steps; drop --tf_seed "
            "or use --dp_backend=fast (its noise generator is checkpointed)")
    if config.critic_frozen_stages and not config.init_from:
        raise errors.SettingsError(
            f"--critic_frozen_stages={config.critic_frozen_stages} keeps the first critic "
            f"stages of a public prior fixed: it needs --init_from (frozen random layers are "
            f"almost surely a mistake)")
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
    """Run (or resume) training in ``config.workdir``; returns the final privacy card. A
    finished run with the same settings, data and prior is not trained again (its card is
    returned); other settings in the same workdir are refused (run.check_same_run)."""
    check_settings(config)
    strategy = distribute.make_strategy(config.strategy, config.cpu_devices)  # before any op
    rec_dir = config.data or default_data.prepare(config.phantom, config.cache_dir)[1]
    info = records.read_dataset_json(rec_dir)
    stages = models.default_num_stages(info["patch_size"])
    if not 0 <= config.critic_frozen_stages <= stages:
        raise errors.SettingsError(f"--critic_frozen_stages={config.critic_frozen_stages}: the "
                                   f"critic of {info['patch_size']}x{info['patch_size']} patches "
                                   f"has {stages} stages")
    prior = None
    if config.init_from:   # a prior that saw this data, or does not fit, is refused here
        prior = priors.describe(config.init_from, rec_dir)
        priors.check_fits(config.init_from, priors.networks(config, info["patch_size"]))
        if config.critic_frozen_stages:
            prior["critic_frozen_stages"] = config.critic_frozen_stages
    arrays = pipeline.load_arrays(rec_dir, "train")
    plan = privacy_card.make_plan(
        num_records=_num_records(config, info, arrays), expected_batch_size=config.batch_size,
        critic_steps=config.critic_steps, epsilon=config.epsilon,
        noise_multiplier=config.noise_multiplier, delta=config.delta,
        accountant=config.accountant, both_given=config.epsilon_and_noise_given)
    if not distribute.is_chief(strategy):
        # a worker computes its share but writes nothing of the run: a scratch workdir
        scratch = tempfile.mkdtemp(prefix="tfdpgan-worker-")
        try:
            own = dataclasses.replace(config, workdir=scratch)
            workdir.make_dirs(scratch)
            return _run(own, "", rec_dir, info, arrays, plan, strategy, prior,
                        shared_dir=config.workdir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    run_dir = config.workdir
    workdir.make_dirs(run_dir)  # only once the data and the settings are valid
    with workdir.owner_only():
        try:
            return _run(config, flags_text, rec_dir, info, arrays, plan, strategy, prior)
        finally:   # also after a crash or a stop: nothing readable by others
            workdir.secure(workdir.release_dir(run_dir))
            workdir.secure(workdir.private_dir(run_dir))


def _run(config, flags_text, rec_dir, info, arrays, plan, strategy, prior,
         shared_dir=None) -> dict:
    """train() once the workdir's folders exist. ``prior``: priors.describe of the public
    prior (None without one). ``shared_dir``: on a worker, the chief's workdir (its
    checkpoints and ledger are read to resume; nothing is written there)."""
    run_dir = config.workdir
    shared_dir = shared_dir or run_dir
    run_lib.check_same_run(run_dir, run_lib.run_record(
        config, plan, rec_dir, prior_sha256=prior and prior["prior_sha256"]))
    if _finished(shared_dir, plan):
        # same settings, data and prior (checked above), every step run: nothing to do (on
        # every process alike: each reads the chief's workdir, so none waits for the others)
        logging.info("%s: this run already finished; its card and generator stand",
                     shared_dir)
        return workdir.read_card(shared_dir)
    if flags_text:   # only once the settings are known to be this run's
        atomic.write_text_atomic(workdir.path(run_dir, workdir.FLAGS_TXT), flags_text)
    _remove_leftovers(run_dir)
    if config.tf_seed is not None:
        # Keras initialisers without a seed draw one from Python's `random`: seed it too
        tf.keras.utils.set_random_seed(config.tf_seed)
    with strategy.scope():
        gan = run_lib.build_wgan(config, info["patch_size"], plan)
    step = tf.Variable(0, dtype=tf.int64, name="critic_step")
    seed = tf.Variable(config.sampling_seed if config.sampling_seed is not None
                       else pipeline.new_secret_seed(), dtype=tf.int64, name="sampling_seed")
    schedule = schedule_lib.CriticSchedule(config.critic_steps_per_generator_step,
                                           config.adaptive_n_critic, max_n=config.max_n_critic)
    manager = tf.train.CheckpointManager(run_lib.make_checkpoint(gan, step, seed, schedule),
                                         workdir.path(run_dir, workdir.CHECKPOINTS),
                                         max_to_keep=config.keep_checkpoints)
    latest = tf.train.latest_checkpoint(workdir.path(shared_dir, workdir.CHECKPOINTS))
    if latest:
        _resume(manager, latest, gan, step, seed, schedule)
    elif config.init_from:
        priors.load_into(gan, config.init_from)
        logging.info("initialised generator and critic from %s (public prior)",
                     config.init_from)
    # every process samples with the chief's seed (a collective, not a file)
    seed.assign(distribute.share_from_first_replica(strategy, int(seed.numpy())))
    writers = Writers.open(run_dir, config.log_private_stats)
    _log_plan(config, plan, writers)
    _warn_weak(config, plan, info)
    # steps rolled back after a divergence were spent: the budget left shrinks by them
    plan = dataclasses.replace(plan, critic_steps=max(
        plan.critic_steps - discarded_steps(shared_dir), int(step)))
    data = batches(config, arrays, plan, int(seed.numpy()), int(step))
    _loop(config, plan, gan, schedule, data, step, manager, writers)
    return finish(run_dir, gan, config, plan, int(step), info, writers, prior,
                  discarded=discarded_steps(shared_dir))


def _finished(run_dir, plan) -> bool:
    """The run wrote its card and generator and its latest checkpoint is at the last planned
    step (less the steps rolled back after a divergence): training would do nothing."""
    latest = tf.train.latest_checkpoint(workdir.path(run_dir, workdir.CHECKPOINTS))
    return (workdir.is_finished(run_dir) and latest is not None
            and int(latest.rsplit("-", 1)[1]) >= plan.critic_steps - discarded_steps(run_dir))


def _resume(manager, latest, gan, step, seed, schedule):
    """Restore the latest checkpoint. One written before the random generator's state was
    saved resumes with a fresh, unpredictable generator state: restarting it from --tf_seed
    would repeat the DP noise of the first steps (two updates would then differ by a
    noise-free amount)."""
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
    removed = (atomic.remove_leftovers(workdir.release_dir(run_dir), staged=[workdir.GENERATOR])
               + atomic.remove_leftovers(workdir.private_dir(run_dir))
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


def _loop(config, plan, gan, schedule, data, step, manager, writers):
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
                _summarise(config, plan, gan, pairs, {**metrics, **generator_metrics}, s,
                           (s - start_step) / max(time.time() - start, 1e-9), writers)
            if s % config.image_every == 0:
                _write_images(writers.release, gan, s, config.num_samples_png)
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


def _summarise(config, plan, gan, pairs, metrics, s, rate, writers):
    """Scalars of critic step ``s`` (DP-safe to release, the rest to private, see the module
    docstring) and the console progress line."""
    if writers.private is not None:
        metrics = {**metrics, **gan.critic_metrics(pairs)}   # real batch: private
    _write_scalars(writers, s, metrics, config, plan, rate)
    total = plan.critic_steps
    private = (f"  W {float(metrics['wasserstein_estimate']):.4f}"
               if "wasserstein_estimate" in metrics else "")
    generator = (f"  G loss {float(metrics['generator_loss']):.4f}"
                 if "generator_loss" in metrics else "")
    logging.info("critic step %d/%d%s%s  eps %.3f  %.2f steps/s  ~%.0f s left", s, total,
                 generator, private, _epsilon(config, plan, s), rate,
                 (total - s) / max(rate, 1e-9))


def discarded_steps(run_dir: str) -> int:
    """Critic steps that ran but were rolled back after a divergence (ledger.json); they are
    spent privacy and are added to the steps of the card."""
    path = workdir.ledger_path(run_dir)
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


def _log_plan(config, plan, writers):
    if config.private:
        logging.info("DP critic (per %s): noise multiplier %.4f, clip %g, q %.5f (batch %d "
                     "of %d), delta %.3g, %d critic steps -> epsilon %.3f (%s); noise/signal "
                     "sigma/B %.4g", config.privacy_unit, plan.noise_multiplier,
                     config.l2_norm_clip, plan.sampling_rate, config.batch_size,
                     plan.num_records, plan.delta, plan.critic_steps,
                     _epsilon(config, plan, plan.critic_steps), config.accountant,
                     plan.noise_to_signal)
    else:
        logging.warning("epsilon=inf: training WITHOUT differential privacy")
    with writers.release.as_default():   # N, q, σ, δ, steps: all on the released card
        tf.summary.text("run/plan", json.dumps(plan.as_dict(), indent=2), step=0)


def _write_scalars(writers, s, metrics, config, plan, rate):
    """train/ scalars named in DP_SAFE_SCALARS, privacy/ and perf/ into the release events;
    every other train/ scalar into the private events (dropped without them)."""
    with writers.release.as_default():
        for name, value in metrics.items():
            if name in DP_SAFE_SCALARS:
                tf.summary.scalar(f"train/{name}", value, step=s)
        tf.summary.scalar("privacy/epsilon", _epsilon(config, plan, s)
                          if config.private else -1.0, step=s)
        tf.summary.scalar("privacy/noise_multiplier", plan.noise_multiplier, step=s)
        tf.summary.scalar("perf/steps_per_sec", rate, step=s)
    if writers.private is not None:
        with writers.private.as_default():
            for name, value in metrics.items():
                if name not in DP_SAFE_SCALARS:
                    tf.summary.scalar(f"train/{name}", value, step=s)
    writers.flush()


def _write_images(writer, gan, s, n):
    """Generated pairs only (DP-safe): into the release events."""
    pairs = gan.sample(n).numpy()
    grid = viz.overlay_grid(pairs[..., 0], (pairs[..., 1] > 0).astype(np.uint8))
    with writer.as_default():
        tf.summary.image("samples/image_and_label_overlay", grid[None], step=s)
    return grid


def finish(run_dir, gan, config, plan, steps_run, info, writers, prior=None,
           discarded=None) -> dict:
    """Privacy card, samples.png and the exported generator, from the steps actually run.
    ``writers``: Writers. ``prior``: priors.describe of the public prior the run
    started from, if any. ``discarded``: steps rolled back after a divergence (default: read
    from ``run_dir``'s ledger)."""
    card = privacy_card.make_card(
        private=config.private, noise_multiplier=plan.noise_multiplier,
        l2_norm_clip=config.l2_norm_clip, expected_batch_size=config.batch_size,
        num_records=plan.num_records,
        critic_steps=steps_run + (discarded_steps(run_dir) if discarded is None else discarded),
        delta=plan.delta,
        accountant=config.accountant,
        target_epsilon=config.epsilon if math.isfinite(config.epsilon) else None,
        privacy_unit=config.privacy_unit,
        patches_per_patient=(config.patches_per_patient if config.privacy_unit == "patient"
                             else info.get("patches_per_patient")),
        data_independent_preprocessing=not info["normalization"].get("data_dependent", True),
        public_prior=prior)
    privacy_card.write_card(run_dir, card)
    grid = _write_images(writers.release, gan, steps_run, config.num_samples_png)
    atomic.write_bytes_atomic(workdir.path(run_dir, workdir.SAMPLES_PNG),
                              tf.io.encode_png(grid).numpy())
    with writers.release.as_default():
        tf.summary.text("privacy/statement", privacy_card.render_markdown(card),
                        step=steps_run)
    flags_txt = workdir.path(run_dir, workdir.FLAGS_TXT)
    if writers.private is not None and os.path.isfile(flags_txt):
        with open(flags_txt) as f, writers.private.as_default():   # --tf_seed, data paths
            tf.summary.text("run/flags", "```\n" + f.read() + "\n```", step=steps_run)
    writers.flush()
    export.export_generator(gan.release_generator, workdir.path(run_dir, workdir.GENERATOR),
                            run_lib.release_assets(card, info))
    return card
