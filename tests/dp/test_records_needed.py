"""The planner's "how many records would this budget need" (card.records_needed and
``python -m tfdpgan.privacy --plan --noise_to_signal``): checked against the plans training
would make on both sides of the answer (make_plan's σ is tested against independent
accountants in test_accounting.py)."""
import math
import re
import subprocess
import sys

import pytest

from tfdpgan.dp import card as privacy_card


def _ratio(n, batch, steps, epsilon=3.0):
    return privacy_card.make_plan(num_records=n, expected_batch_size=batch, critic_steps=steps,
                                  epsilon=epsilon, accountant="rdp").noise_to_signal


def test_noise_to_signal_is_sigma_over_the_expected_batch():
    plan = privacy_card.make_plan(num_records=1000, expected_batch_size=20, critic_steps=100,
                                  epsilon=3.0, accountant="rdp")
    assert plan.noise_to_signal == pytest.approx(plan.noise_multiplier / 20)
    assert privacy_card.make_plan(num_records=1000, expected_batch_size=20,
                                  critic_steps=100).noise_to_signal == 0.0   # ε = ∞


def test_records_needed_is_the_smallest_cohort_within_one_percent():
    batch, steps = 16, 200
    target = _ratio(2000, batch, steps)          # the noise/signal of a 2000-record cohort
    n = privacy_card.records_needed(target, expected_batch_size=batch, critic_steps=steps,
                                    epsilon=3.0, accountant="rdp")
    assert _ratio(n, batch, steps) <= target
    assert _ratio(int(n * 0.97), batch, steps) > target
    assert n == pytest.approx(2000, rel=0.02)


def test_records_needed_says_so_when_no_cohort_is_large_enough():
    kwargs = dict(expected_batch_size=16, critic_steps=200, epsilon=3.0, accountant="rdp")
    assert privacy_card.records_needed(1e-6, largest=5000, **kwargs) is None
    # a target every cohort meets: the batch itself
    assert privacy_card.records_needed(math.inf, **kwargs) == 16


def test_the_floor_is_where_records_needed_stops_answering():
    kwargs = dict(expected_batch_size=16, critic_steps=200, epsilon=3.0, accountant="rdp",
                  largest=5000)
    floor = privacy_card.noise_to_signal_floor(**kwargs)
    assert floor == pytest.approx(_ratio(5000, 16, 200), rel=1e-9)
    assert privacy_card.records_needed(floor * 0.999, **kwargs) is None
    assert privacy_card.records_needed(floor * 1.001, **kwargs) <= 5000


def _plan(*flags):
    return subprocess.run(
        [sys.executable, "-m", "tfdpgan.privacy", "--plan", "--num_records=1000",
         "--batch_size=16", "--critic_steps=200", "--accountant=rdp", *flags],
        capture_output=True, text=True, timeout=300)


def test_plan_command_prints_noise_to_signal_and_the_records_needed():
    target = _ratio(3000, 16, 200)
    out = _plan("--epsilon=3", "--privacy_unit=patient", f"--noise_to_signal={target}")
    assert out.returncode == 0, out.stderr
    shown = float(re.search(r"sigma/B = ([0-9.e-]+)", out.stdout).group(1))
    assert shown == pytest.approx(_ratio(1000, 16, 200), rel=1e-3)
    n = int(re.search(r"N >= (\d+) patients", out.stdout).group(1))
    assert n == privacy_card.records_needed(target, expected_batch_size=16, critic_steps=200,
                                            epsilon=3.0, accountant="rdp")
    assert n == pytest.approx(3000, rel=0.02)


def test_plan_command_names_the_floor_when_no_cohort_reaches_the_target():
    out = _plan("--epsilon=3", "--noise_to_signal=1e-6")
    assert out.returncode == 0, out.stderr
    floor = float(re.search(r"stays above ([0-9.e-]+)", out.stdout).group(1))
    assert floor == pytest.approx(_ratio(privacy_card.LARGEST_COHORT, 16, 200), rel=1e-3)
    assert "raise --batch_size" in out.stdout


def test_plan_command_refuses_a_target_without_epsilon():
    out = _plan("--noise_multiplier=1.0", "--noise_to_signal=0.01")
    assert out.returncode != 0
    assert "--noise_to_signal needs --epsilon" in out.stderr
    assert "plan:" not in out.stdout                       # refused before any output
