"""Conversion and input-pipeline throughput, measured side by side in one run.

(a) conversion (python -m tfdpgan.convert: worker processes, --workers, default all cores)
    vs simply reading the same volumes with nibabel in one process: volumes/s of each and
    their ratio `conversion_to_read_ratio` (target >= 0.25 on the 2-core CI machine);
(b) input pipelines in patches/s: streaming shuffle, Poisson (expected batch 32) and
    patient-grouped, against the patches/s that one DP critic step of the paper's size
    (25M-parameter critic, 96x96, batch 32) consumes on this machine.

  python benchmarks/pipeline_throughput.py [--patients=6] [--dp_steps=3] [--workers=0]
Prints a table; the last line is `pipeline_to_dp_ratio <x>` (Poisson patches/s divided by
the DP step's patches/s; the goal is >= 20). Also written to benchmarks/results/.
"""
import os
import shutil
import tempfile
import time

import nibabel as nib
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from tfdpgan.data import convert, phantom, pipeline, volumes
from tfdpgan.gan import models, wgan

FLAGS = flags.FLAGS
flags.DEFINE_integer("patients", 6, "Phantom training patients (default shape 192x192x48).")
flags.DEFINE_integer("patches_per_patient", 1000, "Patches per patient (paper: 1000).")
flags.DEFINE_integer("patch_size", 96, "Patch size (paper: 96).")
flags.DEFINE_integer("batches", 200, "Batches timed per pipeline mode.")
flags.DEFINE_integer("workers", 0, "Conversion worker processes (0: all cores).")
flags.DEFINE_string("compression", convert.ConvertConfig.compression,
                    "GZIP mode of the shards (the converter's default unless given).")
flags.DEFINE_integer("dp_steps", 3, "Paper-size DP critic steps timed (after one warm-up).")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results",
                                        "pipeline_throughput.txt"), "Result file.")


def _time(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _read_all(cases):
    for case in cases:
        for path in (case.image, case.label, case.mask):
            nib.load(path).get_fdata(dtype=np.float32)


def _patches_per_second(ds, batches):
    it = iter(ds)
    next(it)  # warm-up: tracing, first shard reads, prefetch start
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        n += int(tf.shape(batch["image"])[0]) * (
            int(tf.shape(batch["image"])[1]) if batch["image"].shape.rank == 5 else 1)
    return n / (time.perf_counter() - start)


def _dp_step_seconds(steps, patch_size):
    """Median seconds of one DP critic step at the paper's size (batch 32)."""
    critic = models.build_critic(patch_size, 96)
    generator = models.build_generator(128, patch_size, 96)
    gan = wgan.WGAN(generator, critic, wgan.WGANConfig(private=True, noise_multiplier=1.0,
                                                      expected_batch_size=32.0))
    real = tf.random.uniform([32, patch_size, patch_size, 2], -1, 1)
    gan.critic_step(real)  # warm-up / trace
    times = [_time(lambda: gan.critic_step(real)["batch_size"].numpy())[0]
             for _ in range(steps)]
    return float(np.median(times))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="tfdpgan-bench-")
    lines = []
    say = lambda s: (print(s), lines.append(s))
    try:
        data = os.path.join(tmp, "nifti")
        phantom.write_dataset(data, FLAGS.patients, num_test=0, seed=0)
        cases = volumes.find_cases(data)
        read_s, _ = _time(lambda: _read_all(cases))
        config = convert.ConvertConfig(patch_size=FLAGS.patch_size,
                                       patches_per_patient=FLAGS.patches_per_patient,
                                       compression=FLAGS.compression)
        rec = os.path.join(tmp, "rec")
        workers = FLAGS.workers or convert.default_workers()
        conv_s, info = _time(lambda: convert.convert(cases, rec, config, workers=workers,
                                                     progress=lambda *a: None))
        n = len(cases)
        say(f"volumes: {n} phantom patients {phantom.PhantomConfig().shape}, "
            f"{FLAGS.patches_per_patient} patches of {FLAGS.patch_size}^2 each")
        shard_mb = sum(os.path.getsize(os.path.join(rec, f)) for f in os.listdir(rec)) / 1e6
        say(f"conversion: {workers} worker processes, GZIP mode {config.compression}, "
            f"{shard_mb:.0f} MB of shards")
        say(f"nibabel read (image+label+mask)   {n / read_s:8.2f} volumes/s")
        total = sum(info["counts"].values())
        say(f"conversion (read+validate+write)  {n / conv_s:8.2f} volumes/s  "
            f"({total / conv_s:.0f} patches/s)")
        say(f"conversion_to_read_ratio {read_s / conv_s:.3f}  (conversion speed as a "
            f"fraction of plain nibabel reading)")

        arrays = pipeline.load_arrays(rec, "train")
        q = 32 / len(arrays)
        modes = {
            "shuffle (TFRecord stream, batch 32)": pipeline.shuffled(rec, "train", 32, seed=0),
            "poisson (expected batch 32)": pipeline.poisson(arrays, q, seed=0),
            "patient_grouped (k=32, 1 patient/step)": pipeline.patient_grouped(
                arrays, 1.0 / len(arrays.patient_ids), 32, seed=0),
        }
        rates = {}
        for name, ds in modes.items():
            rates[name] = _patches_per_second(ds, FLAGS.batches)
            say(f"{name:40s} {rates[name]:10.0f} patches/s")
        dp_s = _dp_step_seconds(FLAGS.dp_steps, FLAGS.patch_size)
        dp_rate = 32 / dp_s
        say(f"DP critic step, paper size (batch 32) {dp_s:8.2f} s/step = {dp_rate:.1f} patches/s")
        for name, rate in rates.items():
            say(f"ratio {name:40s} {rate / dp_rate:10.1f}x")
        say(f"pipeline_to_dp_ratio {rates['poisson (expected batch 32)'] / dp_rate:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
