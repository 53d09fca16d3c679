"""Conversion at scale: worker processes, byte-identical output whatever their number, and
the TensorFlow-free TFRecord writer (shards.py) checked against TensorFlow."""
import gzip
import json
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan.data import convert, records, shards, volumes

CONFIG = convert.ConvertConfig(patch_size=16, patches_per_patient=50, val_fraction=0.25,
                               num_shards=2, seed=11)


def _files(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@pytest.mark.parametrize("mode", ["fast", "none"])
def test_one_and_two_workers_write_identical_bytes(small_dataset_dir, tmp_path, mode):
    config = convert.ConvertConfig(**{**CONFIG.__dict__, "compression": mode})
    cases = volumes.find_cases(small_dataset_dir)
    test = volumes.find_cases(small_dataset_dir, "Ts")
    seen = []
    for workers in (1, 2):
        convert.convert(cases, str(tmp_path / f"w{workers}"), config, test_cases=test,
                        workers=workers, progress=lambda done, *a: seen.append(done))
    one, two = _files(str(tmp_path / "w1")), _files(str(tmp_path / "w2"))
    assert sorted(one) == sorted(two) and len(one) == 5     # 2 train, 1 val, 1 test + json
    info1, info2 = (json.loads(f.pop("dataset.json")) for f in (one, two))
    info1.pop("created"), info2.pop("created")            # timestamps
    assert info1 == info2
    assert one == two
    assert seen == [1, 2, 3, 4, 5] * 2                   # one progress line per patient
    # and the records read back are the patches of the sequential reference
    ex = records.make_parser(16)
    ds = tf.data.TFRecordDataset(records.shard_paths(str(tmp_path / "w2"), "train"), "GZIP")
    batch = next(ds.batch(1000).map(ex).as_numpy_iterator())
    assert len(batch["image"]) == info1["counts"]["train"]


def test_workers_report_a_bad_case_and_leave_nothing(small_dataset_dir, tmp_path):
    path = os.path.join(small_dataset_dir, "imagesTr", "case2.nii.gz")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) * 2 // 3])      # header fine, voxels truncated
    with pytest.raises(volumes.InputError, match="case2.nii.gz: unreadable or truncated"):
        convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "r"), CONFIG,
                        workers=2, progress=lambda *a: None)
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_examples_parse_in_tensorflow_like_tf_train_example():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, 12, 12)).astype(np.float32)
    labels = (rng.uniform(size=(5, 12, 12)) > 0.7).astype(np.uint8)
    origins = np.array([[0, 0, 0], [127, 128, 300], [5, 200, 1], [1, 2, 3], [999, 0, 70000]])
    encoded = shards.encode_examples(images, labels, "pat-ü", origins)
    for i, raw in enumerate(encoded):
        f = tf.train.Example.FromString(raw).features.feature
        np.testing.assert_array_equal(np.array(f["image"].float_list.value, np.float32),
                                      images[i].ravel())
        assert f["label"].bytes_list.value == [labels[i].tobytes()]
        assert list(f["origin"].int64_list.value) == list(origins[i])
        assert list(f["slice"].int64_list.value) == [origins[i][2]]
        assert f["patient_id"].bytes_list.value == ["pat-ü".encode()]
        assert [f["height"].int64_list.value[0], f["width"].int64_list.value[0]] == [12, 12]
    assert records.serialize(images[1], labels[1], "pat-ü", 300, origins[1]) == encoded[1]
    other = tf.train.Example.FromString(records.serialize(images[1], labels[1], "s", 7,
                                                          (1, 2, 3)))
    assert list(other.features.feature["slice"].int64_list.value) == [7]


def test_crc32c_and_framing_match_tensorflow(tmp_path):
    assert int(shards.crc32c([b"123456789"])[0]) == 0xE3069283      # the CRC-32C check value
    rng = np.random.default_rng(1)
    recs = [rng.bytes(int(n)) for n in rng.integers(0, 3000, 40)] + [b"x" * 70000]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in recs:
            w.write(r)
    assert shards.frame(recs) == open(path, "rb").read()
    a, b = rng.bytes(1000), rng.bytes(777)
    assert shards.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("mode", sorted(shards.GZIP_MODES))
def test_shard_writer_output_reads_in_tensorflow_and_gzip(tmp_path, mode):
    rng = np.random.default_rng(2)
    recs = [rng.bytes(int(n)) for n in rng.integers(1, 5000, 60)]
    writer = shards.ShardWriter(str(tmp_path), "train", 2, compression=mode)
    for i, r in enumerate(recs[:20]):
        writer.write(i, r)
    writer.write_chunk(0, shards.compress_chunk(shards.frame(recs[20:40]), mode))
    for i, r in enumerate(recs[40:]):
        writer.write(i, r)
    writer.close()
    got = [list(tf.data.TFRecordDataset(p, "GZIP").as_numpy_iterator()) for p in writer.paths]
    assert got[0] == recs[0:20:2] + recs[20:40] + recs[40::2]
    assert got[1] == recs[1:20:2] + recs[41::2]
    # standard gzip (header, CRC-32 and size trailer checked by Python's gzip module)
    assert gzip.decompress(open(writer.paths[1], "rb").read()) == shards.frame(got[1])
