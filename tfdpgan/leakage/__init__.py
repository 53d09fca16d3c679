"""Leakage stage: how much a trained run reveals about its training patients (real, attacks,
distances, critic, canaries, exposure, reference, audit, report). The command is
``python -m tfdpgan.audit``; benchmarks/audit.py shows it catching a leak (the leaky reference
and planted canaries)."""
