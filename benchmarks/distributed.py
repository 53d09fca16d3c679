"""The private critic step on 1 device, 2 mirrored replicas (2 logical CPU devices) and 2 local
workers (MultiWorkerMirroredStrategy on 127.0.0.1), one run:

  * the update of one PrivateStep with noise off on the same global batch and the same
    initial critic: ``replica_update_max_abs_diff`` (2 replicas vs 1 device, and 2 workers vs
    1 device) should be float rounding;
  * critic steps/s of THE training critic step (tfdpgan.gan.wgan.WGAN.critic_step, noise on,
    demo-like size) under each layout, and the communication share: the time of the
    all-reduce of a gradient-sized list alone over the step time;
  * the privacy card of a short training run under each layout (they must be equal).

On this 2-core machine the two logical devices and the two workers share the same cores, so
no speed-up is expected: this measures correctness and overhead, not scaling.

  python benchmarks/distributed.py [--patch_size=32 --base_filters=16 --batch_size=64]

Writes benchmarks/results/distributed.txt (the printed report).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tfdpgan  # noqa: E402,F401  pylint: disable=g-import-not-at-top  (TF settings first)
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top
from tfdpgan import distribute  # noqa: E402  pylint: disable=g-import-not-at-top
from tfdpgan.dp import step as dp_step  # noqa: E402  pylint: disable=g-import-not-at-top
from tfdpgan.gan import losses, models, wgan  # noqa: E402  pylint: disable=g-import-not-at-top

flags.DEFINE_integer("patch_size", 32, "Patch size of the critic.")
flags.DEFINE_integer("base_filters", 16, "Base filters of both networks.")
flags.DEFINE_integer("batch_size", 64, "Expected records per critic step.")
flags.DEFINE_integer("steps", 10, "Timed critic steps per layout (median).")
flags.DEFINE_integer("card_steps", 20, "Critic steps of the short training runs for the cards.")
flags.DEFINE_string("output", os.path.join(ROOT, "benchmarks", "results", "distributed.txt"),
                    "Where to write the report.")
flags.DEFINE_string("worker_out", None, "Internal: run as a worker of TF_CONFIG's cluster "
                    "and write the chief's measurements to this JSON file.")
FLAGS = flags.FLAGS
CLIP, SIGMA = 0.01, 1.0


def _loss(critic, rows):
    real, fake, weight = rows
    return weight * losses.critic_loss("wgan")(critic, (real, fake))


def _global_batch():
    rng = np.random.default_rng(0)
    n, p = FLAGS.batch_size, FLAGS.patch_size
    return tuple(tf.constant(a) for a in (rng.uniform(-1, 1, (n, p, p, 2)).astype(np.float32),
                                          rng.uniform(-1, 1, (n, p, p, 2)).astype(np.float32),
                                          np.ones(n, np.float32)))


def _initial_weights():
    tf.keras.utils.set_random_seed(1)
    return models.build_critic(FLAGS.patch_size, FLAGS.base_filters).get_weights()


def _update(strategy):
    """Critic weights after one noise-free PrivateStep on the global batch under strategy."""
    with strategy.scope():
        critic = models.build_critic(FLAGS.patch_size, FLAGS.base_filters)
        critic.set_weights(_initial_weights())
        private = dp_step.PrivateStep(critic, tf.keras.optimizers.legacy.SGD(1.0), _loss,
                                      l2_norm_clip=CLIP, noise_multiplier=0.0,
                                      expected_batch_size=float(FLAGS.batch_size),
                                      rng=tf.random.Generator.from_seed(0))
    real, fake, weight = _global_batch()
    replicas = strategy.num_replicas_in_sync
    both, weight = distribute.pad_global_batch(
        tf.concat([real, fake], -1), weight, replicas,
        distribute.chunk_records(FLAGS.batch_size, replicas))
    distribute.replicated(strategy, lambda b, w: private((b[..., :2], b[..., 2:], w)))(
        both, weight)
    return critic.get_weights()


def _timing(strategy):
    """(median s per critic step, median s per all-reduce of a gradient-sized list)."""
    config = wgan.WGANConfig(latent_dim=64, l2_norm_clip=CLIP, noise_multiplier=SIGMA,
                             expected_batch_size=float(FLAGS.batch_size))
    with strategy.scope():
        gan = wgan.WGAN(models.build_generator(64, FLAGS.patch_size, FLAGS.base_filters),
                        models.build_critic(FLAGS.patch_size, FLAGS.base_filters), config,
                        seed=0)
    real = _global_batch()[0]
    grads = [tf.zeros_like(v) for v in gan.critic.trainable_variables]

    @tf.function
    def all_reduce():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, grads))

    def median_seconds(fn):
        fn()
        fn()   # warm-up: tracing
        times = []
        for _ in range(FLAGS.steps):
            start = time.perf_counter()
            out = fn()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t,
                                  strategy.experimental_local_results(out))
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median_seconds(lambda: gan.critic_step(real)), median_seconds(all_reduce)


def _launch_workers(argv_for):
    """Start worker 0 and 1 of a local cluster; argv_for(index) -> argv; wait for both."""
    procs = [subprocess.Popen(argv_for(i), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                       TF_CONFIG=tf_config))
             for i, tf_config in enumerate(distribute.local_cluster(2))]
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"worker failed:\n{out[-3000:]}")


def _worker_main():
    strategy = distribute.make_strategy("multi_worker")
    weights = _update(strategy)
    step_s, reduce_s = _timing(strategy)
    if distribute.is_chief(strategy):
        np.savez(FLAGS.worker_out + ".npz", *weights)
        with open(FLAGS.worker_out, "w") as f:
            json.dump({"step_s": step_s, "reduce_s": reduce_s}, f)


def _card(workdir):
    with open(os.path.join(workdir, "release", "privacy.json")) as f:
        card = json.load(f)
    return {k: card[k] for k in ("epsilon", "delta", "noise_multiplier", "sampling_rate",
                                 "critic_steps", "l2_norm_clip", "num_records")}


def _cards(tmp):
    """Privacy cards of short runs on the default phantom under each layout."""
    common = [sys.executable, "-m", "tfdpgan.train", "--epsilon=3",
              f"--critic_steps={FLAGS.card_steps}", "--base_filters=4", "--latent_dim=8",
              "--checkpoint_every=1000", "--sampling_seed=1", "--init_from="]
    cards = {}
    for name, extra in (("default", []), ("mirrored", ["--strategy=mirrored",
                                                       "--cpu_devices=2"])):
        w = os.path.join(tmp, name)
        subprocess.run(common + [f"--workdir={w}"] + extra, cwd=ROOT, check=True,
                       capture_output=True)
        cards[name] = _card(w)
    w = os.path.join(tmp, "multi_worker")
    _launch_workers(lambda i: common + [f"--workdir={w}", "--strategy=multi_worker"])
    cards["multi_worker"] = _card(w)
    return cards


def main(argv):
    del argv
    if FLAGS.worker_out:
        return _worker_main()
    mirrored = distribute.make_strategy("mirrored", cpu_devices=2)
    one = _update(tf.distribute.get_strategy())
    two = _update(mirrored)
    diff_mirrored = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(one, _initial_weights()))
    timing = {"1 device": _timing(tf.distribute.get_strategy()),
              "2 replicas (mirrored, 2 logical CPUs)": _timing(mirrored)}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        _launch_workers(lambda i: [sys.executable, os.path.abspath(__file__),
                                   f"--worker_out={out}", f"--patch_size={FLAGS.patch_size}",
                                   f"--base_filters={FLAGS.base_filters}",
                                   f"--batch_size={FLAGS.batch_size}",
                                   f"--steps={FLAGS.steps}"])
        with open(out) as f:
            measured = json.load(f)
        workers = np.load(out + ".npz")
        diff_workers = max(float(np.max(np.abs(a - workers[f"arr_{i}"])))
                           for i, a in enumerate(one))
        timing["2 workers (multi_worker, 127.0.0.1)"] = (measured["step_s"],
                                                         measured["reduce_s"])
        cards = _cards(tmp)
    lines = [f"Private critic step: patch {FLAGS.patch_size}, base {FLAGS.base_filters}, "
             f"expected batch {FLAGS.batch_size}, clip {CLIP}, σ {SIGMA}; "
             f"{os.cpu_count()} CPU cores shared by all layouts.", "",
             f"{'layout':40s} {'steps/s':>8s} {'all-reduce ms':>14s} {'comm. share':>12s}"]
    for name, (step_s, reduce_s) in timing.items():
        share = reduce_s / step_s if name != "1 device" else 0.0
        lines.append(f"{name:40s} {1 / step_s:8.2f} {1000 * reduce_s:14.2f} {share:12.3f}")
    lines += ["", "privacy cards (short runs on the default phantom):"]
    for name, card in cards.items():
        lines.append(f"  {name:13s} {json.dumps(card)}")
    lines += ["", f"cards_equal {all(c == cards['default'] for c in cards.values())}",
              f"update_moved_max_abs {moved:.3e}",
              f"replica_update_max_abs_diff_workers {diff_workers:.3e}",
              f"replica_update_max_abs_diff {diff_mirrored:.3e}"]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        f.write(text)


if __name__ == "__main__":
    app.run(main)
