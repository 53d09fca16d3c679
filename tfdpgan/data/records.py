"""The TFRecord patch schema, shard writing and ``dataset.json``.

One ``tf.train.Example`` per patch (the contract in DESIGN.md):
  image       float32 list, H*W, normalised to [-1, 1] (row-major, axis 0 = x)
  label       bytes, H*W uint8 in {0, 1}
  height, width, slice   int64
  patient_id  bytes ("synthetic" for generated sets)
  origin      int64 x3, voxel index (x, y, z) of the patch corner in the RAS+ volume
Shards are GZIP-compressed: ``<split>-00000-of-00004.tfrecord.gz``.
"""
import glob
import json
import os

import numpy as np
import tensorflow as tf

from tfdpgan import errors

COMPRESSION = "GZIP"
DATASET_JSON = "dataset.json"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord.gz"


def shard_paths(rec_dir: str, split: str):
    return sorted(glob.glob(os.path.join(rec_dir, f"{split}-*-of-*.tfrecord.gz")))


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def serialize(image: np.ndarray, label: np.ndarray, patient_id: str, slice_index: int,
              origin) -> bytes:
    """One patch as a serialised ``tf.train.Example``."""
    height, width = image.shape
    feature = {
        "image": tf.train.Feature(float_list=tf.train.FloatList(  # tolist: fastest path here
            value=np.asarray(image, np.float32).ravel().tolist())),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.asarray(label, np.uint8).tobytes()])),
        "height": _int64([height]),
        "width": _int64([width]),
        "patient_id": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[patient_id.encode()])),
        "slice": _int64([slice_index]),
        "origin": _int64(origin),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


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


class ShardWriter:
    """Writes examples round-robin by patient into ``num_shards`` GZIP shards of one split."""

    def __init__(self, out_dir: str, split: str, num_shards: int):
        options = tf.io.TFRecordOptions(compression_type=COMPRESSION)
        self.paths = [os.path.join(out_dir, shard_name(split, i, num_shards))
                      for i in range(num_shards)]
        self._writers = [tf.io.TFRecordWriter(p, options) for p in self.paths]

    def write(self, shard: int, record: bytes):
        self._writers[shard % len(self._writers)].write(record)

    def close(self):
        for w in self._writers:
            w.close()


def read_dataset_json(rec_dir: str) -> dict:
    path = os.path.join(rec_dir, DATASET_JSON)
    if not os.path.isfile(path):
        raise errors.MissingFileError(f"{path}: not found; is {rec_dir} a folder written by "
                                f"tools/nifti_to_tfrecord.py?")
    with open(path) as f:
        return json.load(f)
