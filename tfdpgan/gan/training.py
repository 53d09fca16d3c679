"""Train a WGAN with a differentially private critic.

  python -m tfdpgan.train --epsilon=3                     # phantom demo data, ε = 3
  python -m tfdpgan.train --flagfile=flags/paper_dp.cfg --data=REC --workdir=W
  python -m tfdpgan.train --flagfile=W/flags.txt          # repeat (or resume) a run

With no --data the default phantom data set is generated and converted once into a cache.
The workdir receives flags.txt, card.json, PRIVACY.md, checkpoints/, TensorBoard event
files, generator/ (SavedModel) and samples.png. Re-running with the same workdir resumes from
the latest checkpoint; the privacy ledger (critic steps taken) is part of the checkpoint, so
a resumed run reports exactly what an uninterrupted one would.

Privacy: the record is a patch (``privacy_unit="patch"``, the paper's setting) or a patient
(``"patient"``: each step Poisson-samples patients and takes up to ``patches_per_patient`` of
each sampled patient's patches; the patient's summed contribution is clipped once). The noise
multiplier is calibrated before training for the planned critic steps and the sampling rate
q = batch_size / N (N records of the unit, batch_size the expected records per step); training
never runs more steps than the budget allows, and card.json is computed from the steps
actually run.
"""
import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from tfdpgan.dp import accounting, card
from tfdpgan import atomic
from tfdpgan.data import default_data, pipeline, records
from tfdpgan.gan import export, models, sample, wgan

CHECKPOINT_DIR = "checkpoints"
UNITS = ("patch", "patient")
RUN_JSON = "run.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    workdir: str
    data: Optional[str] = None               # TFRecord folder; None = phantom default data
    phantom: default_data.PhantomDataConfig = default_data.PhantomDataConfig()
    cache_dir: Optional[str] = None
    epsilon: float = 3.0                     # math.inf = non-private baseline
    delta: Optional[float] = None            # None = min(1e-5, 1/(10 N))
    noise_multiplier: Optional[float] = None  # given: epsilon is computed (or caps the steps)
    accountant: str = "pld"
    privacy_unit: str = "patch"               # patch | patient
    patches_per_patient: int = 8              # patient unit: k patches per sampled patient
    l2_norm_clip: float = 5e-4               # ~ median per-example norm at demo size
    # Defaults = flags/demo.cfg: sized for <= 15 minutes on a 2-core CPU.
    batch_size: int = 64                     # expected records (patches|patients) per step
    critic_steps: int = 3000                 # planned critic (DP) steps
    critic_steps_per_generator_step: int = 5
    base_filters: int = 16
    # 5e-4: at 2e-4 the demo-size generator still made texture without vessels after
    # 2000 critic steps; 5e-4 / 3000 steps gives vessel-like bright structures with labels.
    gan: wgan.WGANConfig = wgan.WGANConfig(critic_lr=5e-4, generator_lr=5e-4)
    summary_every: int = 50
    image_every: int = 250
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    num_samples_png: int = 32
    sampling_seed: Optional[int] = None      # None = secret seed from OS entropy
    tf_seed: Optional[int] = None

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon) or self.noise_multiplier is not None


def num_records(config: TrainConfig, arrays: pipeline.PatchArrays) -> int:
    """N of the privacy unit: training patches, or training patients."""
    if config.privacy_unit == "patient":
        return sum(len(r) > 0 for r in arrays.patient_records())
    return len(arrays)


def _plan(config: TrainConfig, n: int) -> dict:
    """Sampling rate, δ, noise multiplier and the number of critic steps to run."""
    return card.make_plan(
        num_records=n, expected_batch_size=config.batch_size,
        critic_steps=config.critic_steps, epsilon=config.epsilon,
        noise_multiplier=config.noise_multiplier, delta=config.delta,
        accountant=config.accountant)


def _check_settings(config: TrainConfig):
    if config.privacy_unit not in UNITS:
        raise ValueError(f"privacy_unit must be one of {UNITS}, got {config.privacy_unit!r}")
    if config.patches_per_patient < 1:
        raise ValueError(f"patches_per_patient must be >= 1, got {config.patches_per_patient}")


def _group_size(config: TrainConfig) -> int:
    """Rows of the critic batch per privacy record."""
    return config.patches_per_patient if config.privacy_unit == "patient" else 1


def _card(config: TrainConfig, plan: dict, steps_run: int, info: dict) -> dict:
    per_patient = (config.patches_per_patient if config.privacy_unit == "patient"
                   else info.get("patches_per_patient"))
    return card.make_card(
        private=config.private, noise_multiplier=plan["noise_multiplier"],
        l2_norm_clip=config.l2_norm_clip, expected_batch_size=config.batch_size,
        num_records=plan["num_records"], critic_steps=steps_run, delta=plan["delta"],
        accountant=config.accountant,
        target_epsilon=config.epsilon if math.isfinite(config.epsilon) else None,
        privacy_unit=config.privacy_unit, patches_per_patient=per_patient,
        data_independent_preprocessing=not info["normalization"].get("data_dependent", True))


def build_wgan(config: TrainConfig, patch_size: int, plan: dict) -> wgan.WGAN:
    gan_config = dataclasses.replace(
        config.gan, private=config.private, l2_norm_clip=config.l2_norm_clip,
        noise_multiplier=plan["noise_multiplier"], expected_batch_size=float(config.batch_size),
        group_size=_group_size(config))
    generator = models.build_generator(gan_config.latent_dim, patch_size, config.base_filters)
    critic = models.build_critic(patch_size, config.base_filters)
    return wgan.WGAN(generator, critic, gan_config)


def _checkpoint(gan: wgan.WGAN, step: tf.Variable, seed: tf.Variable) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(generator=gan.generator, critic=gan.critic,
                               critic_optimizer=gan.critic_optimizer,
                               generator_optimizer=gan.generator_optimizer,
                               critic_step=step, sampling_seed=seed)


def _check_same_run(workdir: str, run: dict):
    """A workdir holds one run: refuse to resume it with different settings."""
    path = os.path.join(workdir, RUN_JSON)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
        if changed:
            raise ValueError(f"{workdir} holds a run with different settings ({', '.join(changed)}"
                             f"); use a new --workdir")
    else:
        atomic.write_json_atomic(path, run)


def train(config: TrainConfig, flags_text: str = "") -> dict:
    """Run (or resume) training in ``config.workdir``; returns the final privacy card."""
    workdir = config.workdir
    _check_settings(config)
    rec_dir = config.data or default_data.prepare(config.phantom, config.cache_dir)[1]
    info = records.read_dataset_json(rec_dir)
    arrays = pipeline.load_arrays(rec_dir, "train")
    plan = _plan(config, num_records(config, arrays))
    os.makedirs(workdir, exist_ok=True)  # only once the data and the settings are valid
    if flags_text:
        atomic.write_text_atomic(os.path.join(workdir, "flags.txt"), flags_text)
    run = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in ("summary_every", "image_every", "checkpoint_every", "keep_checkpoints")}
    run.update(plan, data=os.path.abspath(rec_dir), epsilon=str(config.epsilon))
    run = json.loads(json.dumps(run))  # compare in JSON form (tuples become lists)
    _check_same_run(workdir, run)
    if config.tf_seed is not None:
        tf.random.set_seed(config.tf_seed)

    gan = build_wgan(config, info["patch_size"], plan)
    step = tf.Variable(0, dtype=tf.int64, name="critic_step")
    seed = tf.Variable(config.sampling_seed if config.sampling_seed is not None
                       else pipeline.new_secret_seed(), dtype=tf.int64, name="sampling_seed")
    ckpt = _checkpoint(gan, step, seed)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(workdir, CHECKPOINT_DIR),
                                         max_to_keep=config.keep_checkpoints)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at critic step %d", manager.latest_checkpoint,
                     int(step))
    writer = tf.summary.create_file_writer(workdir)
    total = plan["critic_steps"]
    _log_plan(config, plan, total, writer)

    batches = _batches(config, arrays, plan, int(seed.numpy()), int(step))
    start, start_step = time.time(), int(step)
    generator_metrics = {}
    rows_per_step = tf.constant(config.batch_size * _group_size(config), tf.int32)
    for pairs, weight in batches:
        metrics = gan.critic_step(pairs, weight)
        step.assign_add(1)
        s = int(step)
        if s % config.critic_steps_per_generator_step == 0:
            generator_metrics = gan.generator_step(rows_per_step)
        if s % config.summary_every == 0 or s == total:
            metrics = {**metrics, **generator_metrics, **gan.critic_metrics(pairs)}
            rate = (s - start_step) / max(time.time() - start, 1e-9)
            _write_scalars(writer, s, metrics, config, plan, rate)
            logging.info("critic step %d/%d  W %.4f  eps %.3f  %.2f steps/s  ~%.0f s left",
                         s, total, float(metrics["wasserstein_estimate"]),
                         _epsilon(config, plan, s), rate, (total - s) / max(rate, 1e-9))
        if s % config.image_every == 0:
            _write_images(writer, gan, s, config.num_samples_png)
        if s % config.checkpoint_every == 0:
            manager.save(checkpoint_number=s)
    if manager.latest_checkpoint != os.path.join(manager.directory, f"ckpt-{int(step)}"):
        manager.save(checkpoint_number=int(step))
    return finish(workdir, gan, config, plan, int(step), info, writer)


def _batches(config: TrainConfig, arrays, plan: dict, seed: int, start_step: int):
    """(pairs [B, P, P, 2], row weights [B]) per critic step from ``start_step`` on.

    patch unit: Poisson over patches, weight 1. patient unit: Poisson over patients, k rows
    per sampled patient (weight 1/k per real patch, 0 for padding), so a patient's record
    loss is the mean over its k slots."""
    num_steps = max(plan["critic_steps"] - start_step, 0)
    if config.privacy_unit == "patch":
        data = pipeline.poisson(arrays, plan["sampling_rate"], seed, start_step=start_step,
                                num_steps=num_steps)
        return data.map(lambda b: (wgan.to_pairs(b["image"], b["label"]),
                                   tf.ones([tf.shape(b["image"])[0]], tf.float32)))
    k = config.patches_per_patient
    data = pipeline.patient_grouped(arrays, plan["sampling_rate"], k, seed,
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
    return accounting.compute_epsilon(plan["noise_multiplier"], plan["sampling_rate"], steps,
                                      plan["delta"], config.accountant)


def _log_plan(config, plan, total, writer):
    if config.private:
        logging.info("DP critic (per %s): noise multiplier %.4f, clip %g, q %.5f (batch %d "
                     "of %d), delta %.3g, %d critic steps -> epsilon %.3f (%s)",
                     config.privacy_unit, plan["noise_multiplier"], config.l2_norm_clip,
                     plan["sampling_rate"], config.batch_size, plan["num_records"],
                     plan["delta"], total, _epsilon(config, plan, total), config.accountant)
    else:
        logging.warning("epsilon=inf: training WITHOUT differential privacy")
    with writer.as_default():
        tf.summary.text("run/plan", json.dumps(plan, indent=2), step=0)


def _write_scalars(writer, s, metrics, config, plan, rate):
    with writer.as_default():
        for name, value in metrics.items():
            tf.summary.scalar(f"train/{name}", value, step=s)
        tf.summary.scalar("privacy/epsilon", _epsilon(config, plan, s)
                          if config.private else -1.0, step=s)
        tf.summary.scalar("privacy/noise_multiplier", plan["noise_multiplier"], step=s)
        tf.summary.scalar("perf/steps_per_sec", rate, step=s)
    writer.flush()


def _write_images(writer, gan, s, n):
    pairs = gan.sample(n).numpy()
    grid = sample.overlay_grid(pairs[..., 0], (pairs[..., 1] > 0).astype(np.uint8))
    with writer.as_default():
        tf.summary.image("samples/image_and_label_overlay", grid[None], step=s)
    return grid


def finish(workdir, gan, config, plan, steps_run, info, writer) -> dict:
    """Privacy card, samples.png and the exported generator, from the steps actually run."""
    card = _card(config, plan, steps_run, info)
    card.write_card(workdir, card)
    grid = _write_images(writer, gan, steps_run, config.num_samples_png)
    tf.io.write_file(os.path.join(workdir, "samples.png"), tf.io.encode_png(grid))
    with writer.as_default():
        tf.summary.text("privacy/statement", card.render_markdown(card), step=steps_run)
        flags_path = os.path.join(workdir, "flags.txt")
        if os.path.isfile(flags_path):
            with open(flags_path) as f:
                tf.summary.text("run/flags", "```\n" + f.read() + "\n```", step=steps_run)
    writer.flush()
    export.export_generator(gan.generator, os.path.join(workdir, export.GENERATOR_DIR),
                            _release_assets(card, info))
    return card


def _release_assets(card: dict, info: dict) -> dict:
    """What travels with the generator: the card and the data-independent part of the
    normalisation (dataset.json's per-patient entries are private and stay behind)."""
    return {card.PRIVACY_JSON: card, export.NORMALIZATION_JSON: info["normalization"]}


def export_from_workdir(workdir: str) -> str:
    """Re-export the generator of the run in ``workdir`` from its latest checkpoint."""
    path = os.path.join(workdir, RUN_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; is {workdir} a training workdir?")
    with open(path) as f:
        run = json.load(f)
    gan = build_wgan(config_from_run(run), records.read_dataset_json(run["data"])["patch_size"],
                     run)
    ckpt = _checkpoint(gan, tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64))
    latest = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_DIR))
    if latest is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint to export")
    ckpt.restore(latest).expect_partial()
    out = os.path.join(workdir, export.GENERATOR_DIR)
    export.export_generator(gan.generator, out, _release_assets(
        card.read_card(workdir), records.read_dataset_json(run["data"])))
    return out


def config_from_run(run: dict) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in run.items() if k in fields}
    values["epsilon"] = float(values["epsilon"])
    values["phantom"] = default_data.PhantomDataConfig(
        **dict(values["phantom"], shape=tuple(values["phantom"]["shape"])))
    values["gan"] = wgan.WGANConfig(**values["gan"])
    return TrainConfig(**values)


# --- command line --------------------------------------------------------------------------

FLAGS = flags.FLAGS


class _FlagDefiner:
    """flags.DEFINE_* bound to one FlagValues (so tests can parse flagfiles in isolation)."""

    def __init__(self, fv):
        self.fv = fv

    def __getattr__(self, name):
        define = getattr(flags, name)
        return lambda *args, **kwargs: define(*args, flag_values=self.fv, **kwargs)


def define_flags(fv: flags.FlagValues = FLAGS):
    """Define the command-line flags on ``fv`` (only when run as a program, or in tests)."""
    fdef = _FlagDefiner(fv)
    d = TrainConfig(workdir="")
    g = d.gan
    p = default_data.PhantomDataConfig()
    fdef.DEFINE_string("workdir", None, "Folder for everything the run produces "
                       "(default: runs/eps<epsilon>).")
    fdef.DEFINE_string("data", None, "TFRecord folder from tools/nifti_to_tfrecord.py "
                       "(default: the phantom data set, generated once into the cache).")
    fdef.DEFINE_string("cache_dir", None, "Cache of the phantom data set "
                       "(default: $TFDPGAN_CACHE or ~/.cache/tfdpgan).")
    fdef.DEFINE_float("epsilon", d.epsilon, "Privacy budget ε (per patch); 'inf' trains "
                      "without DP (baseline).")
    fdef.DEFINE_float("delta", None, "δ (default: min(1e-5, 1/(10 N)) for N training records).")
    fdef.DEFINE_float("noise_multiplier", None, "Noise multiplier σ; if given, it is used "
                      "instead of calibrating σ to --epsilon (which then only caps the steps).")
    fdef.DEFINE_enum("accountant", d.accountant, ["rdp", "pld"], "Accountant that calibrates "
                     "the noise and states ε (both are reported).")
    fdef.DEFINE_enum("privacy_unit", d.privacy_unit, list(UNITS), "What one DP record is: a "
                     "patch (the paper) or a patient (all of a patient's patches; protects "
                     "patients).")
    fdef.DEFINE_integer("patches_per_patient", d.patches_per_patient, "--privacy_unit=patient: "
                        "patches taken from each sampled patient per step (k).")
    fdef.DEFINE_float("l2_norm_clip", d.l2_norm_clip, "Per-example gradient clip C of the "
                      "critic (over all its weights). Choose it near the median per-example "
                      "norm (TensorBoard train/norm_q50): the weight-clipped critic's "
                      "gradients are small (~5e-4 at demo size, ~1e-2 at paper size), and a C "
                      "far above them drowns the signal in noise.")
    fdef.DEFINE_integer("batch_size", d.batch_size, "Expected records per critic step (patches,"
                        " or patients with --privacy_unit=patient); Poisson sampling with "
                        "rate batch_size / N.")
    fdef.DEFINE_integer("critic_steps", d.critic_steps, "Planned critic (DP) steps.")
    fdef.DEFINE_integer("n_critic", d.critic_steps_per_generator_step,
                        "Critic steps per generator step.")
    fdef.DEFINE_integer("base_filters", d.base_filters, "Width of both networks (paper: 96).")
    fdef.DEFINE_integer("latent_dim", g.latent_dim, "Latent dimension.")
    fdef.DEFINE_enum("loss", g.loss, list(wgan.LOSSES), "wgan: weight clipping (paper); "
                     "wgan_gp: per-example gradient penalty.")
    fdef.DEFINE_float("weight_clip", g.weight_clip, "Critic weight clip for --loss=wgan.")
    fdef.DEFINE_float("gp_weight", g.gp_weight, "Gradient-penalty weight for --loss=wgan_gp.")
    fdef.DEFINE_enum("optimizer", g.optimizer, ["rmsprop", "adam"], "Optimizer of both "
                     "networks (the critic's gradients are privatised before it).")
    fdef.DEFINE_float("critic_lr", g.critic_lr, "Critic learning rate.")
    fdef.DEFINE_float("generator_lr", g.generator_lr, "Generator learning rate.")
    fdef.DEFINE_integer("summary_every", d.summary_every, "Scalars every N critic steps.")
    fdef.DEFINE_integer("image_every", d.image_every, "Sample images every N critic steps.")
    fdef.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Checkpoint every N steps.")
    fdef.DEFINE_integer("sampling_seed", None, "Seed of the Poisson sampling (default: secret, "
                        "from OS entropy; a known seed weakens the guarantee).")
    fdef.DEFINE_integer("tf_seed", None, "TensorFlow seed (initialisation, latents, noise).")
    fdef.DEFINE_integer("phantom_patients", p.num_patients, "Phantom: training patients.")
    fdef.DEFINE_integer("phantom_test", p.num_test, "Phantom: held-out test patients.")
    fdef.DEFINE_integer("phantom_seed", p.seed, "Phantom: seed.")
    fdef.DEFINE_list("phantom_shape", list(map(str, p.shape)), "Phantom: volume shape x,y,z.")
    fdef.DEFINE_integer("patch_size", p.patch_size, "Phantom: patch size.")
    fdef.DEFINE_integer("phantom_patches_per_patient", p.patches_per_patient,
                        "Phantom: patches per patient in the converted data set.")


def config_from_flags(fv: flags.FlagValues = FLAGS) -> TrainConfig:
    eps = fv.epsilon
    workdir = fv.workdir or os.path.join("runs", f"eps{eps:g}")
    phantom_config = default_data.PhantomDataConfig(
        num_patients=fv.phantom_patients, num_test=fv.phantom_test,
        seed=fv.phantom_seed, shape=tuple(int(v) for v in fv.phantom_shape),
        patch_size=fv.patch_size, patches_per_patient=fv.phantom_patches_per_patient)
    gan_config = wgan.WGANConfig(
        latent_dim=fv.latent_dim, loss=fv.loss, weight_clip=fv.weight_clip,
        gp_weight=fv.gp_weight, optimizer=fv.optimizer, critic_lr=fv.critic_lr,
        generator_lr=fv.generator_lr)
    return TrainConfig(
        workdir=workdir, data=fv.data, phantom=phantom_config, cache_dir=fv.cache_dir,
        epsilon=eps, delta=fv.delta, noise_multiplier=fv.noise_multiplier,
        accountant=fv.accountant, privacy_unit=fv.privacy_unit,
        patches_per_patient=fv.patches_per_patient, l2_norm_clip=fv.l2_norm_clip,
        batch_size=fv.batch_size, critic_steps=fv.critic_steps,
        critic_steps_per_generator_step=fv.n_critic, base_filters=fv.base_filters,
        gan=gan_config, summary_every=fv.summary_every, image_every=fv.image_every,
        checkpoint_every=fv.checkpoint_every, sampling_seed=fv.sampling_seed,
        tf_seed=fv.tf_seed)


def main(argv):
    del argv
    config = config_from_flags()
    flags_text = "".join(
        f.serialize() + "\n" for f in FLAGS.get_key_flags_for_module(sys.argv[0])
        if f.value is not None and f.name != "workdir")
    flags_text += f"--workdir={config.workdir}\n"
    try:
        card = train(config, flags_text)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    eps = "∞ (not private)" if card["epsilon"] is None else f"{card['epsilon']:.3f}"
    print(f"done: {card['critic_steps']} critic steps, ε = {eps}, δ = {card['delta']}\n"
          f"  workdir      {config.workdir}\n"
          f"  generator    {os.path.join(config.workdir, export.GENERATOR_DIR)}\n"
          f"  privacy card {os.path.join(config.workdir, card.PRIVACY_MD)}\n"
          f"  samples      {os.path.join(config.workdir, 'samples.png')}\n"
          f"  TensorBoard  tensorboard --logdir {config.workdir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
