"""Is a U-Net's training reproducible across CPUs? Same code, seed and data, other kernels.

  python benchmarks/cpu_reproducibility.py   # -> benchmarks/results/cpu_reproducibility.txt

Trains the evaluation's U-Net (tfdpgan.evaluation.unet.train_unet, small: base 8, depth 2,
--steps steps on fixed random patches) in fresh interpreters: twice with this machine's
default oneDNN kernels, then with oneDNN capped at each lower instruction set
(ONEDNN_MAX_CPU_ISA), which is what another CPU would run. Prints the final loss and a
SHA-256 of the weights per setting. Equal hashes across the two default runs and different ones
under a cap mean: the evaluation is reproducible bit for bit on one kind of CPU, not across
kinds (why report.json records its host; README, utility benchmark). Trains nothing of
tfdpgan's runs.
"""
import json
import os
import subprocess
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_integer("steps", 40, "U-Net training steps per setting.")
flags.DEFINE_list("caps", ["AVX", "SSE41"], "ONEDNN_MAX_CPU_ISA values to compare with.")
flags.DEFINE_string("output", os.path.join(ROOT, "benchmarks", "results",
                                           "cpu_reproducibility.txt"), "Result file.")
FLAGS = flags.FLAGS

_TRAIN = """
import hashlib, json, sys
import numpy as np
from tfdpgan.evaluation import unet
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (640, 32, 32)).astype(np.float32)
y = (x > 0.8).astype(np.float32)
config = unet.UNetConfig(base_filters=8, depth=2, learning_rate=1e-3, batch_size=32,
                         augment=True, epochs=1, steps_per_epoch=int(sys.argv[1]),
                         early_stop_patience=0)
model, history = unet.train_unet((x, y), (x[:64], y[:64]), config)
weights = np.concatenate([w.ravel() for w in model.get_weights()])
print(json.dumps({"loss": history["loss"][-1],
                  "sha256": hashlib.sha256(weights.tobytes()).hexdigest()}))
"""


def _train(cap):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    proc = subprocess.run([sys.executable, "-c", _TRAIN, str(FLAGS.steps)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"training under ONEDNN_MAX_CPU_ISA={cap}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    sys.path.insert(0, ROOT)
    from tfdpgan import atomic
    from tfdpgan.evaluation import report
    results = [("default (1)", _train(None)), ("default (2)", _train(None))]
    results += [(f"ONEDNN_MAX_CPU_ISA={cap}", _train(cap)) for cap in FLAGS.caps]
    reference = results[0][1]["sha256"]
    lines = [f"# python benchmarks/cpu_reproducibility.py --steps={FLAGS.steps}",
             f"# host: {report.host_text(report.host())}",
             f"# U-Net base 8, depth 2, {FLAGS.steps} steps, same seed and data in each setting",
             f"{'kernels':28s} {'final loss':>18s}  weights SHA-256 (12)  same as default (1)"]
    for name, r in results:
        lines.append(f"{name:28s} {r['loss']:18.12f}  {r['sha256'][:12]:20s}  "
                     f"{r['sha256'] == reference}")
    same_default = results[1][1]["sha256"] == reference
    differ = sum(r["sha256"] != reference for _, r in results[2:])
    lines.append(f"reproducible_on_this_cpu {same_default}")
    lines.append(f"caps_giving_other_weights {differ} of {len(results) - 2}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
