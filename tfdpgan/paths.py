"""Where tfdpgan keeps things on disk outside a run's workdir (nnU-Net's ``paths.py`` idea).

One cache root, ``$TFDPGAN_CACHE`` or ``~/.cache/tfdpgan``; every cached artefact lives in a
named sub-folder of it. Nothing here touches the disk.
"""
import os
from typing import Optional

__all__ = ["CACHE_ENV", "FID_CACHE_ENV", "cache_root", "phantom_cache_dir", "fid_cache_dir", "default_workdir"]

CACHE_ENV = "TFDPGAN_CACHE"
FID_CACHE_ENV = "TFDPGAN_FID_CACHE"   # optional: keep the 90 MB FID weights apart (CI, tests)


def cache_root(cache_dir: Optional[str] = None) -> str:
    """``cache_dir`` if given, else ``$TFDPGAN_CACHE``, else ``~/.cache/tfdpgan``."""
    if cache_dir:
        return cache_dir
    return os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "tfdpgan"))


def phantom_cache_dir(key: str, cache_dir: Optional[str] = None) -> str:
    """Folder of one cached phantom data set (``nifti/`` and ``records/`` inside)."""
    return os.path.join(cache_root(cache_dir), f"phantom-{key}")


def fid_cache_dir(cache_dir: Optional[str] = None) -> str:
    """Folder of the FID network's weights: ``cache_dir/fid`` if given, else
    ``$TFDPGAN_FID_CACHE``, else ``<cache root>/fid``."""
    if not cache_dir and os.environ.get(FID_CACHE_ENV):
        return os.environ[FID_CACHE_ENV]
    return os.path.join(cache_root(cache_dir), "fid")


def default_workdir(epsilon: float) -> str:
    """``runs/eps<epsilon>`` (relative to the current folder), the default training workdir."""
    return os.path.join("runs", f"eps{epsilon:g}")
