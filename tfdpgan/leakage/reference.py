"""The leakage-prone reference run: the audit's positive control.

A run that SHOULD leak: very few training patients (3 phantom patients, 64 patches each, 32×32),
long non-private training (ε = ∞, 4000 critic steps ≈ 670 passes over the 192 training
patches), a small critic (base width 8) with hinge loss, Adam at 1e-3 and one critic step per
generator step. Its critic memorises its training patches, so the audit's white-box
membership inference must reach a clearly high AUC on it; an audit that reports ≈ 0.5 here
is broken. About 3 minutes of training on a 2-core CPU.

``leaky_reference_config(workdir)`` is the TrainConfig (the phantom data set LEAKY_PHANTOM,
or ``data=REC``); flags/leaky_reference.cfg holds the same settings for
``python -m tfdpgan.train --flagfile=flags/leaky_reference.cfg`` (a test checks both agree).
The same training settings with another ε (``epsilon=3``) train the private runs of the
canary experiment (benchmarks/audit.py).
"""
import dataclasses
import math
from typing import Optional

from tfdpgan.data import default_data
from tfdpgan.gan import run, wgan

__all__ = ["FLAGFILE", "LEAKY_PHANTOM", "LEAKY_GAN", "leaky_reference_config"]

FLAGFILE = "flags/leaky_reference.cfg"

# 4 phantom patients (3 train + 1 val at the default val_fraction 0.1) and 3 test patients.
LEAKY_PHANTOM = default_data.PhantomDataConfig(
    num_patients=4, num_test=3, shape=(128, 128, 32), patch_size=32, patches_per_patient=64)

LEAKY_GAN = wgan.WGANConfig(latent_dim=32, loss="hinge", optimizer="adam", critic_lr=1e-3,
                            generator_lr=1e-3)


def leaky_reference_config(workdir: str, data: Optional[str] = None,
                           epsilon: float = math.inf, cache_dir: Optional[str] = None,
                           **overrides) -> run.TrainConfig:
    """The reference's TrainConfig (module docstring); ``data`` = a TFRecord folder instead
    of LEAKY_PHANTOM, ``overrides`` = any other TrainConfig field (e.g. tf_seed)."""
    config = run.TrainConfig(
        workdir=workdir, data=data, phantom=LEAKY_PHANTOM, cache_dir=cache_dir,
        epsilon=epsilon, batch_size=32, critic_steps=4000, critic_steps_per_generator_step=1,
        base_filters=8, gan=LEAKY_GAN, summary_every=100, image_every=1000,
        checkpoint_every=500)
    return dataclasses.replace(config, **overrides)
