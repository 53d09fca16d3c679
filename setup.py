"""tfdpgan: differentially private WGAN for TOF-MRA patches with vessel labels."""
from setuptools import find_packages, setup

setup(
    name="tfdpgan",
    version="0.1.0",
    description=("Differentially private Wasserstein GAN for brain TOF-MRA "
                 "patches with vessel segmentation labels"),
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["tfdpgan", "tfdpgan.*"]),
    # the built-in public prior (--init_from=builtin): weights and how they were made
    package_data={"tfdpgan.gan": ["builtin_prior/prior.json", "builtin_prior/weights.npz"]},
    install_requires=[
        # The stack that works together: TF Privacy 0.9.0 needs Keras-2
        # legacy optimizers (TF <= 2.15); TF-GAN 2.1.0 breaks on TF >= 2.16.
        "tensorflow==2.15.1",
        "tensorflow-privacy==0.9.0",
        "tensorflow-gan==2.1.0",
        "tensorflow-probability==0.22.1",
        "tensorflow-hub==0.15.0",
        "numpy>=1.23,<2",
        "nibabel>=5.1,<6",
        "scipy>=1.10,<1.14",
        "absl-py>=1.4",
        "tensorboard>=2.15,<2.16",
        "matplotlib>=3.7,<4",      # sweep plot (PNG, Agg backend)
        "scikit-learn>=1.3",       # audit: ROC curves / AUC
        "SimpleITK>=2.3,<3",       # MetaImage / NRRD / DICOM series input
    ],
    extras_require={
        "test": ["pytest>=7.4"],
    },
    entry_points={"console_scripts": [
        f"tfdpgan-{name}=tfdpgan.{name}:cli_main" for name in (
            "train", "export", "sample", "privacy", "evaluate", "sweep", "audit", "phantom",
            "convert", "fid")]},
)
