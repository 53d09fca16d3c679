"""Sample a synthetic data set from an exported generator (the library of tfdpgan.sample).

Formats: ``tfrecord`` (the real-data schema of records.py with patient_id "synthetic", plus a
dataset.json with split "train", so anything that reads real patches reads these),
``nifti`` (image.nii.gz and label.nii.gz, the patches stacked along axis 2),
``png`` (grids of image | label overlay). Sampling is post-processing of the generator, so the
output carries the generator's privacy guarantee (assets.extra/privacy.json, copied beside).
Outputs appear atomically.
"""
import datetime
import os
import shutil

import nibabel as nib
import numpy as np
import tensorflow as tf

from tfdpgan import atomic, errors, viz, workdir
from tfdpgan.data import records
from tfdpgan.gan import export

__all__ = ["FORMATS", "generate", "write_tfrecord", "write_nifti", "write_png", "sample_to"]

FORMATS = ("tfrecord", "nifti", "png")


def generate(generator_fn, latent_dim: int, num: int, seed: int = 0, batch_size: int = 256):
    """``num`` synthetic pairs: images float32 [num, P, P] (normalised), labels uint8."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for start in range(0, num, batch_size):
        z = rng.standard_normal((min(batch_size, num - start), latent_dim)).astype(np.float32)
        out = generator_fn(latent=tf.constant(z))
        images.append(out["image"].numpy()[..., 0])
        labels.append(out["label"].numpy()[..., 0].astype(np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def write_tfrecord(images, labels, out_dir: str, num_shards: int = 4, source: dict = None):
    writer = records.ShardWriter(out_dir, "train", min(num_shards, max(len(images), 1)))
    for i, (image, label) in enumerate(zip(images, labels)):
        writer.write(i, records.serialize(image, label, "synthetic", 0, (0, 0, 0)))
    writer.close()
    n = len(images)
    atomic.write_json_atomic(os.path.join(out_dir, records.DATASET_JSON), {
        "format": "tfdpgan-patches-v1",
        "synthetic": True,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "patch_size": int(images.shape[1]),
        "normalization": {"target_range": [-1.0, 1.0],
                          "note": "normalised scale of the training data set"},
        "label": {"values": [0, 1], "dtype": "uint8"},
        "splits": {"train": {"patients": ["synthetic"], "num_patients": 1,
                             "num_patches": n,
                             "shards": [os.path.basename(p) for p in writer.paths]}},
        "counts": {"train": n},
        "patients": {"synthetic": {"num_patches": n, "split": "train"}},
        "source": source or {},
    })


def write_nifti(images, labels, out_dir: str):
    affine = np.diag([0.5, 0.5, 0.7, 1.0])  # nominal TOF-MRA spacing; patches are unrelated
    nib.save(nib.Nifti1Image(np.moveaxis(images, 0, -1).astype(np.float32), affine),
             os.path.join(out_dir, "image.nii.gz"))
    nib.save(nib.Nifti1Image(np.moveaxis(labels, 0, -1).astype(np.uint8), affine),
             os.path.join(out_dir, "label.nii.gz"))


def write_png(images, labels, out_dir: str, per_file: int = 64):
    for k, start in enumerate(range(0, len(images), per_file)):
        grid = viz.overlay_grid(images[start:start + per_file], labels[start:start + per_file])
        tf.io.write_file(os.path.join(out_dir, f"samples_{k:04d}.png"),
                         tf.io.encode_png(grid))


def sample_to(generator_dir: str, num: int, out_dir: str, fmt: str, seed: int = 0,
              overwrite: bool = False):
    """Write ``num`` synthetic pairs from the SavedModel at ``generator_dir`` (or the
    released generator of the finished training workdir ``generator_dir``) into ``out_dir``."""
    if fmt not in FORMATS:
        raise errors.SettingsError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if num < 1:
        raise errors.SettingsError(f"--num must be positive, got {num}")
    if os.path.exists(out_dir) and not overwrite:
        raise errors.OutputExistsError(f"{out_dir}: already exists (pass --overwrite to "
                                       f"replace it)")
    if workdir.is_finished(generator_dir):     # a training workdir: its released generator
        generator_dir = workdir.path(generator_dir, workdir.GENERATOR)
    if not os.path.isfile(os.path.join(generator_dir, "saved_model.pb")):
        moved = workdir.path(os.path.dirname(os.path.normpath(generator_dir)) or ".",
                             workdir.GENERATOR)
        hint = (f"; the generator of that run is {moved}" if moved != generator_dir
                and os.path.isfile(os.path.join(moved, "saved_model.pb")) else "")
        raise errors.MissingFileError(f"{generator_dir}: not an exported generator "
                                      f"(no saved_model.pb){hint}")
    card = workdir.generator_card_path(generator_dir)
    if not os.path.isfile(card):
        raise errors.MissingFileError(
            f"{card}: the generator's privacy card (privacy.json) is missing; re-export it "
            f"(python -m tfdpgan.export): samples without a card cannot show their guarantee")
    fn, latent_dim, _ = export.load_generator(generator_dir)
    images, labels = generate(fn, latent_dim, num, seed)
    with atomic.staged_dir(out_dir, overwrite) as staging:
        {"tfrecord": lambda: write_tfrecord(images, labels, staging,
                                            source={"generator": os.path.abspath(generator_dir),
                                                    "seed": seed}),
         "nifti": lambda: write_nifti(images, labels, staging),
         "png": lambda: write_png(images, labels, staging)}[fmt]()
        shutil.copyfile(card, os.path.join(staging, workdir.PRIVACY_JSON))
    return images, labels
