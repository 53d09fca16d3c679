"""tf.data input pipelines over the TFRecord patches of records.py.

Three modes share one parser (records.make_parser) and one decoded-array loader:
  ``shuffled``:       streaming; parallel interleave over shards, shuffle buffer, batch, parse,
                      prefetch. Fixed batch size; NOT the sampling a DP accountant assumes.
  ``poisson``:        every step includes each record independently with probability q
                      (batch size ~ Binomial(N, q)), the sampling that the DP-SGD accountant
                      (Poisson-subsampled Gaussian) assumes. Drawn as: n ~ Binomial(N, q), then
                      n distinct records uniformly, which is the same distribution.
  ``patient_grouped``: the same Poisson sampling over patients; each batch element holds up to
                      k patches of one sampled patient (the record of patient-level DP).

Poisson and patient-grouped batches are a pure function of (seed, step), so a resumed run
continues the exact sequence from its step counter. Privacy assumption: the sampling is only
as private as the seed is secret; callers that need a real guarantee must draw the seed from
OS entropy (``new_secret_seed``) and must not publish it.
"""
import dataclasses
import hashlib
import os
import secrets
from typing import List, Optional

import numpy as np
import tensorflow as tf

from tfdpgan import errors
from tfdpgan.data import records

__all__ = ["new_secret_seed", "shuffled", "PatchArrays", "load_arrays", "poisson_indices",
           "poisson", "patient_grouped"]

AUTOTUNE = tf.data.AUTOTUNE


def new_secret_seed() -> int:
    """A sampling seed from OS entropy (keep it out of anything that is released)."""
    return secrets.randbits(63)


def shuffled(rec_dir: str, split: str = "train", batch_size: int = 32,
             seed: Optional[int] = None, shuffle_buffer: int = 10_000, repeat: bool = True,
             drop_remainder: bool = True) -> tf.data.Dataset:
    """Streaming shuffled batches of parsed examples (dicts; image/label [B, P, P, 1])."""
    info = records.read_dataset_json(rec_dir)
    paths = records.shard_paths(rec_dir, split)
    if not paths:
        raise errors.MissingFileError(f"{rec_dir}: no shards for split {split!r}")
    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=seed)
    ds = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, records.COMPRESSION),
        cycle_length=len(paths), num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(records.make_parser(info["patch_size"]), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


@dataclasses.dataclass
class PatchArrays:
    """One split decoded into arrays (in memory, or memory-mapped from ``cache_dir``)."""
    images: np.ndarray          # float32 [N, P, P], normalised
    labels: np.ndarray          # uint8 [N, P, P], {0, 1}
    patient_index: np.ndarray   # int32 [N], index into patient_ids
    patient_ids: List[str]

    def __len__(self):
        return len(self.images)

    def patient_records(self) -> List[np.ndarray]:
        """For each patient (in patient_ids order) the indices of its records."""
        order = np.argsort(self.patient_index, kind="stable")
        bounds = np.searchsorted(self.patient_index[order], np.arange(len(self.patient_ids) + 1))
        return [order[bounds[i]:bounds[i + 1]] for i in range(len(self.patient_ids))]


def load_arrays(rec_dir: str, split: str = "train",
                cache_dir: Optional[str] = None) -> PatchArrays:
    """Decode a split once. With ``cache_dir`` the arrays are written there as .npy files
    (atomically) and memory-mapped, so data sets larger than RAM work; later calls reuse them."""
    info = records.read_dataset_json(rec_dir)
    if cache_dir:
        stamp = f"{info['created']}|{os.path.abspath(rec_dir)}".encode()
        key = f"{split}-{hashlib.sha256(stamp).hexdigest()[:16]}"
        folder = os.path.join(cache_dir, key)
        if os.path.isdir(folder):
            return _open_cached(folder)
    patch = info["patch_size"]
    n = info["splits"][split]["num_patches"]
    patient_ids = info["splits"][split]["patients"]
    ids = {pid.encode(): i for i, pid in enumerate(patient_ids)}
    images = np.empty((n, patch, patch), np.float32)
    labels = np.empty((n, patch, patch), np.uint8)
    patient_index = np.empty((n,), np.int32)
    parse = records.make_parser(patch)
    pos = 0
    for path in records.shard_paths(rec_dir, split):
        for ex in _read_shard(path, parse):
            b = len(ex["image"])
            if pos + b > n:
                raise errors.InputDataError(f"{path}: the {split} shards hold more patches than "
                                            f"the {n} dataset.json promises")
            images[pos:pos + b] = ex["image"][..., 0]
            labels[pos:pos + b] = ex["label"][..., 0]
            unknown = set(ex["patient_id"]) - set(ids)
            if unknown:
                raise errors.InputDataError(f"{path}: patches of patients not listed for split "
                                            f"{split!r} in dataset.json: {sorted(unknown)[:3]}")
            patient_index[pos:pos + b] = [ids[p] for p in ex["patient_id"]]
            pos += b
    if pos != n:
        raise errors.InputDataError(f"{rec_dir}: dataset.json promises {n} {split} patches, "
                         f"the shards hold {pos}")
    arrays = PatchArrays(images, labels, patient_index, list(patient_ids))
    if cache_dir:
        _write_cache(arrays, folder)
        return _open_cached(folder)
    return arrays


def _read_shard(path: str, parse):
    """Parsed batches of one GZIP shard; a corrupted or truncated shard is an InputDataError
    naming it (never a silent skip, which would change N and so the privacy accounting)."""
    ds = tf.data.TFRecordDataset(path, records.COMPRESSION).batch(1024).map(parse)
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            first = (e.message or type(e).__name__).splitlines()[0][:200]
            raise errors.InputDataError(f"{path}: corrupted or truncated TFRecord shard "
                                        f"({first})") from None


def _write_cache(arrays: PatchArrays, folder: str):
    tmp = folder + f".tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for name in ("images", "labels", "patient_index"):
        np.save(os.path.join(tmp, f"{name}.npy"), getattr(arrays, name))
    with open(os.path.join(tmp, "patient_ids.txt"), "w") as f:
        f.write("\n".join(arrays.patient_ids) + "\n")
    os.replace(tmp, folder)


def _open_cached(folder: str) -> PatchArrays:
    load = lambda name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
    with open(os.path.join(folder, "patient_ids.txt")) as f:
        patient_ids = f.read().split()
    return PatchArrays(load("images"), load("labels"), np.asarray(load("patient_index")),
                       patient_ids)


def poisson_indices(num_records: int, rate: float, seed: int, step: int) -> np.ndarray:
    """Sorted indices of the records in step ``step``: each of ``num_records`` is included
    independently with probability ``rate`` (a pure function of seed and step)."""
    if not 0.0 < rate <= 1.0:
        raise errors.SettingsError(f"sampling rate must be in (0, 1], got {rate}")
    rng = np.random.default_rng([seed, step])
    size = rng.binomial(num_records, rate)
    return np.sort(rng.choice(num_records, size=size, replace=False))


def _batch_dataset(make_batch, start_step: int, num_steps: Optional[int], spec):
    """A dataset of ``make_batch(step)`` for steps start_step, start_step + 1, ..."""
    def generate():
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield make_batch(step)
            step += 1
    return tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(AUTOTUNE)


def poisson(arrays: PatchArrays, rate: float, seed: int, start_step: int = 0,
            num_steps: Optional[int] = None) -> tf.data.Dataset:
    """Poisson-sampled batches: dicts with image/label float32 [n, P, P, 1] (n varies, may be
    0), patient_index int32 [n], and the step number."""
    patch = arrays.images.shape[1]

    def make_batch(step):
        idx = poisson_indices(len(arrays), rate, seed, step)
        return {"image": arrays.images[idx][..., None],
                "label": arrays.labels[idx][..., None].astype(np.float32),
                "patient_index": arrays.patient_index[idx],
                "step": np.int64(step)}

    spec = {"image": tf.TensorSpec([None, patch, patch, 1], tf.float32),
            "label": tf.TensorSpec([None, patch, patch, 1], tf.float32),
            "patient_index": tf.TensorSpec([None], tf.int32),
            "step": tf.TensorSpec([], tf.int64)}
    return _batch_dataset(make_batch, start_step, num_steps, spec)


def patient_grouped(arrays: PatchArrays, rate: float, patches_per_patient: int, seed: int,
                    start_step: int = 0, num_steps: Optional[int] = None) -> tf.data.Dataset:
    """Poisson sampling over patients (each included with probability ``rate``); each batch
    element is one patient's patches: image/label [n, k, P, P, 1], ``valid`` bool [n, k]
    (False marks padding when a patient has fewer than k patches), patient_index [n]."""
    patch, k = arrays.images.shape[1], patches_per_patient
    groups = arrays.patient_records()

    def make_batch(step):
        rng = np.random.default_rng([seed, step, 1])
        chosen = poisson_indices(len(groups), rate, seed, step)
        image = np.zeros((len(chosen), k, patch, patch, 1), np.float32)
        label = np.zeros_like(image)
        valid = np.zeros((len(chosen), k), bool)
        for row, p in enumerate(chosen):
            idx = np.sort(rng.choice(groups[p], size=min(k, len(groups[p])), replace=False))
            image[row, :len(idx), ..., 0] = arrays.images[idx]
            label[row, :len(idx), ..., 0] = arrays.labels[idx]
            valid[row, :len(idx)] = True
        return {"image": image, "label": label, "valid": valid,
                "patient_index": chosen.astype(np.int32), "step": np.int64(step)}

    spec = {"image": tf.TensorSpec([None, k, patch, patch, 1], tf.float32),
            "label": tf.TensorSpec([None, k, patch, patch, 1], tf.float32),
            "valid": tf.TensorSpec([None, k], tf.bool),
            "patient_index": tf.TensorSpec([None], tf.int32),
            "step": tf.TensorSpec([], tf.int64)}
    return _batch_dataset(make_batch, start_step, num_steps, spec)
