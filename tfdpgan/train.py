"""Train a WGAN with a differentially private critic.

  python -m tfdpgan.train --epsilon=3                     # phantom demo data, ε = 3
  python -m tfdpgan.train --flagfile=flags/paper_dp.cfg --data=REC --workdir=W
  python -m tfdpgan.train --flagfile=W/private/flags.txt  # repeat (or resume) a run

With no --data the default phantom data set is generated and converted once into a cache.
The workdir receives release/ (generator/ SavedModel, privacy.json, PRIVACY.md, samples.png,
DP-safe TensorBoard events: what the guarantee covers) and private/ (flags.txt, run.json,
checkpoints/, and with --log_private_stats the non-DP statistics), both owner-only
(tfdpgan.workdir). Re-running with the same workdir resumes from the latest checkpoint. The
loop is tfdpgan.gan.training.
"""
from absl import flags

from tfdpgan import cli, distribute, paths, workdir as workdir_lib
from tfdpgan.data import default_data, phantom as phantom_lib
from tfdpgan.dp import card as privacy_card, step
from tfdpgan.gan import models, priors, run, training, wgan

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Define the command-line flags on ``fv`` (only when run as a program, or in tests).
    Long only because it lists every flag, one definition each."""
    fdef = cli.FlagDefiner(fv)
    d = run.TrainConfig(workdir="")
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
                      "instead of calibrating σ to --epsilon. Alone, the default --epsilon "
                      "caps the steps (with a warning); with --epsilon given too, σ must run "
                      "all --critic_steps within it, else the run is refused; with "
                      "--epsilon=inf, ε follows from σ.")
    fdef.DEFINE_enum("accountant", d.accountant, ["rdp", "pld"], "Accountant that calibrates "
                     "the noise and states ε (both are reported).")
    fdef.DEFINE_enum("privacy_unit", d.privacy_unit, list(privacy_card.UNITS), "What one DP record is: a "
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
    fdef.DEFINE_bool("adaptive_n_critic", d.adaptive_n_critic, "Double --n_critic while the "
                     "critic recognises fewer than 60% of fresh fakes (Bie et al. 2023; reads "
                     "no private data).")
    fdef.DEFINE_integer("max_n_critic", d.max_n_critic, "Upper bound of the adaptive n_critic.")
    fdef.DEFINE_float("ema_decay", g.ema_decay, "Export an exponential moving average of the "
                      "generator with this decay (e.g. 0.999; 0 = off). Post-processing: free.")
    fdef.DEFINE_string("init_from", priors.BUILTIN, "Start generator and critic from a "
                       "public prior: 'builtin' (tfdpgan's own, trained without DP on the "
                       "phantom; fits the demo's networks: 32x32 patches, --base_filters=16), "
                       "the workdir of a run on PUBLIC data (e.g. flags/pretrain_phantom.cfg), "
                       "or '' for none (random initialisation). Stated on the privacy card.")
    fdef.DEFINE_integer("base_filters", d.base_filters, "Width of both networks (paper: 96).")
    fdef.DEFINE_integer("generator_filters", None, "Width of the generator alone (default: "
                        "--base_filters). The generator never reads private data: a wider one "
                        "costs compute, not privacy (the DP noise scales with the critic).")
    fdef.DEFINE_enum("critic_norm", d.critic_norm, list(models.CRITIC_NORMS), "Critic "
                     "normalisation: group (GroupNorm, the paper) or none (Bie et al. 2023).")
    fdef.DEFINE_enum("generator_upsample", d.generator_upsample,
                     list(models.GENERATOR_UPSAMPLES), "Generator upsampling: transpose "
                     "(Conv2DTranspose, the paper) or resize (nearest + Conv2D 3x3).")
    fdef.DEFINE_enum("generator_output", d.generator_output, list(models.GENERATOR_OUTPUTS),
                     "Generator output: tanh (the paper) or rician (tanh, then a learned "
                     "magnitude-image noise layer on the image channel: models.RicianNoise).")
    fdef.DEFINE_integer("critic_frozen_stages", None, "Keep the first K critic stages of the "
                        "--init_from prior fixed (public features); DP clips and noises only "
                        "the rest, which then gets each record's whole clip budget (default: "
                        f"{priors.DEFAULT_FROZEN_STAGES} with a prior, 0 without).")
    fdef.DEFINE_float("instance_noise", g.instance_noise, "Std of Gaussian noise added to every "
                      "real and fake pair the critic sees (both channels; 0 = off).")
    fdef.DEFINE_integer("latent_dim", g.latent_dim, "Latent dimension.")
    fdef.DEFINE_enum("loss", g.loss, list(wgan.LOSSES), "wgan: weight clipping (paper); "
                     "wgan_gp: per-example gradient penalty; hinge; ns (non-saturating).")
    fdef.DEFINE_float("weight_clip", g.weight_clip, "Critic weight clip for --loss=wgan.")
    fdef.DEFINE_float("gp_weight", g.gp_weight, "Gradient-penalty weight for --loss=wgan_gp.")
    fdef.DEFINE_float("r1_weight", g.r1_weight, "R1 penalty gamma (0.5*gamma*||grad D(real)||^2 "
                      "per row) for --loss=hinge|ns; 0 = off. Uses the slower vmap clipping.")
    fdef.DEFINE_float("adam_beta1", g.adam_beta1, "Adam β1 (--optimizer=adam).")
    fdef.DEFINE_float("adam_beta2", g.adam_beta2, "Adam β2 (--optimizer=adam).")
    fdef.DEFINE_enum("dp_backend", g.dp_backend, list(step.BACKENDS), "fast: ghost-norm "
                     "clipping + TF Privacy's GaussianSumQuery; tf_privacy: TF Privacy's own "
                     "DPKeras*Optimizer (one microbatch per record; slow, the reference).")
    fdef.DEFINE_enum("optimizer", g.optimizer, ["rmsprop", "adam"], "Optimizer of both "
                     "networks (the critic's gradients are privatised before it).")
    fdef.DEFINE_float("critic_lr", g.critic_lr, "Critic learning rate.")
    fdef.DEFINE_float("generator_lr", g.generator_lr, "Generator learning rate.")
    fdef.DEFINE_integer("summary_every", d.summary_every, "Scalars every N critic steps.")
    fdef.DEFINE_integer("image_every", d.image_every, "Sample images every N critic steps.")
    fdef.DEFINE_bool("log_private_stats", d.log_private_stats, "Also log what is computed "
                     "from real data OUTSIDE the DP mechanism (critic loss, Wasserstein "
                     "estimate, gradient-norm quantiles, clipped fraction, batch size) into "
                     "W/private/tensorboard_private; never share it. Default: only DP-safe "
                     "quantities, into W/release/tensorboard.")
    fdef.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Checkpoint every N steps.")
    fdef.DEFINE_integer("sampling_seed", None, "Seed of the Poisson sampling (default: secret, "
                        "from OS entropy; a known seed weakens the guarantee).")
    fdef.DEFINE_integer("tf_seed", None, "Seed of initialisation, latents and the DP noise "
                        "(default: fresh each run); with --sampling_seed it makes the run "
                        "repeatable. It determines the noise: keep it as private as the "
                        "sampling seed.")
    fdef.DEFINE_integer("phantom_patients", p.num_patients, "Phantom: training patients.")
    fdef.DEFINE_integer("phantom_test", p.num_test, "Phantom: held-out test patients.")
    fdef.DEFINE_integer("phantom_seed", p.seed, "Phantom: seed.")
    fdef.DEFINE_enum("phantom_preset", p.preset, sorted(phantom_lib.PRESETS), "Phantom: "
                     "scanner/site preset (site_b: another site, e.g. for a public prior).")
    fdef.DEFINE_list("phantom_shape", list(map(str, p.shape)), "Phantom: volume shape x,y,z.")
    fdef.DEFINE_integer("patch_size", p.patch_size, "Phantom: patch size.")
    fdef.DEFINE_enum("strategy", d.strategy, list(distribute.STRATEGIES), "default: one "
                     "device; mirrored: tf.distribute.MirroredStrategy over the local GPUs (or "
                     "--cpu_devices logical CPUs); multi_worker: MultiWorkerMirroredStrategy "
                     "across machines (TF_CONFIG). The DP guarantee is the same: one global "
                     "Poisson sample, noise added once.")
    fdef.DEFINE_integer("cpu_devices", d.cpu_devices, "Split the CPU into N logical devices "
                        "(N >= 2; for --strategy=mirrored on a machine without GPUs).")
    fdef.DEFINE_bool("jit_compile", g.jit_compile, "Compile the critic's clipped gradient and "
                     "the generator's gradient with XLA (fixed-size batches, padded).")
    fdef.DEFINE_enum("mixed_precision", "off", ["off", *wgan.MIXED_PRECISION], "Compute "
                     "dtype of the generator (variables stay float32). The private critic "
                     "always computes in float32, so norms, clipping and noise are float32.")
    fdef.DEFINE_integer("phantom_patches_per_patient", p.patches_per_patient,
                        "Phantom: patches per patient in the converted data set.")


def config_from_flags(fv: flags.FlagValues = FLAGS) -> run.TrainConfig:
    eps = fv.epsilon
    init_from = fv.init_from or None
    frozen = fv.critic_frozen_stages
    if frozen is None:
        frozen = priors.DEFAULT_FROZEN_STAGES if init_from else 0
    workdir = fv.workdir or paths.default_workdir(eps)
    phantom_config = default_data.PhantomDataConfig(
        num_patients=fv.phantom_patients, num_test=fv.phantom_test,
        seed=fv.phantom_seed, shape=tuple(int(v) for v in fv.phantom_shape),
        preset=fv.phantom_preset,
        patch_size=fv.patch_size, patches_per_patient=fv.phantom_patches_per_patient)
    gan_config = wgan.WGANConfig(
        latent_dim=fv.latent_dim, loss=fv.loss, weight_clip=fv.weight_clip,
        gp_weight=fv.gp_weight, r1_weight=fv.r1_weight, optimizer=fv.optimizer,
        critic_lr=fv.critic_lr, generator_lr=fv.generator_lr, adam_beta1=fv.adam_beta1,
        adam_beta2=fv.adam_beta2,
        dp_backend=fv.dp_backend, ema_decay=fv.ema_decay, instance_noise=fv.instance_noise,
        jit_compile=fv.jit_compile,
        mixed_precision=None if fv.mixed_precision == "off" else fv.mixed_precision)
    return run.TrainConfig(
        workdir=workdir, data=fv.data, phantom=phantom_config, cache_dir=fv.cache_dir,
        epsilon=eps, delta=fv.delta, noise_multiplier=fv.noise_multiplier,
        accountant=fv.accountant, privacy_unit=fv.privacy_unit,
        patches_per_patient=fv.patches_per_patient, l2_norm_clip=fv.l2_norm_clip,
        batch_size=fv.batch_size, critic_steps=fv.critic_steps,
        critic_steps_per_generator_step=fv.n_critic, base_filters=fv.base_filters,
        generator_filters=fv.generator_filters, critic_norm=fv.critic_norm, generator_upsample=fv.generator_upsample,
        generator_output=fv.generator_output,
        critic_frozen_stages=frozen,
        gan=gan_config, summary_every=fv.summary_every, image_every=fv.image_every,
        checkpoint_every=fv.checkpoint_every, sampling_seed=fv.sampling_seed,
        tf_seed=fv.tf_seed, adaptive_n_critic=fv.adaptive_n_critic,
        max_n_critic=fv.max_n_critic, init_from=init_from,
        epsilon_and_noise_given=bool(fv["epsilon"].present and fv["noise_multiplier"].present),
        log_private_stats=fv.log_private_stats, strategy=fv.strategy,
        cpu_devices=fv.cpu_devices)


def run_flags_text(fv: flags.FlagValues, workdir: str) -> str:
    """flags.txt: the flags that repeat (or resume) the run. A default --epsilon that only
    caps a given --noise_multiplier is left out, so the flagfile does not turn it into an
    explicit --epsilon (which must agree with σ)."""
    exclude = ["workdir"]
    if fv["noise_multiplier"].present and not fv["epsilon"].present:
        exclude.append("epsilon")
    return cli.flags_text(fv, exclude=exclude) + f"--workdir={workdir}\n"


def main(argv):
    del argv
    config = config_from_flags()
    flags_text = run_flags_text(FLAGS, config.workdir)
    card = training.train(config, flags_text)
    if config.strategy == "multi_worker" and not distribute.is_chief(
            distribute.make_strategy("multi_worker")):
        print(f"done (worker): {card['critic_steps']} critic steps; the chief wrote the run "
              f"to {config.workdir}")
        return
    eps = "∞ (not private)" if card["epsilon"] is None else f"{card['epsilon']:.3f}"
    w = config.workdir
    print(f"done: {card['critic_steps']} critic steps, ε = {eps}, δ = {card['delta']}\n"
          f"  workdir      {w}\n"
          f"  generator    {workdir_lib.path(w, workdir_lib.GENERATOR)}\n"
          f"  privacy card {workdir_lib.path(w, workdir_lib.PRIVACY_MD)}\n"
          f"  samples      {workdir_lib.path(w, workdir_lib.SAMPLES_PNG)}\n"
          f"  release      {workdir_lib.release_dir(w)}  (python -m tfdpgan.export "
          f"--workdir={w} --release=DIR copies it)\n"
          f"  private      {workdir_lib.private_dir(w)}  (checkpoints, seed, flags: never "
          f"share)\n"
          f"  TensorBoard  tensorboard --logdir {w}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
