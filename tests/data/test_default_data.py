"""The phantom default data: generated and converted once, then reused from the cache."""
import os

import pytest

from tfdpgan.data import default_data, phantom, records

TINY = default_data.PhantomDataConfig(num_patients=3, num_test=1, shape=(40, 40, 12),
                                      patch_size=16, patches_per_patient=20, val_fraction=0.34)


def test_prepare_generates_once_then_reuses(tmp_path, monkeypatch):
    nifti, rec = default_data.prepare(TINY, str(tmp_path))
    info = records.read_dataset_json(rec)
    assert info["splits"]["train"]["num_patients"] == 2
    assert info["splits"]["val"]["num_patients"] == 1
    assert info["splits"]["test"]["num_patients"] == 1
    assert os.path.isfile(os.path.join(nifti, "imagesTs", "phantom_003.nii.gz"))

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached data set")
    monkeypatch.setattr(phantom, "write_dataset", fail)
    assert default_data.prepare(TINY, str(tmp_path)) == (nifti, rec)


def test_cache_key_follows_every_setting():
    assert TINY.key() == default_data.PhantomDataConfig(**vars(TINY)).key()
    for change in (dict(seed=1), dict(patch_size=32), dict(shape=(48, 40, 12))):
        other = default_data.PhantomDataConfig(**{**vars(TINY), **change})
        assert other.key() != TINY.key()


def test_env_var_moves_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDPGAN_CACHE", str(tmp_path))
    assert default_data.default_cache_dir() == str(tmp_path)
    with pytest.raises(ValueError):
        default_data.prepare(default_data.PhantomDataConfig(shape=(4, 4, 4)))
    assert not any(name.startswith("phantom-") and os.listdir(tmp_path / name)
                   for name in os.listdir(tmp_path))


def test_benchmark_private_site_is_data_no_prior_saw():
    # the benchmarks' private site must not be the built-in prior's data (its recorded seed)
    # nor the default data set (seed 0, which benchmarks/utility.py's own prior trains on)
    from tfdpgan.gan import priors
    site = default_data.benchmark_private_site(patch_size=16)
    builtin = priors.read_builtin()["source_run"]["phantom"]
    assert site.seed not in (builtin["seed"], default_data.PhantomDataConfig().seed)
    assert site.key() != default_data.PhantomDataConfig(patch_size=16).key()
    assert (site.preset, site.patch_size) == ("default", 16)
    assert default_data.benchmark_private_site("site_b").preset == "site_b"
    assert default_data.benchmark_private_site(None).preset == "default"
