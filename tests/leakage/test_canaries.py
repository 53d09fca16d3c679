"""Canary insertion at the TFRecord level: exactly the canary patients change, marked in
dataset.json, signature present, everything else byte for byte, nothing left on failure."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import errors
from tfdpgan.data import pipeline, records
from tfdpgan.leakage import canaries

CONFIG = canaries.CanaryConfig(num_canaries=2, num_candidates=20, seed=3)


def _raw(rec_dir, split):
    return [r for p in records.shard_paths(rec_dir, split)
            for r in tf.data.TFRecordDataset(p, records.COMPRESSION).as_numpy_iterator()]


def _leftovers(parent):
    return [n for n in os.listdir(parent) if n.startswith(".")]


@pytest.fixture(scope="module")
def canaried(patch_records, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("canaries") / "rec")
    return out, canaries.make_canary_dataset(patch_records, out, CONFIG)


def test_candidates_are_deterministic_distinct_lines():
    masks = canaries.candidate_masks(30, 16, num_lines=2, line_width=2.0, seed=1)
    assert masks.shape == (30, 16, 16) and masks.dtype == bool
    np.testing.assert_array_equal(masks, canaries.candidate_masks(30, 16, 2, 2.0, seed=1))
    assert not np.array_equal(masks, canaries.candidate_masks(30, 16, 2, 2.0, seed=2))
    assert len({m.tobytes() for m in masks}) == 30          # all distinct
    fraction = masks.reshape(30, -1).mean(1)
    assert (fraction > 0.05).all() and (fraction < 0.6).all()
    images, labels = np.zeros((3, 16, 16), np.float32), np.zeros((3, 16, 16), np.uint8)
    stamped_images, stamped_labels = canaries.stamp(images, labels, masks[0], 0.7)
    assert (stamped_images[:, masks[0]] == np.float32(0.7)).all()
    assert (stamped_labels[:, masks[0]] == 1).all() and (stamped_labels[:, ~masks[0]] == 0).all()
    assert not images.any() and not labels.any()           # inputs untouched


def test_the_data_set_holds_exactly_the_marked_canaries(patch_records, canaried):
    out, info = canaried
    base = records.read_dataset_json(patch_records)
    section = info[canaries.CANARIES_KEY]
    assert records.read_dataset_json(out) == info
    train = base["splits"]["train"]["patients"]
    assert len(section["patients"]) == 2 and set(section["patients"]) <= set(train)
    assert sorted(section["patients"].values()) == section["inserted"]
    assert len(set(section["inserted"])) == 2
    for pid, entry in info["patients"].items():
        assert entry.get("canary") == section["patients"].get(pid)
    assert info["splits"] == base["splits"] and info["counts"] == base["counts"]
    assert info["derived_from"]["path"] == os.path.abspath(patch_records)
    masks = canaries.canary_masks(section)
    new, old = pipeline.load_arrays(out, "train"), pipeline.load_arrays(patch_records, "train")
    assert new.patient_ids == old.patient_ids
    np.testing.assert_array_equal(new.patient_index, old.patient_index)
    for i, pid in enumerate(old.patient_ids):
        rows = old.patient_index == i
        if pid not in section["patients"]:
            np.testing.assert_array_equal(new.images[rows], old.images[rows])
            np.testing.assert_array_equal(new.labels[rows], old.labels[rows])
            continue
        mask = masks[section["patients"][pid]]
        assert section["num_patches"][pid] == rows.sum()
        assert (new.images[rows][:, mask] == 1.0).all() and (new.labels[rows][:, mask] == 1).all()
        np.testing.assert_array_equal(new.images[rows][:, ~mask], old.images[rows][:, ~mask])
        np.testing.assert_array_equal(new.labels[rows][:, ~mask], old.labels[rows][:, ~mask])
    # records of other patients and of the held-out split are copied byte for byte
    assert _raw(out, "val") == _raw(patch_records, "val")
    canary_ids = {p.encode() for p in section["patients"]}
    old_raw, new_raw = _raw(patch_records, "train"), _raw(out, "train")
    same = [a == b for a, b in zip(old_raw, new_raw)]
    is_canary = [tf.train.Example.FromString(r).features.feature["patient_id"]
                 .bytes_list.value[0] in canary_ids for r in old_raw]
    assert len(old_raw) == len(new_raw) and same == [not c for c in is_canary]


def test_given_patients_and_refusals_leave_nothing(patch_records, canaried, tmp_path):
    out = str(tmp_path / "rec")
    train = records.read_dataset_json(patch_records)["splits"]["train"]["patients"]
    info = canaries.make_canary_dataset(
        patch_records, out, canaries.CanaryConfig(num_canaries=1, num_candidates=4,
                                                  patients=[train[-1]]))
    assert list(info[canaries.CANARIES_KEY]["patients"]) == [train[-1]]
    with pytest.raises(errors.OutputExistsError, match="already exists"):
        canaries.make_canary_dataset(patch_records, out, CONFIG)
    bad = [(canaries.CanaryConfig(num_canaries=1, patients=["nobody"]), "not training"),
           (canaries.CanaryConfig(num_canaries=len(train)), "needs more than"),
           (canaries.CanaryConfig(num_canaries=3, num_candidates=5), "at least twice"),
           (canaries.CanaryConfig(intensity=2.0), "intensity")]
    for config, message in bad:
        with pytest.raises(errors.SettingsError, match=message):
            canaries.make_canary_dataset(patch_records, str(tmp_path / "new"), config)
    with pytest.raises(errors.InputDataError, match="already holds canaries"):
        canaries.make_canary_dataset(canaried[0], str(tmp_path / "new"), CONFIG)
    assert not os.path.exists(tmp_path / "new") and not _leftovers(str(tmp_path))


def test_a_truncated_shard_is_named_and_leaves_nothing(patch_records, tmp_path):
    base = str(tmp_path / "base")
    shutil.copytree(patch_records, base)
    shard = records.shard_paths(base, "train")[-1]
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(errors.InputDataError, match=os.path.basename(shard)):
        canaries.make_canary_dataset(base, str(tmp_path / "out"), CONFIG)
    assert not os.path.exists(tmp_path / "out") and not _leftovers(str(tmp_path))


def test_edited_signatures_are_refused(canaried):
    section = dict(canaried[1][canaries.CANARIES_KEY], seed=99)
    with pytest.raises(errors.InputDataError, match="SHA-256"):
        canaries.canary_masks(section)
    assert canaries.read_canaries({"splits": {}}) is None
    assert json.loads(json.dumps(canaried[1]))[canaries.CANARIES_KEY]["seed"] == 3
