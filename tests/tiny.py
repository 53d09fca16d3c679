"""Settings shared by tests: a tiny training run and the privacy card's keys."""
from tfdpgan.gan import wgan

# A tiny run: seconds on a CPU, still every code path of training.
TINY = dict(batch_size=20, critic_steps=30, critic_steps_per_generator_step=2, base_filters=4,
            summary_every=10, image_every=15, checkpoint_every=10, num_samples_png=4,
            gan=wgan.WGANConfig(latent_dim=8), tf_seed=0)

CARD_KEYS = {"private", "privacy_unit", "epsilon", "delta", "target_epsilon", "accountant",
             "epsilon_rdp", "epsilon_pld", "noise_multiplier", "l2_norm_clip", "sampling",
             "sampling_rate", "expected_batch_size", "num_records", "critic_steps",
             "patches_per_patient", "tfdpgan_version"}


def parse_train_flags(monkeypatch, *argv):
    """The TrainConfig that ``python -m tfdpgan.train ARGV`` would run, parsed on a fresh
    FlagValues from the repository root (flagfile paths are relative to it)."""
    import os
    from absl import flags as absl_flags
    from tfdpgan import train as train_command
    fv = absl_flags.FlagValues()
    train_command.define_flags(fv)
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fv(["train", *argv])
    return train_command.config_from_flags(fv)
