"""Export the generator as a SavedModel that carries its privacy card.

Signature ``serving_default``: input ``latent`` float32 [None, latent_dim] -> outputs
``image`` float32 [None, H, W, 1] in the normalised intensity scale of dataset.json ([-1, 1])
and ``label`` float32 [None, H, W, 1] in {0, 1} (the generator's label channel thresholded at
0). ``assets.extra/privacy.json`` holds the card; ``assets.extra/normalization.json`` the
data-independent description of the intensity scale (method and formula; never per-patient
parameters, ids or file names, which are private). Outputs appear atomically.

  python -m tfdpgan.export --workdir=W      (re-export from W's latest checkpoint)
"""
import os
import sys

import tensorflow as tf
from absl import app, flags

from tfdpgan import atomic

GENERATOR_DIR = "generator"
NORMALIZATION_JSON = "normalization.json"


class _Sampler(tf.Module):
    def __init__(self, generator: tf.keras.Model, latent_dim: int):
        super().__init__()
        self.generator = generator
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, latent_dim], tf.float32, name="latent")])

    def _serve(self, latent):
        out = self.generator(latent, training=False)
        image = out[..., :1]
        label = tf.cast(out[..., 1:2] > 0.0, tf.float32)
        return {"image": image, "label": label}


def export_generator(generator: tf.keras.Model, out_dir: str, extra_json: dict = None):
    """Save ``generator`` (latent -> [B, H, W, 2] in [-1, 1]) as a SavedModel at ``out_dir``.

    ``extra_json`` maps a file name to an object written as JSON into assets.extra/; it is
    released with the generator, so it must hold nothing derived from private data beyond
    the DP guarantee.
    """
    sampler = _Sampler(generator, int(generator.input_shape[-1]))
    concrete = sampler.serve.get_concrete_function()
    with atomic.staged_dir(out_dir, overwrite=True) as staging:
        tf.saved_model.save(sampler, staging, signatures={"serving_default": concrete})
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        for name, obj in (extra_json or {}).items():
            atomic.write_json_atomic(os.path.join(extra, name), obj)


def load_generator(path: str):
    """Load an exported generator; returns (serving function, latent_dim, patch_size)."""
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    latent_dim = int(fn.structured_input_signature[1]["latent"].shape[-1])
    patch = int(fn.structured_outputs["image"].shape[1])
    return fn, latent_dim, patch


def main(argv):
    del argv
    from tfdpgan.gan import training  # the run's settings and checkpoint layout live there
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    try:
        out = training.export_from_workdir(flags.FLAGS.workdir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {out}")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training workdir to export the generator of.")
    app.run(main)
