"""Canaries: planted outlier patients whose exposure shows what a run reveals.

A canary is a distinctive "vessel" signature: ``num_lines`` straight bright lines
(``line_width`` pixels wide, image value ``intensity``, label 1) across the patch, at the same
place in every patch. Straight lines at fixed positions do not occur in real (or phantom) angio
patches, so a signature that shows up in a trained network can only come from its training data.

``make_canary_dataset(base, out, CanaryConfig(...))`` writes a copy of a TFRecord data set in
which ``num_canaries`` training patients carry one signature each in ALL their patches. The
signatures are drawn from ``num_candidates`` candidates (a pure function of the seed and the
patch size, ``candidate_masks``); the candidates that were not inserted are the reference:
they come from the same distribution, so a run that has learnt nothing about its canaries
ranks an inserted signature like a never-inserted one (tfdpgan.leakage.exposure measures it).

The copy is made at the TFRecord level (it does not depend on how the base data was made):
every record of a non-canary patient is copied byte for byte, every record of a canary patient
is decoded, stamped and re-serialised with the same patient id, slice and origin. Splits,
shard names and counts stay as they are; dataset.json gains a ``canaries`` section (seed,
signature settings, the inserted candidate of each canary patient) and each canary patient's
entry ``canary: <candidate>``. The data set appears atomically (tfdpgan.atomic.staged_dir): a
failure leaves nothing behind.

Privacy note: the canaried data set is as private as its base; a canary patient is a whole
patient, so under a per-patch guarantee its exposure is bounded only by group privacy over its
patches (tfdpgan.leakage.exposure states that bound).
"""
import dataclasses
import datetime
import gzip
import hashlib
import os
import zlib
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfdpgan import atomic, errors
from tfdpgan.data import records

__all__ = ["CANARIES_KEY", "CanaryConfig", "candidate_masks", "stamp", "choose_canaries",
           "make_canary_dataset", "read_canaries", "canary_masks"]

CANARIES_KEY = "canaries"


@dataclasses.dataclass(frozen=True)
class CanaryConfig:
    num_canaries: int = 4          # training patients that get a signature
    num_candidates: int = 200      # signatures drawn; the others are the never-inserted reference
    num_lines: int = 2             # straight "vessels" per signature
    line_width: float = 2.0        # pixels
    intensity: float = 1.0         # image value on the lines ([-1, 1] scale); label = 1 there
    seed: int = 0
    patients: Optional[Sequence[str]] = None   # canary patients; None = random training ones

    def validate(self):
        if self.num_canaries < 1:
            raise errors.SettingsError(f"num_canaries must be >= 1, got {self.num_canaries}")
        if self.num_candidates < 2 * self.num_canaries:
            raise errors.SettingsError(
                f"num_candidates ({self.num_candidates}) must be at least twice num_canaries "
                f"({self.num_canaries}): the never-inserted candidates are the reference")
        if self.num_lines < 1 or self.line_width <= 0:
            raise errors.SettingsError("num_lines must be >= 1 and line_width > 0")
        if not -1.0 <= self.intensity <= 1.0:
            raise errors.SettingsError(f"intensity must lie in [-1, 1], got {self.intensity}")
        if self.patients is not None and len(self.patients) != self.num_canaries:
            raise errors.SettingsError(f"{len(self.patients)} canary patients given for "
                                       f"num_canaries={self.num_canaries}")


def candidate_masks(num_candidates: int, patch_size: int, num_lines: int = 2,
                    line_width: float = 2.0, seed: int = 0) -> np.ndarray:
    """bool [num_candidates, P, P]: the pixels of each candidate signature, a union of
    ``num_lines`` straight lines (random angle, random offset from the centre up to P/4), each
    ``line_width`` pixels wide. A pure function of its arguments."""
    rng = np.random.default_rng([seed, patch_size, 7])
    centre = (patch_size - 1) / 2.0
    yy, xx = np.mgrid[0:patch_size, 0:patch_size].astype(np.float64) - centre
    masks = np.zeros((num_candidates, patch_size, patch_size), bool)
    for c in range(num_candidates):
        for _ in range(num_lines):
            angle = rng.uniform(0.0, np.pi)
            offset = rng.uniform(-patch_size / 4.0, patch_size / 4.0)
            distance = np.abs(xx * np.cos(angle) + yy * np.sin(angle) - offset)
            masks[c] |= distance < line_width / 2.0
    return masks


def stamp(images, labels, mask, intensity: float = 1.0):
    """Copies of ``images`` [N, P, P] and ``labels`` with the signature ``mask`` [P, P]
    stamped: image = ``intensity`` and label = 1 on the mask, unchanged elsewhere."""
    images = np.array(images, np.float32, copy=True)
    labels = np.array(labels, np.uint8, copy=True)
    images[..., mask] = intensity
    labels[..., mask] = 1
    return images, labels


def choose_canaries(info: dict, config: CanaryConfig) -> dict:
    """{canary patient id: inserted candidate index}: ``config.patients`` or random training
    patients (seeded), each with a distinct random candidate. At least one training patient
    must stay without a canary."""
    train = list(info["splits"]["train"]["patients"])
    if config.patients is not None:
        unknown = [p for p in config.patients if p not in train]
        if unknown:
            raise errors.SettingsError(f"canary patients {unknown} are not training patients "
                                       f"of the data set")
        chosen = list(config.patients)
    else:
        if config.num_canaries >= len(train):
            raise errors.SettingsError(
                f"num_canaries={config.num_canaries} needs more than {config.num_canaries} "
                f"training patients (the data set has {len(train)})")
        rng = np.random.default_rng([config.seed, 11])
        chosen = sorted(train[i] for i in rng.choice(len(train), config.num_canaries,
                                                     replace=False))
    rng = np.random.default_rng([config.seed, 13])
    inserted = rng.choice(config.num_candidates, len(chosen), replace=False)
    return {pid: int(c) for pid, c in zip(chosen, inserted)}


def _masks_sha256(masks: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(masks).tobytes()).hexdigest()


def _parse_record(raw: bytes, patch_size: int):
    """(image [P, P] float32, label [P, P] uint8, patient id, slice, origin) of one record."""
    f = tf.train.Example.FromString(raw).features.feature
    image = np.asarray(f["image"].float_list.value, np.float32).reshape(patch_size, patch_size)
    label = np.frombuffer(f["label"].bytes_list.value[0], np.uint8).reshape(patch_size,
                                                                           patch_size)
    return (image, label, f["patient_id"].bytes_list.value[0].decode(),
            int(f["slice"].int64_list.value[0]), list(f["origin"].int64_list.value))


def _patient_of(raw: bytes) -> str:
    return tf.train.Example.FromString(raw).features.feature[
        "patient_id"].bytes_list.value[0].decode()


def _read_raw(path: str):
    """The serialised records of one GZIP shard; a corrupted or truncated shard is an
    InputDataError naming it (the gzip stream is checked to its end-of-stream marker and CRC
    first: TensorFlow's reader can stop early at a truncation without an error)."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise errors.InputDataError(f"{path}: corrupted or truncated TFRecord shard "
                                    f"({e})") from None
    try:
        return list(tf.data.TFRecordDataset(path, records.COMPRESSION).as_numpy_iterator())
    except tf.errors.OpError as e:
        first = (e.message or type(e).__name__).splitlines()[0][:200]
        raise errors.InputDataError(f"{path}: corrupted or truncated TFRecord shard "
                                    f"({first})") from None


def _split_shards(base: str, split: str) -> list:
    """The base split's shard paths, checked to follow records.shard_name."""
    paths = records.shard_paths(base, split)
    expected = [records.shard_name(split, i, len(paths)) for i in range(len(paths))]
    if [os.path.basename(p) for p in paths] != expected:
        raise errors.InputDataError(f"{base}: the {split} shards are not named "
                                    f"{expected[:1]}... as tfdpgan writes them")
    return paths


def _copy_split(base: str, staging: str, split: str, expected: int, canaries: dict,
                masks: np.ndarray, config: CanaryConfig, patch_size: int) -> dict:
    """Copy one split's shards into ``staging``, stamping the canary patients' records.
    Returns {canary patient: stamped patches}."""
    paths = _split_shards(base, split)
    if not paths:
        return {}
    writer = records.ShardWriter(staging, split, len(paths))
    stamped, total = {}, 0
    try:
        for shard, path in enumerate(paths):
            for raw in _read_raw(path):
                total += 1
                if _patient_of(raw) not in canaries:
                    writer.write(shard, raw)            # byte for byte
                    continue
                image, label, pid, slice_index, origin = _parse_record(raw, patch_size)
                image, label = stamp(image, label, masks[canaries[pid]], config.intensity)
                writer.write(shard, records.serialize(image, label, pid, slice_index, origin))
                stamped[pid] = stamped.get(pid, 0) + 1
    finally:
        writer.close()
    if total != expected:
        raise errors.InputDataError(f"{base}: dataset.json promises {expected} {split} "
                                    f"patches, the shards hold {total}")
    return stamped


def _canary_section(config: CanaryConfig, canaries: dict, stamped: dict, patch_size: int,
                    masks: np.ndarray) -> dict:
    return {
        "description": "straight bright lines (image = intensity, label = 1) stamped at the "
                       "same place into every patch of each canary patient; candidates not "
                       "inserted are the reference (tfdpgan.leakage.canaries)",
        "patients": dict(sorted(canaries.items())),
        "inserted": sorted(canaries.values()),
        "num_patches": {pid: int(stamped.get(pid, 0)) for pid in sorted(canaries)},
        "num_candidates": config.num_candidates, "num_lines": config.num_lines,
        "line_width": config.line_width, "intensity": config.intensity,
        "seed": config.seed, "patch_size": patch_size, "masks_sha256": _masks_sha256(masks),
    }


def make_canary_dataset(base: str, out_dir: str, config: CanaryConfig = CanaryConfig(),
                        overwrite: bool = False) -> dict:
    """Write a copy of the TFRecord data set ``base`` with canaries (module docstring) into
    ``out_dir`` atomically and return its dataset.json content. Errors (bad settings, bad or
    inconsistent shards, an existing ``out_dir`` without ``overwrite``) leave nothing."""
    config.validate()
    info = records.read_dataset_json(base)
    if info.get(CANARIES_KEY):
        raise errors.InputDataError(f"{base}: already holds canaries; start from a data set "
                                    f"without them")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise errors.OutputExistsError(f"{out_dir}: already exists (pass overwrite=True)")
    patch_size = int(info["patch_size"])
    canaries = choose_canaries(info, config)
    masks = candidate_masks(config.num_candidates, patch_size, config.num_lines,
                            config.line_width, config.seed)
    stamped = {}
    with atomic.staged_dir(out_dir, overwrite) as staging:
        for split, entry in info["splits"].items():
            stamped.update(_copy_split(base, staging, split, int(entry["num_patches"]),
                                       canaries, masks, config, patch_size))
        missing = [p for p in canaries if not stamped.get(p)]
        if missing:
            raise errors.InputDataError(f"{base}: canary patients {missing} have no patches")
        out = dict(info, created=datetime.datetime.now(datetime.timezone.utc).isoformat())
        out["patients"] = {pid: (dict(p, canary=canaries[pid]) if pid in canaries else p)
                           for pid, p in info["patients"].items()}
        out["derived_from"] = {"path": os.path.abspath(base), "created": info.get("created")}
        out[CANARIES_KEY] = _canary_section(config, canaries, stamped, patch_size, masks)
        atomic.write_json_atomic(os.path.join(staging, records.DATASET_JSON), out)
    return out


def read_canaries(info: dict) -> Optional[dict]:
    """dataset.json's canary section, or None for a data set without canaries."""
    return info.get(CANARIES_KEY) or None


def canary_masks(section: dict) -> np.ndarray:
    """The candidate masks of a canary section, regenerated and checked against its
    SHA-256 (InputDataError if they differ: the section was edited or the generator of the
    signatures changed)."""
    masks = candidate_masks(int(section["num_candidates"]), int(section["patch_size"]),
                            int(section["num_lines"]), float(section["line_width"]),
                            int(section["seed"]))
    if _masks_sha256(masks) != section["masks_sha256"]:
        raise errors.InputDataError("dataset.json's canary signatures do not match their "
                                    "SHA-256 (edited section or changed signature generator)")
    return masks
