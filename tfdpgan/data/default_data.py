"""The default data of every command: a vessel-phantom data set, generated and converted once
into a cache folder (keyed by its settings) and reused afterwards.

Layout: ``CACHE/phantom-<key>/nifti`` (the nnU-Net style folder, test patients in imagesTs)
and ``CACHE/phantom-<key>/records`` (TFRecords + dataset.json). Both appear atomically, so an
interrupted first run simply starts over.
"""
import dataclasses
import hashlib
import json
import os
from typing import Tuple

from absl import logging

import tfdpgan
from tfdpgan import paths
from tfdpgan.data import convert, phantom, volumes

__all__ = ["default_cache_dir", "PhantomDataConfig", "prepare", "benchmark_private_site",
           "BENCHMARK_PRIVATE_SEED"]


def default_cache_dir() -> str:
    """The cache root (tfdpgan.paths: $TFDPGAN_CACHE or ~/.cache/tfdpgan)."""
    return paths.cache_root()


@dataclasses.dataclass(frozen=True)
class PhantomDataConfig:
    """The default phantom data set: how many patients, which site preset, which grid, and how
    it is cut into patches. ``shape`` is the volume grid over the preset's field of view (the
    spacing follows, so a small shape is a coarse scan of the same head, never a crop); the
    default shape stands for "the preset's own grid" (so ``preset="site_b"`` alone gives the
    site_b protocol)."""
    num_patients: int = 20
    num_test: int = 4
    seed: int = 0
    shape: Tuple[int, int, int] = phantom.PRESETS["default"].shape
    patch_size: int = 32                 # flags/demo.cfg (issue #11: DP signal-to-noise)
    patches_per_patient: int = 500
    vessel_fraction: float = 0.5
    val_fraction: float = 0.1
    preset: str = "default"

    def phantom_config(self) -> phantom.PhantomConfig:
        base = phantom.preset(self.preset)
        if tuple(self.shape) == phantom.PRESETS["default"].shape:
            return base
        return phantom.with_shape(base, self.shape)

    def key(self) -> str:
        """Cache key: these settings, the full phantom config, the phantom generator version
        and the tfdpgan version (so a changed generator never reuses stale data)."""
        text = json.dumps([dataclasses.asdict(self), dataclasses.asdict(self.phantom_config()),
                           phantom.GENERATOR_VERSION, tfdpgan.__version__], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# The phantom seed of the benchmarks' "private site". Public priors use other seeds (the
# built-in prior 1000, benchmarks/utility.py's trained prior 0), so no prior saw its patients.
BENCHMARK_PRIVATE_SEED = 1


def benchmark_private_site(preset: str = None, **changes) -> PhantomDataConfig:
    """The benchmarks' stand-in for a hospital's private data (benchmarks/utility.py fine-tunes
    and tests on it, benchmarks/prior_fid.py scores priors against it): the phantom with seed
    BENCHMARK_PRIVATE_SEED and ``preset`` (None: "default"); ``changes`` set other fields
    (e.g. the recipe's patch size)."""
    config = PhantomDataConfig(seed=BENCHMARK_PRIVATE_SEED, **changes)
    return dataclasses.replace(config, preset=preset) if preset else config


def prepare(config: PhantomDataConfig = PhantomDataConfig(), cache_dir: str = None):
    """Make sure the phantom data set exists; returns (nifti_dir, records_dir)."""
    root = paths.phantom_cache_dir(config.key(), cache_dir)
    nifti_dir, rec_dir = os.path.join(root, "nifti"), os.path.join(root, "records")
    if not os.path.isdir(nifti_dir):
        logging.info("generating the phantom data set (%d + %d patients) into %s",
                     config.num_patients, config.num_test, nifti_dir)
        os.makedirs(root, exist_ok=True)
        _tolerate_race(lambda: phantom.write_dataset(
            nifti_dir, config.num_patients, num_test=config.num_test, seed=config.seed,
            config=config.phantom_config()), nifti_dir)
    if not os.path.isdir(rec_dir):
        logging.info("converting the phantom data set into %s", rec_dir)
        conv = convert.ConvertConfig(
            patch_size=config.patch_size, patches_per_patient=config.patches_per_patient,
            vessel_fraction=config.vessel_fraction, val_fraction=config.val_fraction,
            seed=config.seed)
        _tolerate_race(lambda: convert.convert(
            volumes.find_cases(nifti_dir, "Tr"), rec_dir, conv,
            test_cases=volumes.find_cases(nifti_dir, "Ts")), rec_dir)
    return nifti_dir, rec_dir


def _tolerate_race(make, out_dir):
    """Run ``make``; if another process published ``out_dir`` meanwhile, use theirs."""
    try:
        make()
    except FileExistsError:
        if not os.path.isdir(out_dir):
            raise
