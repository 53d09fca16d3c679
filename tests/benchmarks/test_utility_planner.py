"""benchmarks/utility.py's cohort answer: the smallest patient cohort whose per-patient noise
matches a target noise/signal, checked against the planner on both sides of the answer."""
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import utility  # noqa: E402
from tfdpgan.dp import card as privacy_card  # noqa: E402


def _ratio(n, batch, steps):
    return privacy_card.make_plan(num_records=n, expected_batch_size=batch, critic_steps=steps,
                                  epsilon=3.0, accountant="rdp").noise_multiplier / batch


def test_cohort_needed_is_the_smallest_cohort_within_one_percent():
    batch, steps = 16, 200
    target = _ratio(2000, batch, steps)          # the noise/signal of a 2000-patient cohort
    n = utility.cohort_needed(target, batch, steps, 3.0, "rdp")
    assert _ratio(n, batch, steps) <= target
    assert _ratio(int(n * 0.97), batch, steps) > target
    assert n == pytest.approx(2000, rel=0.02)


def test_cohort_needed_says_so_when_no_cohort_is_large_enough():
    assert utility.cohort_needed(1e-6, 16, 200, 3.0, "rdp", largest=5000) is None
    # a target every cohort meets: the batch itself
    assert utility.cohort_needed(math.inf, 16, 200, 3.0, "rdp") == 16
