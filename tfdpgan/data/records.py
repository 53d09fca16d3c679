"""The TFRecord patch schema, shard writing and ``dataset.json``.

One ``tf.train.Example`` per patch (the contract in DESIGN.md):
  image       float32 list, H*W, normalised to [-1, 1] (row-major, axis 0 = x)
  label       bytes, H*W uint8 in {0, 1}
  height, width, slice   int64
  patient_id  bytes ("synthetic" for generated sets)
  origin      int64 x3, voxel index (x, y, z) of the patch corner in the RAS+ volume
Shards are GZIP-compressed: ``<split>-00000-of-00004.tfrecord.gz``. They are written by
shards.py without TensorFlow (``serialize``, ``ShardWriter``, ``shard_name`` come from there);
this module adds the TensorFlow side: the parser of the schema.
"""
import glob
import json
import os

import tensorflow as tf

from tfdpgan import errors
from tfdpgan.data.shards import (COMPRESSION, DATASET_JSON, ShardWriter, serialize,
                                  shard_name)

__all__ = ["COMPRESSION", "DATASET_JSON", "shard_name", "shard_paths", "serialize",
           "make_parser", "ShardWriter", "read_dataset_json"]


def shard_paths(rec_dir: str, split: str):
    return sorted(glob.glob(os.path.join(rec_dir, f"{split}-*-of-*.tfrecord.gz")))


def make_parser(patch_size: int):
    """A function serialized-batch -> dict of tensors, for a batch of records
    (vectorised parsing: batch first, then parse). image/label are [B, P, P, 1] float32."""
    spec = {
        "image": tf.io.FixedLenFeature([patch_size * patch_size], tf.float32),
        "label": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "patient_id": tf.io.FixedLenFeature([], tf.string),
        "slice": tf.io.FixedLenFeature([], tf.int64),
        "origin": tf.io.FixedLenFeature([3], tf.int64),
    }
    shape = [-1, patch_size, patch_size, 1]

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        ex["image"] = tf.reshape(ex["image"], shape)
        label = tf.io.decode_raw(ex["label"], tf.uint8)
        ex["label"] = tf.reshape(tf.cast(label, tf.float32), shape)
        return ex

    return parse


def read_dataset_json(rec_dir: str) -> dict:
    path = os.path.join(rec_dir, DATASET_JSON)
    if not os.path.isfile(path):
        raise errors.MissingFileError(f"{path}: not found; is {rec_dir} a folder written by "
                                f"python -m tfdpgan.convert (tools/nifti_to_tfrecord.py)?")
    with open(path) as f:
        return json.load(f)
