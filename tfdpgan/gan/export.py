"""Export the generator as a SavedModel that carries its privacy card.

Signature ``serving_default``: input ``latent`` float32 [None, latent_dim] -> outputs
``image`` float32 [None, H, W, 1] in the normalised intensity scale of dataset.json ([-1, 1])
and ``label`` float32 [None, H, W, 1] in {0, 1} (the generator's label channel thresholded at
0). ``assets.extra/privacy.json`` holds the card; ``assets.extra/normalization.json`` the
data-independent description of the intensity scale (method and formula; never per-patient
parameters, ids or file names, which are private). Outputs appear atomically.
"""
import os

import tensorflow as tf

from tfdpgan import atomic, workdir

__all__ = ["export_generator", "load_generator"]


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
        extra = os.path.join(staging, workdir.ASSETS_EXTRA)
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
