"""Leakage stage: how much a trained run reveals about its training patients (real, attacks,
distances, critic, audit, report). The command is ``python -m tfdpgan.audit``."""
