"""NIfTI -> TFRecord conversion: patch sampling, splits, normalisation, bad input."""
import gzip
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from conftest import write_case
from tfdpgan.data import convert, patches, records, volumes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "nifti_to_tfrecord.py")
CONFIG = convert.ConvertConfig(patch_size=16, patches_per_patient=40, vessel_fraction=0.5,
                               val_fraction=0.25, num_shards=2, seed=3)


def _read_all(rec_dir, split):
    info = records.read_dataset_json(rec_dir)
    parse = records.make_parser(info["patch_size"])
    ds = tf.data.TFRecordDataset(records.shard_paths(rec_dir, split), records.COMPRESSION)
    return [{k: v for k, v in ex.items()} for ex in ds.batch(10_000).map(parse).as_numpy_iterator()][0]


@pytest.fixture
def converted(small_dataset_dir, tmp_path):
    out = str(tmp_path / "rec")
    train = volumes.find_cases(small_dataset_dir, "Tr")
    test = volumes.find_cases(small_dataset_dir, "Ts")
    info = convert.convert(train, out, CONFIG, test_cases=test, progress=lambda *a: None)
    return small_dataset_dir, out, info


def test_counts_splits_and_json(converted):
    _, out, info = converted
    on_disk = records.read_dataset_json(out)
    assert on_disk == json.loads(json.dumps(info))
    splits = info["splits"]
    assert splits["train"]["num_patients"] == 3 and splits["val"]["num_patients"] == 1
    assert splits["test"]["patients"] == ["test0"]
    assert not set(splits["train"]["patients"]) & set(splits["val"]["patients"])
    for split, s in splits.items():
        ex = _read_all(out, split)
        assert len(ex["image"]) == s["num_patches"] == info["counts"][split]
        assert {p.decode() for p in ex["patient_id"]} == set(s["patients"])
        assert s["num_patches"] == CONFIG.patches_per_patient * s["num_patients"]
    for pid, p in info["patients"].items():
        assert len(p["sha256"]["image"]) == 64
        assert p["spacing_mm"] == pytest.approx([0.5, 0.5, 0.7])


def test_patches_match_volumes_and_normalisation_inverts(converted):
    data_dir, out, info = converted
    ex = _read_all(out, "train")
    half = CONFIG.patch_size // 2
    for pid in info["splits"]["train"]["patients"]:
        vol = volumes.load_volume(volumes.Case(pid, *(os.path.join(
            data_dir, f"{r}Tr", f"{pid}.nii.gz") for r in ("images", "labels", "masks"))))
        norm = patches.Normalization(**info["patients"][pid]["normalization"])
        rows = np.flatnonzero(ex["patient_id"] == pid.encode())
        origins = ex["origin"][rows]
        # distinct patches, each fully inside the slice
        assert len({tuple(o) for o in origins}) == len(rows)
        assert (origins[:, :2] >= 0).all()
        assert (origins[:, :2] + CONFIG.patch_size <= np.array(vol.image.shape[:2])).all()
        centred_on_vessel = vol.label[origins[:, 0] + half, origins[:, 1] + half,
                                      origins[:, 2]] > 0
        assert centred_on_vessel.mean() >= CONFIG.vessel_fraction
        assert not centred_on_vessel.all()
        for r, (x, y, z) in zip(rows, origins):
            raw = vol.image[x:x + 16, y:y + 16, z]
            np.testing.assert_array_equal(ex["label"][r, ..., 0], vol.label[x:x + 16, y:y + 16, z])
            inside = raw <= norm.high
            np.testing.assert_allclose(norm.invert(ex["image"][r, ..., 0])[inside],
                                       raw[inside], rtol=1e-5, atol=1e-3)
            assert ex["slice"][r] == z
        assert ex["image"].min() >= -1 and ex["image"].max() <= 1


def test_conversion_is_deterministic(small_dataset_dir, tmp_path, converted):
    _, out, info = converted
    again = convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "rec2"),
                            CONFIG, test_cases=volumes.find_cases(small_dataset_dir, "Ts"),
                            progress=lambda *a: None)
    assert again["patients"] == info["patients"]
    a, b = _read_all(out, "train"), _read_all(str(tmp_path / "rec2"), "train")
    key = lambda ex: sorted(zip(ex["patient_id"], map(tuple, ex["origin"])))
    assert key(a) == key(b)


def test_fixed_normalisation_is_data_independent(small_dataset_dir, tmp_path):
    config = convert.ConvertConfig(patch_size=16, patches_per_patient=5,
                                   normalization="fixed", intensity_range=(0.0, 1000.0))
    info = convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "r"), config,
                           progress=lambda *a: None)
    assert {(p["normalization"]["low"], p["normalization"]["high"])
            for p in info["patients"].values()} == {(0.0, 1000.0)}
    assert info["normalization"]["data_dependent"] is False


def test_refuses_to_overwrite_then_replaces(converted):
    data_dir, out, _ = converted
    with pytest.raises(FileExistsError):
        convert.convert(volumes.find_cases(data_dir), out, CONFIG)
    info = convert.convert(volumes.find_cases(data_dir), out, CONFIG, overwrite=True,
                           progress=lambda *a: None)
    assert "test" not in records.read_dataset_json(out)["counts"] or \
        info["counts"]["test"] == 0
    assert sorted(os.listdir(os.path.dirname(out))) == ["data", "rec"]


def test_manifest_input(small_dataset_dir, tmp_path):
    csv = tmp_path / "cases.csv"
    rows = ["patient_id,image,label,mask"] + [
        f"p{i},{small_dataset_dir}/imagesTr/case{i}.nii.gz,"
        f"{small_dataset_dir}/labelsTr/case{i}.nii.gz,{small_dataset_dir}/masksTr/case{i}.nii.gz"
        for i in range(2)]
    csv.write_text("\n".join(rows) + "\n")
    cases = volumes.read_manifest(str(csv))
    assert [c.patient_id for c in cases] == ["p0", "p1"]
    info = convert.convert(cases, str(tmp_path / "r"), CONFIG, progress=lambda *a: None)
    assert info["splits"]["train"]["num_patients"] + info["splits"]["val"]["num_patients"] == 2


# --- bad input: one clear message naming the file, nothing written ------------------------

def _truncate(path):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def _rewrite(path, fn):
    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj), img.affine)
    nib.save(nib.Nifti1Image(data, affine), path)


BAD_CASES = {
    "shape mismatch": ("labelsTr/case1.nii.gz", "does not match the image shape",
                       lambda p: _rewrite(p, lambda d, a: (d[:-1], a))),
    "affine mismatch": ("labelsTr/case1.nii.gz", "affine does not match",
                        lambda p: _rewrite(p, lambda d, a: (d, a @ np.diag([1, 1, 2, 1])))),
    "orientation mismatch": ("masksTr/case1.nii.gz", "orientation",
                             lambda p: _rewrite(p, lambda d, a: (d, np.diag([-1, 1, 1, 1]) @ a))),
    "non-binary label": ("labelsTr/case2.nii.gz", "not binary",
                         lambda p: _rewrite(p, lambda d, a: (d * 2, a))),
    "empty label": ("labelsTr/case2.nii.gz", "label is empty",
                    lambda p: _rewrite(p, lambda d, a: (np.zeros_like(d), a))),
    "nan voxels": ("imagesTr/case3.nii.gz", "NaN/Inf",
                   lambda p: _rewrite(p, lambda d, a: (np.where(d > 500, np.nan, d), a))),
    "4-D input": ("imagesTr/case0.nii.gz", "expected a 3-D volume",
                  lambda p: _rewrite(p, lambda d, a: (np.stack([d, d], -1), a))),
    "truncated file": ("imagesTr/case3.nii.gz", "unreadable or truncated", _truncate),
    "not a nifti": ("labelsTr/case0.nii.gz", "unreadable or truncated",
                    lambda p: open(p, "wb").write(gzip.compress(b"hello"))),
    "missing label": ("labelsTr/case2.nii.gz", "no label found", os.remove),
    "duplicate id": ("imagesTr/case1.nii", "duplicate patient id",
                     lambda p: nib.save(nib.load(p + ".gz"), p)),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_input_names_file_and_writes_nothing(name, small_dataset_dir, tmp_path):
    rel, message, corrupt = BAD_CASES[name]
    corrupt(os.path.join(small_dataset_dir, rel))
    out = str(tmp_path / "rec")
    with pytest.raises(volumes.InputError) as err:
        train = volumes.find_cases(small_dataset_dir, "Tr")
        convert.convert(train, out, CONFIG, progress=lambda *a: None)
    text = str(err.value)
    assert message in text
    case_id = os.path.basename(rel).split(".")[0]
    assert case_id in text and "\n" not in text
    assert sorted(os.listdir(tmp_path)) == ["data"]   # no output, no staging folder left


def test_patch_larger_than_volume(small_dataset_dir, tmp_path):
    config = convert.ConvertConfig(patch_size=64)
    with pytest.raises(volumes.InputError, match="patch size 64 is larger"):
        convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "r"), config)
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_duplicate_ids_across_train_and_test(small_dataset_dir, tmp_path):
    write_case(small_dataset_dir, "case0", split="Ts")
    with pytest.raises(volumes.InputError, match="duplicate patient id 'case0'"):
        convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "r"), CONFIG,
                        test_cases=volumes.find_cases(small_dataset_dir, "Ts"))


def test_failure_midway_leaves_nothing(small_dataset_dir, tmp_path, monkeypatch):
    calls = []

    def fail_on_third(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        convert.convert(volumes.find_cases(small_dataset_dir), str(tmp_path / "r"), CONFIG,
                        progress=fail_on_third)
    assert sorted(os.listdir(tmp_path)) == ["data"]


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_converts_and_reports_bad_input(small_dataset_dir, tmp_path):
    out = str(tmp_path / "rec")
    ok = _run_tool(f"--data_dir={small_dataset_dir}", f"--out_dir={out}", "--patch_size=16",
                   "--patches_per_patient=10", "--val_fraction=0.25")
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and os.path.isfile(os.path.join(out, "dataset.json"))
    assert records.read_dataset_json(out)["converter_flags"]["patch_size"] == 16

    label = os.path.join(small_dataset_dir, "labelsTr", "case2.nii.gz")
    _rewrite(label, lambda d, a: (d * 3, a))
    bad = _run_tool(f"--data_dir={small_dataset_dir}", f"--out_dir={out}2", "--patch_size=16")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and label in errors[0] and "not binary" in errors[0]
    assert not os.path.exists(out + "2")
