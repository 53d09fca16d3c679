"""Activations and distances cached on disk by a key (real-patch sets recur across a sweep).

The key is any JSON-able description of what was computed (data folder and creation time, test
cases and their mtimes, sample size, seed, network name); the file name is a hash of it. Files
appear atomically. The cache holds statistics of real patients' patches: keep it with the
evaluation outputs (internal use), never release it.
"""
import hashlib
import json
import os
from typing import Optional

import numpy as np

from tfdpgan import atomic
from tfdpgan.evaluation.fid import distance
from tfdpgan.evaluation.fid.network import Network

__all__ = ["key_name", "cached_activations", "cached_distance"]


def key_name(key: dict) -> str:
    """A short stable hash of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_activations(network: Network, images: np.ndarray, cache_dir: Optional[str],
                       key: Optional[dict]) -> np.ndarray:
    """pool3 activations of patches normalised to [-1, 1], cached under ``cache_dir`` by
    ``key`` (and the network's name); no caching without both."""
    path = None
    if cache_dir and key is not None:
        path = os.path.join(cache_dir, f"activations-{key_name(dict(key, network=network.name))}.npy")
        if os.path.isfile(path):
            return np.load(path)
    acts = np.asarray(distance.activations(network, distance.to_inception_range(images)))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, acts)
        os.replace(tmp, path)
    return acts


def cached_distance(a: np.ndarray, b: np.ndarray, cache_dir: Optional[str], key: dict) -> float:
    """frechet_distance(a, b), cached like the activations (the real-vs-real floor is the same
    for every run of a sweep, and a 2048-d distance takes a while on a CPU)."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"distance-{key_name(key)}.json")
        if os.path.isfile(path):
            with open(path) as f:
                return float(json.load(f)["frechet_distance"])
    value = float(distance.frechet_distance(a, b))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        atomic.write_json_atomic(path, {"frechet_distance": value, "key": key})
    return value
