"""Export the generator as a SavedModel that carries its privacy card.

Signature ``serving_default``: input ``latent`` float32 [None, latent_dim] -> outputs
``image`` float32 [None, H, W, 1] in the normalised intensity scale of dataset.json ([-1, 1])
and ``label`` float32 [None, H, W, 1] in {0, 1} (the generator's label channel thresholded at
0). ``assets.extra/privacy.json`` holds the card; ``assets.extra/normalization.json`` the
data-independent description of the intensity scale (method and formula; never per-patient
parameters, ids or file names, which are private). Outputs appear atomically.

``copy_release`` copies a finished run's ``release/`` folder (tfdpgan.workdir) and nothing
else: every file must be one the release may hold (the SavedModel's own files, the two
assets.extra JSON files, the card, samples.png, TensorBoard event files), symlinks are
refused, and the generator's card must equal the run's.
"""
import filecmp
import os
import re
import shutil

import tensorflow as tf

from tfdpgan import atomic, errors, workdir

__all__ = ["export_generator", "load_generator", "serving_function", "copy_release"]


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
    the DP guarantee. The SavedModel holds a plain copy of the generator: a generator
    trained under a tf.distribute strategy has distributed variables (BatchNorm statistics
    read with a collective) that a SavedModel cannot hold; call this on every worker.
    """
    plain = tf.keras.models.clone_model(generator)   # (called outside a strategy's scope)
    plain.set_weights(generator.get_weights())
    sampler = _Sampler(plain, int(generator.input_shape[-1]))
    concrete = sampler.serve.get_concrete_function()
    with atomic.staged_dir(out_dir, overwrite=True) as staging:
        tf.saved_model.save(sampler, staging, signatures={"serving_default": concrete})
        extra = os.path.join(staging, workdir.ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        for name, obj in (extra_json or {}).items():
            atomic.write_json_atomic(os.path.join(extra, name), obj)


def serving_function(generator: tf.keras.Model, latent_dim: int):
    """The exported signature's function, in process: ``fn(latent=z)`` -> {image, label}."""
    return _Sampler(generator, latent_dim).serve


def load_generator(path: str):
    """Load an exported generator; returns (serving function, latent_dim, patch_size)."""
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    latent_dim = int(fn.structured_input_signature[1]["latent"].shape[-1])
    patch = int(fn.structured_outputs["image"].shape[1])
    return fn, latent_dim, patch


# Files a release may hold, as paths relative to release/ (anything else is refused).
_RELEASE_FILES = [re.compile(p) for p in (
    re.escape(workdir.PRIVACY_JSON), re.escape(workdir.PRIVACY_MD), re.escape(workdir.SAMPLES_PNG),
    re.escape(workdir.GENERATOR) + r"/(saved_model\.pb|fingerprint\.pb)",
    re.escape(workdir.GENERATOR) + r"/variables/variables\.(index|data-\d{5}-of-\d{5})",
    re.escape(f"{workdir.GENERATOR}/{workdir.ASSETS_EXTRA}/") + "("
    + "|".join(map(re.escape, (workdir.PRIVACY_JSON, workdir.NORMALIZATION_JSON))) + ")",
    re.escape(workdir.TENSORBOARD) + r"/events\.out\.tfevents\.[^/]+")]


def _release_files(run_dir: str) -> list:
    """[(relative path, absolute path)] of every file to release; WorkdirError naming the
    first that is not allowed (unknown file, symlink, special file)."""
    files = []
    for name, src in workdir.release_entries(run_dir):
        tree = [(name, src)] if not os.path.isdir(src) or os.path.islink(src) else [
            (os.path.relpath(os.path.join(root, f), os.path.dirname(src)),
             os.path.join(root, f))
            for root, dirs, names in os.walk(src) for f in names + [
                d for d in dirs if os.path.islink(os.path.join(root, d))]]
        for rel, path in tree:
            rel = rel.replace(os.sep, "/")
            if os.path.islink(path) or not os.path.isfile(path):
                raise errors.WorkdirError(f"{path}: a symlink or special file; a release holds "
                                          f"regular files only")
            if not any(p.fullmatch(rel) for p in _RELEASE_FILES):
                raise errors.WorkdirError(f"{path}: not part of what a release may hold (the "
                                          f"generator SavedModel with its card, the card, "
                                          f"samples.png, DP-safe TensorBoard events); refused")
            files.append((rel, path))
    return files


def copy_release(run_dir: str, out_dir: str) -> list:
    """Copy the release of the finished run in ``run_dir`` to ``out_dir`` (owner-only,
    atomically) and return the relative paths copied. Refused (nothing written): ``out_dir``
    exists or lies inside the workdir, the run has not finished, the generator's card differs
    from the run's, or anything outside the release set would be copied."""
    if os.path.lexists(out_dir):
        raise errors.OutputExistsError(f"{out_dir}: already exists; give a new folder")
    inside = os.path.commonpath([os.path.abspath(out_dir), os.path.abspath(run_dir)])
    if inside == os.path.abspath(run_dir):
        raise errors.SettingsError(f"{out_dir}: lies inside the workdir {run_dir}; give a "
                                   f"folder outside it")
    if not workdir.is_finished(run_dir):
        raise errors.WorkdirError(f"{run_dir}: the run has not finished (no "
                                  f"{workdir.PRIVACY_JSON} and exported generator); finish or "
                                  f"re-export it first")
    generator_card = workdir.generator_card_path(workdir.path(run_dir, workdir.GENERATOR))
    if not os.path.isfile(generator_card) or not filecmp.cmp(
            generator_card, workdir.path(run_dir, workdir.PRIVACY_JSON), shallow=False):
        raise errors.WorkdirError(f"{generator_card}: missing or not the run's card "
                                  f"({workdir.path(run_dir, workdir.PRIVACY_JSON)}); run "
                                  f"python -m tfdpgan.export --workdir={run_dir}")
    files = _release_files(run_dir)
    with workdir.owner_only(), atomic.staged_dir(out_dir) as staging:
        for rel, src in files:
            dst = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
        workdir.secure(staging)
    return [rel for rel, _ in files]
