"""Members and non-members of a run: the patches-per-patient cap and the loaded splits."""
import json
import os

import numpy as np
import pytest

from tfdpgan.leakage import real


def test_patches_per_patient_cap():
    assert real.patches_per_patient_cap([np.full(5, 60), np.full(1, 60)], 0) is None
    assert real.patches_per_patient_cap([np.full(5, 60), np.full(1, 60)], 300) is None
    assert real.patches_per_patient_cap([np.full(5, 60), np.full(1, 60)], 120) == 24
    # 18 x 500 train, 2 x 500 val, 4 x 500 test, cap 1000: 1000 // 18 = 55 from everyone
    assert real.patches_per_patient_cap(
        [np.full(18, 500), np.full(2, 500), np.full(4, 500)], 1000) == 55
    assert real.patches_per_patient_cap([np.full(3000, 1)], 10) == 1


def test_load_real_members_are_the_training_split(tiny_dataset):
    rec = tiny_dataset[1]
    with open(os.path.join(rec, "dataset.json")) as f:
        splits = json.load(f)["splits"]
    patches = real.load_real(rec, max_patches=0, seed=0)
    members = [p for p, m in zip(patches.patient_ids, patches.patient_member) if m]
    others = [p for p, m in zip(patches.patient_ids, patches.patient_member) if not m]
    assert members == splits["train"]["patients"]
    assert sorted(others) == sorted(splits["val"]["patients"] + splits["test"]["patients"])
    assert patches.patches_per_patient_cap is None
    assert int(patches.member.sum()) == splits["train"]["num_patches"]
    assert np.all(np.diff(patches.patient_index) >= 0)          # sorted by patient
    # a cap: the same number of random patches from every patient, reproducible by seed
    capped = real.load_real(rec, max_patches=60, seed=3)
    per_patient = np.bincount(capped.patient_index)
    assert capped.patches_per_patient_cap == 20 and set(per_patient) == {20}
    again = real.load_real(rec, max_patches=60, seed=3)
    np.testing.assert_array_equal(capped.images, again.images)
    assert real.counts(capped)["nonmember_splits"] == ["test", "val"]


def test_run_data_dir_refuses_a_missing_data_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="the run's data set"):
        real.run_data_dir({"data": str(tmp_path / "gone" / "records")})
