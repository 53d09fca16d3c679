"""Private critic steps per second of THE training critic step (tfdpgan.gan.wgan.WGAN.critic_step:
fakes from the generator, ghost clipping, noise once, optimizer) with and without XLA
(--jit_compile) and mixed precision (--mixed_precision, generator only), under a strategy.

  python benchmarks/critic_speed.py --patch_size=96 --base_filters=96 --steps=300   # paper
  python benchmarks/critic_speed.py --strategy=mirrored [--cpu_devices=2]

Prints one line per variant: `critic_steps_per_sec <variant> <rate>` (median over blocks of
10 steps after a warm-up) and the ratios to the plain variant.
"""
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfdpgan  # noqa: E402,F401  pylint: disable=g-import-not-at-top  (TF settings first)
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top
from tfdpgan import distribute  # noqa: E402  pylint: disable=g-import-not-at-top
from tfdpgan.gan import models, run, wgan  # noqa: E402  pylint: disable=g-import-not-at-top

flags.DEFINE_integer("patch_size", 64, "Patch size.")
flags.DEFINE_integer("base_filters", 16, "Base filters of both networks (paper: 96).")
flags.DEFINE_integer("batch_size", 64, "Expected records per critic step.")
flags.DEFINE_integer("steps", 50, "Timed critic steps per variant.")
flags.DEFINE_list("variants", ["plain", "xla", "mixed", "xla+mixed"],
                  "plain | xla | mixed | xla+mixed")
flags.DEFINE_enum("mixed_dtype", None, ["bfloat16", "float16"],
                  "Mixed-precision dtype (default: float16 on GPU, bfloat16 on CPU).")
flags.DEFINE_enum("strategy", "default", list(distribute.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices.")
FLAGS = flags.FLAGS


def _rate(strategy, jit, mixed):
    config = wgan.WGANConfig(latent_dim=128, l2_norm_clip=0.01, noise_multiplier=1.0,
                             expected_batch_size=float(FLAGS.batch_size), jit_compile=jit,
                             mixed_precision=mixed)
    with strategy.scope():
        generator = run.build_generator(config, FLAGS.patch_size,
                                        FLAGS.base_filters)
        gan = wgan.WGAN(generator, models.build_critic(FLAGS.patch_size, FLAGS.base_filters),
                        config, seed=0)
    rng = np.random.default_rng(0)
    real = tf.constant(rng.uniform(-1, 1, (FLAGS.batch_size, FLAGS.patch_size,
                                           FLAGS.patch_size, 2)).astype(np.float32))
    for _ in range(2):   # tracing / compilation
        float(gan.critic_step(real)["update_norm"])
    block, rates = 10, []
    for _ in range(max(1, FLAGS.steps // block)):
        start = time.perf_counter()
        for _ in range(block):
            out = gan.critic_step(real)
        float(out["update_norm"])
        rates.append(block / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv):
    del argv
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.cpu_devices)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    dtype = FLAGS.mixed_dtype or ("float16" if gpu else "bfloat16")
    print(f"devices: {[d.name for d in tf.config.list_logical_devices()]}; strategy "
          f"{FLAGS.strategy} ({strategy.num_replicas_in_sync} replicas); patch "
          f"{FLAGS.patch_size}, base {FLAGS.base_filters}, batch {FLAGS.batch_size}, "
          f"mixed = {dtype}")
    rates = {}
    for variant in FLAGS.variants:
        rates[variant] = _rate(strategy, "xla" in variant,
                               dtype if "mixed" in variant else None)
        print(f"critic_steps_per_sec {variant} {rates[variant]:.3f}", flush=True)
    if "plain" in rates:
        for variant, rate in rates.items():
            if variant != "plain":
                print(f"speedup_over_plain {variant} {rate / rates['plain']:.3f}")


if __name__ == "__main__":
    app.run(main)
