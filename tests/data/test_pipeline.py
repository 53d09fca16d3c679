"""Input pipelines: streaming shuffle, Poisson sampling, patient-grouped sampling."""
import os

import numpy as np
import pytest

from tfdpgan.data import pipeline, records


@pytest.fixture(scope="module")
def arrays(patch_records):
    return pipeline.load_arrays(patch_records, "train")


def test_shuffled_stream_covers_the_split_in_batches(patch_records):
    info = records.read_dataset_json(patch_records)
    n = info["counts"]["train"]
    ds = pipeline.shuffled(patch_records, "train", batch_size=32, seed=0, repeat=False,
                           drop_remainder=False)
    seen = []
    for ex in ds.as_numpy_iterator():
        assert ex["image"].shape[1:] == (16, 16, 1) and ex["label"].shape[1:] == (16, 16, 1)
        seen += [(p, tuple(o)) for p, o in zip(ex["patient_id"], ex["origin"])]
    assert len(seen) == len(set(seen)) == n
    first = next(iter(pipeline.shuffled(patch_records, batch_size=n, seed=0, repeat=False)))
    order = [p for p in first["patient_id"].numpy()]
    assert order != sorted(order)  # mixed across patients and shards


def test_load_arrays_matches_records_and_caches(patch_records, arrays, tmp_path):
    info = records.read_dataset_json(patch_records)
    assert len(arrays) == info["counts"]["train"]
    assert arrays.patient_ids == info["splits"]["train"]["patients"]
    counts = np.bincount(arrays.patient_index, minlength=len(arrays.patient_ids))
    assert list(counts) == [info["patients"][p]["num_patches"] for p in arrays.patient_ids]
    assert set(np.unique(arrays.labels)) <= {0, 1}
    cached = pipeline.load_arrays(patch_records, "train", cache_dir=str(tmp_path))
    assert isinstance(cached.images, np.memmap)
    np.testing.assert_array_equal(cached.images, arrays.images)
    again = pipeline.load_arrays(patch_records, "train", cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.patient_index, arrays.patient_index)


def test_poisson_inclusion_rate_matches_q():
    n, q, steps = 500, 0.05, 2000
    hits = np.zeros(n)
    sizes = []
    for step in range(steps):
        idx = pipeline.poisson_indices(n, q, seed=7, step=step)
        assert len(np.unique(idx)) == len(idx)
        hits[idx] += 1
        sizes.append(len(idx))
    # each record's inclusion count ~ Binomial(steps, q); pooled rate is tight
    assert hits.sum() / (n * steps) == pytest.approx(q, rel=0.02)
    # per-record counts spread like independent Binomial(steps, q) draws
    expected_sd = np.sqrt(steps * q * (1 - q))
    assert np.std(hits) == pytest.approx(expected_sd, rel=0.15)
    # batch sizes vary like Binomial(n, q), not fixed
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.15)
    # inclusions of two records in the same step are independent
    a = np.array([0 in pipeline.poisson_indices(n, q, 7, s) for s in range(steps)])
    b = np.array([1 in pipeline.poisson_indices(n, q, 7, s) for s in range(steps)])
    assert (a & b).mean() == pytest.approx(q * q, abs=0.004)


def test_poisson_batches_are_a_function_of_seed_and_step(arrays):
    ds = pipeline.poisson(arrays, rate=0.1, seed=3, num_steps=6)
    full = list(ds.as_numpy_iterator())
    resumed = list(pipeline.poisson(arrays, rate=0.1, seed=3, start_step=4,
                                    num_steps=2).as_numpy_iterator())
    assert [b["step"] for b in full] == list(range(6))
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = next(pipeline.poisson(arrays, 0.1, seed=4, num_steps=1).as_numpy_iterator())
    assert other["image"].shape != full[0]["image"].shape or \
        not np.array_equal(other["image"], full[0]["image"])
    sizes = {len(b["image"]) for b in full}
    assert len(sizes) > 1  # variable batch size
    idx = pipeline.poisson_indices(len(arrays), 0.1, 3, 0)
    np.testing.assert_array_equal(full[0]["image"][..., 0], arrays.images[idx])
    np.testing.assert_array_equal(full[0]["label"][..., 0], arrays.labels[idx])


def test_poisson_rejects_bad_rate():
    with pytest.raises(ValueError, match="sampling rate"):
        pipeline.poisson_indices(10, 0.0, 0, 0)


def test_patient_grouped_takes_at_most_k_patches_of_one_patient(arrays):
    k = 8
    groups = arrays.patient_records()
    ds = pipeline.patient_grouped(arrays, rate=0.5, patches_per_patient=k, seed=1,
                                  num_steps=40)
    sampled = np.zeros(len(arrays.patient_ids))
    for batch in ds.as_numpy_iterator():
        n = len(batch["patient_index"])
        assert batch["image"].shape == (n, k, 16, 16, 1)
        assert len(set(batch["patient_index"])) == n
        sampled[batch["patient_index"]] += 1
        for row, p in enumerate(batch["patient_index"]):
            assert batch["valid"][row].sum() == min(k, len(groups[p]))
            # every patch of the row is one of that patient's patches, no repeats
            own = {arrays.images[i].tobytes() for i in groups[p]}
            rows = [batch["image"][row, j, ..., 0].tobytes() for j in range(k)
                    if batch["valid"][row, j]]
            assert set(rows) <= own and len(set(rows)) == len(rows)
    assert sampled.mean() / 40 == pytest.approx(0.5, abs=0.12)


def test_patient_grouped_pads_small_patients(arrays):
    k = 100  # more than any patient has
    batch = next(pipeline.patient_grouped(arrays, 1.0, k, seed=0, num_steps=1)
                 .as_numpy_iterator())
    assert len(batch["patient_index"]) == len(arrays.patient_ids)
    assert (batch["valid"].sum(1) == 60).all()
    assert (batch["image"][~batch["valid"]] == 0).all()


def _copy_records(src, tmp_path):
    import shutil
    dst = str(tmp_path / "rec")
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_shard_is_named_never_skipped(patch_records, tmp_path, damage):
    from tfdpgan import errors
    rec = _copy_records(patch_records, tmp_path)
    shard = records.shard_paths(rec, "train")[1]
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) // 2] if damage == "truncate" else b"\x1f\x8bnot a shard" * 50)
    with pytest.raises(errors.InputDataError) as info:
        pipeline.load_arrays(rec, "train")
    assert shard in str(info.value) and "shard" in str(info.value)


def test_a_missing_shard_changes_n_and_is_refused(patch_records, tmp_path):
    from tfdpgan import errors
    rec = _copy_records(patch_records, tmp_path)
    os.remove(records.shard_paths(rec, "train")[0])
    with pytest.raises(errors.InputDataError, match="promises"):
        pipeline.load_arrays(rec, "train")
