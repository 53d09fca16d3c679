"""tfdpgan: a Wasserstein GAN with a differentially private critic for
labelled brain TOF-MRA patches (image + vessel segmentation label).

See README.md for the quick start and ../shared/DESIGN.md for the data flow.
"""
import os

# TensorFlow 2.15.1's oneDNN CPU kernels fail on some CPUs (seen on AVX-512 machines) when
# a batch holds ONE example ("input depth must be evenly divisible by filter depth"), which a
# Poisson-sampled DP batch can; tests/dp/test_clipping.py::test_variable_batch reproduces it.
# Off unless the user sets TF_ENABLE_ONEDNN_OPTS=1 before importing tfdpgan.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
