"""How a public prior's FID develops with training, checkpoint by checkpoint (issue #11).

  python benchmarks/prior_fid.py        # ns + R1 prior, 20000 steps: ~30 min train + ~10 min FID
  python benchmarks/prior_fid.py --extra= --out_dir=runs/prior_fid_wgan   # the shipped recipe
  python benchmarks/prior_fid.py --quick --out_dir=/tmp/pf              # every code path, minutes

Trains a NON-private prior with the train command's flags of --recipe (default
flags/pretrain_phantom.cfg: public phantom site_b, seed 1000) followed by --extra (default: a
modern recipe, non-saturating loss + R1 penalty, Adam 2e-4 β = (0.5, 0.999), no critic
normalisation, one critic step per generator step, batch 64, generator EMA 0.999), keeping
every --every-th checkpoint. Then it scores the released generator (EMA when on) and the raw
generator of each checkpoint, and tfdpgan's shipped built-in prior, by FID against real
training patches of the benchmark's PRIVATE site (the default preset, seed 1: the phantom
benchmarks/utility.py fine-tunes and tests on, which no prior saw). FID here is a proxy:
--fid_samples generated patches against as many real ones (the floor: two disjoint real sets),
not the utility benchmark's test-volume FID, but the same network and sample size, so rows of
this table compare with each other. Nothing here is private: the prior reads public phantom
data, and the real patches are phantom patches too.

Resumable: the trainer resumes its run, scored checkpoints are kept in OUT_DIR/scores.json
(refused, with a message, when they were made with other settings). Table: --output.
"""
import dataclasses
import os
import re
import shlex
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic, train as train_command, workdir  # noqa: E402
from tfdpgan.data import default_data  # noqa: E402
from tfdpgan.evaluation import inputs  # noqa: E402
from tfdpgan.evaluation.fid import distance, network as fid_network  # noqa: E402
from tfdpgan.gan import export, priors, run as run_lib, sample, training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODERN = ("--loss=ns --r1_weight=10 --optimizer=adam --adam_beta1=0.5 --adam_beta2=0.999 "
          "--critic_lr=2e-4 --generator_lr=2e-4 --critic_norm=none --n_critic=1 "
          "--batch_size=64 --ema_decay=0.999")
flags.DEFINE_string("out_dir", os.path.join("runs", "prior_fid"), "Folder of the prior run.")
flags.DEFINE_string("recipe", os.path.join(ROOT, "flags", "pretrain_phantom.cfg"),
                    "Train flagfile of the prior (non-private; workdir is replaced).")
flags.DEFINE_string("extra", MODERN, "Train flags after the recipe (empty: the recipe alone).")
flags.DEFINE_integer("critic_steps", 20000, "Critic steps of the prior.")
flags.DEFINE_integer("every", 2000, "Score every N critic steps (checkpoints kept).")
flags.DEFINE_integer("fid_samples", 1000, "Images per FID set.")
flags.DEFINE_bool("quick", False, "Tiny sizes: every code path in minutes.")
flags.DEFINE_string("output", os.path.join(ROOT, "benchmarks", "results", "prior_fid.txt"),
                    "Table (a .json beside it holds the numbers).")
FLAGS = flags.FLAGS


def _config():
    """TrainConfig of --recipe + --extra, parsed by the train command's own flags."""
    fv = flags.FlagValues()
    train_command.define_flags(fv)
    fv(["train", f"--flagfile={FLAGS.recipe}", *shlex.split(FLAGS.extra)])
    config = train_command.config_from_flags(fv)
    if config.private:
        raise app.UsageError("a prior is trained without DP: the recipe must say --epsilon=inf")
    config = dataclasses.replace(
        config, workdir=os.path.join(FLAGS.out_dir, "run"), init_from=None,
        critic_steps=FLAGS.critic_steps, checkpoint_every=FLAGS.every,
        keep_checkpoints=FLAGS.critic_steps // FLAGS.every + 2, image_every=FLAGS.every)
    if FLAGS.quick:
        phantom = dataclasses.replace(config.phantom, num_patients=6, num_test=2,
                                      patches_per_patient=60)
        config = dataclasses.replace(config, phantom=phantom, base_filters=4,
                                     generator_filters=None, summary_every=10)
    return config


def _private_site_patches(config, n: int) -> tuple:
    """Two disjoint sets of n real training patches of the private site (utility.py's)."""
    site = default_data.benchmark_private_site(
        patch_size=config.phantom.patch_size,
        patches_per_patient=config.phantom.patches_per_patient)
    if FLAGS.quick:
        site = dataclasses.replace(site, num_patients=6, num_test=2, patches_per_patient=60)
    images, _ = inputs.real_sample(default_data.prepare(site)[1], site.patch_size, 2 * n)
    return images[:n], images[n:]


def _checkpoints(run_dir):
    """{critic step: checkpoint prefix} of the run, oldest first."""
    state = tf.train.get_checkpoint_state(workdir.path(run_dir, workdir.CHECKPOINTS))
    paths = state.all_model_checkpoint_paths if state else []
    return {int(re.search(r"ckpt-(\d+)$", p).group(1)): p for p in paths}


def main(argv):
    del argv
    config = _config()
    n = FLAGS.fid_samples if not FLAGS.quick else 20
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    scores_path = os.path.join(FLAGS.out_dir, "scores.json")
    settings = {"recipe": os.path.relpath(FLAGS.recipe, ROOT), "extra": FLAGS.extra,
                "critic_steps": FLAGS.critic_steps, "every": FLAGS.every, "fid_samples": n,
                "quick": FLAGS.quick}
    scores = inputs.read_json_or_none(scores_path) or {}
    if scores and scores.get("settings") != settings:
        raise app.UsageError(f"{scores_path}: scored with other settings "
                             f"({scores.get('settings')}): use a new --out_dir")
    scores.setdefault("settings", settings)
    scores.setdefault("steps", {})

    start = time.time()
    if not workdir.is_finished(config.workdir):
        print(f"training the prior in {config.workdir} ...", flush=True)
        training.train(config)
        scores["train_seconds"] = scores.get("train_seconds", 0.0) + time.time() - start
        atomic.write_json_atomic(scores_path, scores)

    net = fid_network.load_network()
    real_a, real_b = _private_site_patches(config, n)
    act_real = distance.activations(net, distance.to_inception_range(real_a))

    def fid_of(fn, latent_dim):
        images, _ = sample.generate(fn, latent_dim, n, seed=0)
        act = distance.activations(net, distance.to_inception_range(images))
        return distance.frechet_distance(act, act_real)

    if "floor" not in scores:
        act_b = distance.activations(net, distance.to_inception_range(real_b))
        scores["floor"] = distance.frechet_distance(act_b, act_real)
    if "builtin" not in scores and not FLAGS.quick:
        fn, latent_dim, _ = priors.sampler(priors.BUILTIN)
        scores["builtin"] = fid_of(fn, latent_dim)
    for step, prefix in _checkpoints(config.workdir).items():
        if str(step) in scores["steps"]:
            continue
        _, gan, _ = run_lib.restore(config.workdir, prefix)
        latent = config.gan.latent_dim
        row = {"release": fid_of(export.serving_function(gan.release_generator, latent), latent)}
        if gan.ema_generator is not None:
            row["raw"] = fid_of(export.serving_function(gan.generator, latent), latent)
        scores["steps"][str(step)] = row
        print(f"step {step}: FID {row}", flush=True)
        atomic.write_json_atomic(scores_path, scores)
    atomic.write_json_atomic(scores_path, scores)
    _write_table(scores)


def _fmt(x):
    return "-" if x is None else f"{x:.1f}"


def _write_table(scores):
    floor = scores["floor"]
    s = scores["settings"]
    lines = [f"# python benchmarks/prior_fid.py --extra='{s['extra']}' "
             f"--critic_steps={s['critic_steps']} --every={s['every']}",
             f"# recipe {s['recipe']} + extra; non-private prior on the public phantom; FID of "
             f"{s['fid_samples']} generated vs {s['fid_samples']} real private-site patches",
             f"train_seconds {scores.get('train_seconds', 0):.0f}",
             f"fid_real_floor {floor:.1f}",
             f"fid_builtin_prior {_fmt(scores.get('builtin'))}",
             f"{'critic_step':>11s} {'FID_release':>11s} {'FID_raw':>8s} {'ratio':>6s}"]
    best = None
    for step in sorted(scores["steps"], key=int):
        row = scores["steps"][step]
        lines.append(f"{int(step):>11d} {row['release']:>11.1f} {_fmt(row.get('raw')):>8s} "
                     f"{row['release'] / floor:>6.2f}")
        best = row["release"] if best is None else min(best, row["release"])
    if best is not None:
        lines.append(f"best_release_ratio_over_floor {best / floor:.2f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if not FLAGS.quick:
        atomic.write_text_atomic(FLAGS.output, text)
        atomic.write_json_atomic(os.path.splitext(FLAGS.output)[0] + ".json", scores)


if __name__ == "__main__":
    app.run(main)
