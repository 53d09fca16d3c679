"""A training run's settings and how to rebuild it from its workdir.

``TrainConfig`` holds every setting; ``run.json`` (tfdpgan.workdir) stores it with the budget
plan and the data folder, so a run can be rebuilt (networks from the latest checkpoint),
resumed, re-exported or audited without its flags.
"""
import dataclasses
import hashlib
import json
import math
import os
from typing import Optional, Tuple

import tensorflow as tf

from tfdpgan import atomic, errors, workdir
from tfdpgan.data import default_data, records
from tfdpgan.dp import card as privacy_card
from tfdpgan.gan import export, models, wgan

__all__ = ["TrainConfig", "group_size", "build_generator", "build_wgan", "make_checkpoint",
           "generator_width", "run_record", "data_fingerprint", "check_same_run", "config_from_run", "plan_from_run",
           "restore", "release_assets", "export_from_workdir"]

# Settings that do not change what a run computes: logging cadence and content, and whether ε and σ were
# both given (it only decides whether a disagreeing pair is refused; a run that starts has
# the same plan either way). Not part of run.json.
_COSMETIC = ("summary_every", "image_every", "checkpoint_every", "keep_checkpoints",
             "epsilon_and_noise_given", "log_private_stats")
# How, not what: the device layout and the compiler. A run may resume under another strategy
# or without XLA (the plan, the card and the mechanism are the same; the random streams of
# the replicas differ). Not part of run.json either.
_EXECUTION = ("strategy", "cpu_devices")
_GAN_EXECUTION = ("jit_compile",)


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
    # Defaults = flags/demo.cfg: sized for <= 10 minutes on a 2-core CPU (32x32 patches).
    batch_size: int = 256                    # expected records (patches|patients) per step
    critic_steps: int = 3000                 # planned critic (DP) steps
    critic_steps_per_generator_step: int = 5
    base_filters: int = 16
    # generator width (None = base_filters): the generator never reads private data, so
    # its size costs compute only, no privacy; the critic's (base_filters) sets the DP noise
    generator_filters: Optional[int] = None
    critic_norm: str = "group"               # models.CRITIC_NORMS: group (paper) | none
    generator_upsample: str = "transpose"    # models.GENERATOR_UPSAMPLES: transpose | resize
    generator_output: str = "tanh"           # models.GENERATOR_OUTPUTS: tanh | rician
    critic_frozen_stages: int = 0            # first k critic stages kept from --init_from
    # 5e-4: at 2e-4 the demo-size generator still made texture without vessels after
    # 2000 critic steps; 5e-4 / 3000 steps gives vessel-like bright structures with labels.
    # ema_decay 0.99: the released generator is an EMA of the last ~100 generator steps
    # (post-processing, free); at ε = 3 it took the synthetic U-Net's DSC from 0.49 to 0.55.
    gan: wgan.WGANConfig = wgan.WGANConfig(critic_lr=5e-4, generator_lr=5e-4, ema_decay=0.99)
    summary_every: int = 50
    image_every: int = 250
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    num_samples_png: int = 32
    sampling_seed: Optional[int] = None      # None = secret seed from OS entropy
    tf_seed: Optional[int] = None
    adaptive_n_critic: bool = False          # double n_critic while the critic is weak
    max_n_critic: int = 200
    init_from: Optional[str] = None          # workdir of a prior run on PUBLIC data
    # the user gave both epsilon and noise_multiplier (judged by the command): σ must then
    # run all critic_steps within ε, else the run is refused (card.make_plan, both_given)
    epsilon_and_noise_given: bool = False
    # also log what is computed from real data outside the DP mechanism (critic loss,
    # Wasserstein estimate, gradient-norm quantiles, ...) into private/ (gan.training)
    log_private_stats: bool = False
    # tf.distribute strategy (tfdpgan.distribute.STRATEGIES) and logical CPU devices to split
    strategy: str = "default"
    cpu_devices: int = 0

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon) or self.noise_multiplier is not None


def group_size(config: TrainConfig) -> int:
    """Rows of the critic batch per privacy record."""
    return config.patches_per_patient if config.privacy_unit == "patient" else 1


def generator_width(config: TrainConfig) -> int:
    """Base filters of the generator: --generator_filters, else --base_filters."""
    return config.generator_filters or config.base_filters


def build_wgan(config: TrainConfig, patch_size: int, plan: privacy_card.Plan) -> wgan.WGAN:
    """Fresh networks and optimizers for ``config`` with the plan's noise multiplier (under
    the current tf.distribute strategy: call it inside ``strategy.scope()``)."""
    gan_config = dataclasses.replace(
        config.gan, private=config.private, l2_norm_clip=config.l2_norm_clip,
        noise_multiplier=plan.noise_multiplier, expected_batch_size=float(config.batch_size),
        group_size=group_size(config))
    generator = build_generator(gan_config, patch_size, generator_width(config),
                                config.generator_upsample, config.generator_output)
    critic = models.build_critic(patch_size, config.base_filters,
                                 normalization=config.critic_norm)
    models.freeze_critic_stages(critic, config.critic_frozen_stages)
    return wgan.WGAN(generator, critic, gan_config, seed=config.tf_seed)


def build_generator(gan_config: wgan.WGANConfig, patch_size: int, base_filters: int,
                    upsample: str = "transpose", output: str = "tanh"):
    """The generator; with ``mixed_precision`` (bfloat16 | float16) it computes in that dtype
    (variables float32) inside a wrapper whose output is cast to float32 for the critic.

    The critic, the only network that reads private data, always computes in float32: its
    per-example norms, clip factors, clipped sum and noise are float32, so the bound
    ||c_i g_i|| <= C holds as without mixed precision; the generator is post-processing of
    the critic, so its precision cannot touch the guarantee."""
    if not gan_config.mixed_precision:
        return models.build_generator(gan_config.latent_dim, patch_size, base_filters,
                                      upsample=upsample, output=output)
    if gan_config.mixed_precision not in wgan.MIXED_PRECISION:
        raise errors.SettingsError(f"mixed_precision must be one of {wgan.MIXED_PRECISION}, "
                                   f"got {gan_config.mixed_precision!r}")
    before = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(f"mixed_{gan_config.mixed_precision}")
    try:
        inner = models.build_generator(gan_config.latent_dim, patch_size, base_filters,
                                       upsample=upsample, output=output)
    finally:
        tf.keras.mixed_precision.set_global_policy(before)
    latent = tf.keras.Input([gan_config.latent_dim], name="latent")
    out = tf.keras.layers.Activation("linear", dtype="float32", name="to_float32")(
        inner(latent))
    return tf.keras.Model(latent, out, name="generator")


def make_checkpoint(gan: wgan.WGAN, step: tf.Variable, seed: tf.Variable, schedule=None,
                    with_rng: bool = True):
    """Everything a resumed run needs, including the critic-step ledger, the SECRET
    sampling seed and the state of the training random generator (latents, DP noise), so
    checkpoints must stay private. ``with_rng`` False: for reading networks only (also from
    checkpoints of tfdpgan versions before the generator state was saved)."""
    extra = {} if schedule is None else {"schedule": schedule}
    if with_rng:
        extra["rng"] = gan.rng
    if gan.ema_generator is not None:
        extra["ema_generator"] = gan.ema_generator
    return tf.train.Checkpoint(generator=gan.generator, critic=gan.critic,
                               critic_optimizer=gan.critic_optimizer,
                               generator_optimizer=gan.generator_optimizer,
                               critic_step=step, sampling_seed=seed, **extra)


def data_fingerprint(rec_dir: str) -> str:
    """SHA-256 over dataset.json and the training shards (names and bytes): a resumed run
    refuses a data folder that changed (N, and so the accounting, depends on it)."""
    digest = hashlib.sha256()
    for path in [os.path.join(rec_dir, records.DATASET_JSON),
                 *records.shard_paths(rec_dir, "train")]:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def run_record(config: TrainConfig, plan: privacy_card.Plan, rec_dir: str,
               prior_sha256: Optional[str] = None) -> dict:
    """The run.json object: settings (minus logging cadence), plan, data folder and its
    fingerprint, and the prior's weights (priors.fingerprint; a changed prior under the same
    --init_from name is another run), in JSON form (tuples become lists, so it compares equal
    to what is read back)."""
    run = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in _COSMETIC + _EXECUTION}
    run["gan"] = {k: v for k, v in run["gan"].items() if k not in _GAN_EXECUTION}
    run.update(plan.as_dict(), data=os.path.abspath(rec_dir), epsilon=str(config.epsilon),
               data_fingerprint=data_fingerprint(rec_dir))
    if prior_sha256:
        run["prior_sha256"] = prior_sha256
    return json.loads(json.dumps(run))


def check_same_run(run_dir: str, run: dict):
    """A workdir holds one run: write run.json, or refuse to resume with other settings."""
    if workdir.has_run(run_dir):
        old = workdir.read_run(run_dir)
        changed = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
        if changed == ["data_fingerprint"]:
            raise errors.WorkdirError(f"{run['data']}: the data set changed since {run_dir} "
                                      f"started (dataset.json or its shards); N is part of the "
                                      f"privacy accounting, so resuming on it is refused")
        if changed:
            raise errors.WorkdirError(f"{run_dir} holds a run with different settings "
                                      f"({', '.join(changed)}); use a new --workdir")
    else:
        atomic.write_json_atomic(workdir.path(run_dir, workdir.RUN_JSON), run)


def config_from_run(run: dict) -> TrainConfig:
    """The TrainConfig stored in a run.json object."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in run.items() if k in fields}
    values["epsilon"] = float(values["epsilon"])
    values["phantom"] = default_data.PhantomDataConfig(
        **dict(values["phantom"], shape=tuple(values["phantom"]["shape"])))
    gan_fields = {f.name for f in dataclasses.fields(wgan.WGANConfig)}
    values["gan"] = wgan.WGANConfig(**{k: v for k, v in values["gan"].items()
                                       if k in gan_fields})
    return TrainConfig(**values)


def plan_from_run(run: dict) -> privacy_card.Plan:
    return privacy_card.Plan.from_dict(run)


def restore(run_dir: str, checkpoint: str = None) -> Tuple[TrainConfig, wgan.WGAN, dict]:
    """(config, gan, run.json object) of the run in ``run_dir``, networks and optimizers
    restored from its latest checkpoint (or the given ``checkpoint`` prefix of that run).
    WorkdirError if it has none, or if the checkpoint's networks do not match the run's
    settings."""
    run = workdir.read_run(run_dir)
    config = config_from_run(run)
    patch_size = records.read_dataset_json(run["data"])["patch_size"]
    gan = build_wgan(config, patch_size, plan_from_run(run))
    ckpt = make_checkpoint(gan, tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64),
                           with_rng=False)
    latest = checkpoint or tf.train.latest_checkpoint(workdir.path(run_dir, workdir.CHECKPOINTS))
    if latest is None:
        raise errors.WorkdirError(f"{run_dir}: no checkpoint (has the run started?)")
    try:
        status = ckpt.restore(latest)
        status.assert_existing_objects_matched()   # never return silently random networks
    except (AssertionError, ValueError) as e:
        raise errors.WorkdirError(f"{latest}: the checkpoint does not match the run's "
                                  f"settings ({str(e)[:200]})") from None
    status.expect_partial()
    return config, gan, run


def release_assets(card: dict, info: dict) -> dict:
    """What travels with the generator: the card and the data-independent description of the
    normalisation (method, formula, user-given range, and whether it is data-dependent;
    dataset.json's per-patient parameters, ids, file names and checksums are private and stay
    behind). A per-patient (percentile) normalisation is declared by ``data_dependent`` here
    and by the card's ``data_independent_preprocessing`` = false."""
    norm = {k: info["normalization"].get(k) for k in _RELEASED_NORMALIZATION
            if k in info["normalization"]}
    return {workdir.PRIVACY_JSON: card, workdir.NORMALIZATION_JSON: norm}


# The keys of dataset.json's "normalization" that are settings, not statistics of the data.
_RELEASED_NORMALIZATION = ("method", "percentile", "fixed_range", "target_range", "formula",
                           "data_dependent", "note")


def export_from_workdir(run_dir: str) -> str:
    """Re-export the generator of the run in ``run_dir`` from its latest checkpoint (into
    ``release/``, owner-only; an old flat workdir: where it was)."""
    _, gan, run = restore(run_dir)
    out = workdir.path(run_dir, workdir.GENERATOR)
    with workdir.owner_only():
        export.export_generator(gan.release_generator, out, release_assets(
            workdir.read_card(run_dir), records.read_dataset_json(run["data"])))
    if not workdir.is_flat(run_dir):
        workdir.secure(out)
    return out
