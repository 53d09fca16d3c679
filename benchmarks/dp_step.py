"""Critic step time: non-private vs tfdpgan DP vs stock TF Privacy, one run.

All three are THE critic step that training runs (tfdpgan.gan.wgan.WGAN.critic_step, which
draws the fakes and calls tfdpgan.dp.step.PrivateStep), built by tfdpgan.gan.run.build_wgan's
building blocks with the WGAN loss and Adam, for the demo size and the paper size (patch 96,
base 96); inside tf.function after a warm-up, the median of:
  plain  private=False (ε = ∞): the plain gradient of the mean critic loss,
  dp     --dp_backend=fast: ghost clipping + GaussianSumQuery,
  stock  --dp_backend=tf_privacy: TF Privacy's DPKerasAdamOptimizer, a microbatch per record.
plain and dp alternate step by step; stock runs in a child process (it can be
too slow or too large) that stops after one step slower than
--stock_max_step_seconds, is killed after --stock_timeout seconds and fails
above --stock_memory_gb of address space.
Prints a table and, as the last line, `dp_step_ratio <dp/plain>` of the last
size (the paper size unless --nopaper);
the same text goes to benchmarks/results/dp_step.txt.

  python benchmarks/dp_step.py [--demo_patch_size=64 --demo_base_filters=32]
"""
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfdpgan  # noqa: F401  pylint: disable=g-import-not-at-top  (TF settings first)
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tfdpgan.gan import models, wgan  # pylint: disable=g-import-not-at-top

flags.DEFINE_integer("demo_patch_size", 64, "Patch size of the demo model.")
flags.DEFINE_integer("demo_base_filters", 32, "Base filters of the demo model.")
flags.DEFINE_integer("batch_size", 32, "Examples (real/fake pairs) per step.")
flags.DEFINE_integer("steps", 5, "Timed steps per variant (median).")
flags.DEFINE_bool("paper", True, "Also measure the paper size (96, base 96).")
flags.DEFINE_integer("stock_steps", 2, "Timed steps of the stock optimizer.")
flags.DEFINE_float("stock_max_step_seconds", 60.0,
                   "Stop timing stock after one step slower than this.")
flags.DEFINE_integer("stock_timeout", 1800,
                     "Seconds before the stock child process is killed.")
flags.DEFINE_float("stock_memory_gb", 12.0,
                   "Address-space limit of the stock child process.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__),
                                           "results", "dp_step.txt"),
                    "Where to write the printed report.")
flags.DEFINE_string("stock_child", None,
                    "Internal: 'patch,base' = time only the stock step.")
FLAGS = flags.FLAGS

L2_NORM_CLIP = 1.0
NOISE_MULTIPLIER = 1.0
PAPER = (96, 96)


def _batch(patch_size, batch_size):
    shape = [batch_size, patch_size, patch_size, 2]
    return tf.random.uniform(shape, -1.0, 1.0), tf.ones([batch_size])


def _run(step, inputs):
    """Seconds for one step, waiting for its result."""
    start = time.perf_counter()
    result = step(*inputs)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    return time.perf_counter() - start


def _gan(patch_size, base_filters, private, dp_backend="fast"):
    """The training WGAN (generator + critic) with the given privacy settings."""
    config = wgan.WGANConfig(
        latent_dim=128, loss="wgan", optimizer="adam", critic_lr=1e-4, generator_lr=1e-4,
        private=private, l2_norm_clip=L2_NORM_CLIP, noise_multiplier=NOISE_MULTIPLIER,
        expected_batch_size=float(FLAGS.batch_size), dp_backend=dp_backend)
    return wgan.WGAN(models.build_generator(128, patch_size, base_filters),
                     models.build_critic(patch_size, base_filters), config)


def _plain_and_dp_seconds(patch_size, base_filters):
    plain_gan = _gan(patch_size, base_filters, private=False)
    dp_gan = _gan(patch_size, base_filters, private=True)
    inputs = _batch(patch_size, FLAGS.batch_size)
    for gan in (plain_gan, dp_gan):
        _run(gan.critic_step, inputs)
    plain, dp = [], []
    for _ in range(FLAGS.steps):
        plain.append(_run(plain_gan.critic_step, inputs))
        dp.append(_run(dp_gan.critic_step, inputs))
    return (dp_gan.critic.count_params(), statistics.median(plain), statistics.median(dp))


def _stock_child(patch_size, base_filters):
    """Times the critic step with --dp_backend=tf_privacy; prints `stock <s> <note>`."""
    gan = _gan(patch_size, base_filters, private=True, dp_backend="tf_privacy")
    inputs = _batch(patch_size, FLAGS.batch_size)
    first = _run(gan.critic_step, inputs)  # includes tracing
    if first > FLAGS.stock_max_step_seconds:
        seconds = first
        note = (f"first step (incl. tracing) > {FLAGS.stock_max_step_seconds:g} s,"
                " not repeated")
    else:
        seconds = statistics.median(
            _run(gan.critic_step, inputs) for _ in range(FLAGS.stock_steps))
        note = f"median of {FLAGS.stock_steps} steps"
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"stock {seconds:.3f} {note}, peak RSS {peak_gb:.1f} GB", flush=True)


def _limit_memory():
    """Fail the stock child on allocation instead of calling the OOM killer."""
    limit = int(FLAGS.stock_memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _stock_seconds(patch_size, base_filters):
    """(seconds or None, note) from a child process; None if it failed."""
    command = [sys.executable, os.path.abspath(__file__),
               f"--stock_child={patch_size},{base_filters}",
               f"--batch_size={FLAGS.batch_size}",
               f"--stock_steps={FLAGS.stock_steps}",
               f"--stock_max_step_seconds={FLAGS.stock_max_step_seconds}"]
    start = time.perf_counter()
    try:
        child = subprocess.run(command, capture_output=True, text=True,
                               timeout=FLAGS.stock_timeout, check=False,
                               preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return None, f"killed after {FLAGS.stock_timeout} s without a result"
    lines = [l for l in child.stdout.splitlines() if l.startswith("stock ")]
    if child.returncode or not lines:
        errors = [l for l in child.stderr.splitlines()
                  if re.search(r"Error|what\(\)|bad_alloc|Killed", l)]
        return None, (f"failed after {time.perf_counter() - start:.0f} s without "
                      f"a timed step (exit {child.returncode}, address-space "
                      f"limit {FLAGS.stock_memory_gb:g} GB): "
                      f"{(errors or [''])[-1].strip()[:160]}")
    _, seconds, note = lines[-1].split(" ", 2)
    return float(seconds), note


def main(argv):
    del argv
    if FLAGS.stock_child:
        _stock_child(*map(int, FLAGS.stock_child.split(",")))
        return
    sizes = [("demo", FLAGS.demo_patch_size, FLAGS.demo_base_filters)]
    if FLAGS.paper:
        sizes.append(("paper", *PAPER))
    lines = [f"critic step, batch {FLAGS.batch_size} real/fake pairs, "
             f"median of {FLAGS.steps} steps, {os.cpu_count()} CPUs, "
             f"TF {tf.__version__}",
             f"{'size':<6} {'patch':>5} {'base':>4} {'params':>11} "
             f"{'plain s':>8} {'dp s':>8} {'stock s':>8} {'dp/plain':>8} "
             f"{'stock/plain':>11}"]
    notes, ratio = [], None
    for name, patch_size, base_filters in sizes:
        params, plain, dp = _plain_and_dp_seconds(patch_size, base_filters)
        stock, note = _stock_seconds(patch_size, base_filters)
        notes.append(f"{name} stock: {note}")
        ratio = dp / plain
        stock_text = "n/a" if stock is None else f"{stock:.3f}"
        stock_ratio = "n/a" if stock is None else f"{stock / plain:.1f}"
        lines.append(f"{name:<6} {patch_size:>5} {base_filters:>4} {params:>11,} "
                     f"{plain:>8.3f} {dp:>8.3f} {stock_text:>8} {ratio:>8.2f} "
                     f"{stock_ratio:>11}")
        print(lines[-1], flush=True)
    lines += notes
    lines.append(f"dp_step_ratio {ratio:.3f}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output + ".tmp", "w") as f:
        f.write(report)
    os.replace(FLAGS.output + ".tmp", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
