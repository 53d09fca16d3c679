"""Sample a synthetic data set from an exported generator.

  python -m tfdpgan.sample --generator=W/generator --num=1000 --out=DIR --format=tfrecord

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
import sys

import numpy as np
from absl import app, flags

from tfdpgan import atomic

FORMATS = ("tfrecord", "nifti", "png")


def generate(generator_fn, latent_dim: int, num: int, seed: int = 0, batch_size: int = 256):
    """``num`` synthetic pairs: images float32 [num, P, P] (normalised), labels uint8."""
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for start in range(0, num, batch_size):
        z = rng.standard_normal((min(batch_size, num - start), latent_dim)).astype(np.float32)
        out = generator_fn(latent=tf.constant(z))
        images.append(out["image"].numpy()[..., 0])
        labels.append(out["label"].numpy()[..., 0].astype(np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def write_tfrecord(images, labels, out_dir: str, num_shards: int = 4, source: dict = None):
    from tfdpgan.data import records
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
    import nibabel as nib
    affine = np.diag([0.5, 0.5, 0.7, 1.0])  # nominal TOF-MRA spacing; patches are unrelated
    nib.save(nib.Nifti1Image(np.moveaxis(images, 0, -1).astype(np.float32), affine),
             os.path.join(out_dir, "image.nii.gz"))
    nib.save(nib.Nifti1Image(np.moveaxis(labels, 0, -1).astype(np.uint8), affine),
             os.path.join(out_dir, "label.nii.gz"))


def overlay_grid(images, labels, columns: int = 8) -> np.ndarray:
    """RGB uint8 grid; each cell is the image beside the image with the label in red."""
    gray = np.clip((images + 1.0) * 127.5, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    over = rgb.copy()
    over[labels > 0] = (0.4 * over[labels > 0] + [153, 0, 0]).astype(np.uint8)
    pairs = np.concatenate([rgb, over], axis=2)                     # [n, P, 2P, 3]
    n, h, w, _ = pairs.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 2), columns * (w + 2), 3), np.uint8)
    for i, cell in enumerate(pairs):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = cell
    return grid


def write_png(images, labels, out_dir: str, per_file: int = 64):
    import tensorflow as tf
    for k, start in enumerate(range(0, len(images), per_file)):
        grid = overlay_grid(images[start:start + per_file], labels[start:start + per_file])
        tf.io.write_file(os.path.join(out_dir, f"samples_{k:04d}.png"),
                         tf.io.encode_png(grid))


def sample_to(generator_dir: str, num: int, out_dir: str, fmt: str, seed: int = 0,
              overwrite: bool = False):
    """Write ``num`` synthetic pairs from the SavedModel at ``generator_dir`` into ``out_dir``."""
    from tfdpgan.gan import export
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if num < 1:
        raise ValueError(f"--num must be positive, got {num}")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    if not os.path.isfile(os.path.join(generator_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{generator_dir}: not an exported generator "
                                f"(no saved_model.pb)")
    fn, latent_dim, _ = export.load_generator(generator_dir)
    images, labels = generate(fn, latent_dim, num, seed)
    with atomic.staged_dir(out_dir, overwrite) as staging:
        {"tfrecord": lambda: write_tfrecord(images, labels, staging,
                                            source={"generator": os.path.abspath(generator_dir),
                                                    "seed": seed}),
         "nifti": lambda: write_nifti(images, labels, staging),
         "png": lambda: write_png(images, labels, staging)}[fmt]()
        card = os.path.join(generator_dir, "assets.extra", "privacy.json")
        if os.path.isfile(card):
            shutil.copyfile(card, os.path.join(staging, "privacy.json"))
    return images, labels


FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a program)."""
    flags.DEFINE_string("generator", None, "Exported generator SavedModel (WORKDIR/generator).")
    flags.DEFINE_integer("num", 1000, "Number of synthetic image+label pairs.")
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_enum("format", "tfrecord", list(FORMATS), "Output format.")
    flags.DEFINE_integer("seed", 0, "Seed of the latent vectors.")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --out.")


def main(argv):
    del argv
    if not FLAGS.generator or not FLAGS.out:
        raise app.UsageError("--generator and --out are required")
    try:
        images, _ = sample_to(FLAGS.generator, FLAGS.num, FLAGS.out, FLAGS.format, FLAGS.seed,
                              FLAGS.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {len(images)} synthetic pairs ({FLAGS.format}) to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
