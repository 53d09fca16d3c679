"""--epsilon and --noise_multiplier both given must agree: σ has to run every planned critic
step within ε, or the run is refused with one message (never a silent step cap).

Independent numbers: TF Privacy's compute_dp_sgd_privacy (RDP over its own order grid, an
upper bound of tfdpgan's RDP, which uses a superset of the orders, and of its PLD)."""
import math
import os
import re
import subprocess
import sys

import pytest
from absl import flags
from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib

from tfdpgan import errors, train
from tfdpgan.dp import accounting
from tfdpgan.dp import card as privacy_card

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, BATCH, STEPS, DELTA, SIGMA = 1000, 50, 100, 1e-5, 1.0


def _tf_privacy_epsilon(sigma=SIGMA):
    """TF Privacy's RDP ε for STEPS Poisson steps at q = BATCH / N (epochs * N / BATCH steps)."""
    eps, _ = compute_dp_sgd_privacy_lib.compute_dp_sgd_privacy(
        n=N, batch_size=BATCH, noise_multiplier=sigma, epochs=STEPS * BATCH / N, delta=DELTA)
    return eps


def _plan(epsilon, accountant, both_given=True, sigma=SIGMA):
    return privacy_card.make_plan(num_records=N, expected_batch_size=BATCH, critic_steps=STEPS,
                                  epsilon=epsilon, noise_multiplier=sigma, delta=DELTA,
                                  accountant=accountant, both_given=both_given)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_sigma_that_fits_epsilon_runs_every_step(accountant):
    eps_tfp = _tf_privacy_epsilon()
    plan = _plan(eps_tfp * (1 + 1e-6), accountant)   # TF Privacy's bound >= tfdpgan's
    assert plan.critic_steps == STEPS and plan.noise_multiplier == SIGMA


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_sigma_that_overspends_epsilon_is_refused_with_one_message(accountant):
    eps_tfp = _tf_privacy_epsilon()
    target = eps_tfp / 2
    with pytest.raises(errors.SettingsError, match="disagree") as info:
        _plan(target, accountant)
    message = str(info.value)
    assert f"over the {STEPS} planned critic steps" in message
    spent = float(re.search(r"spends ε = ([0-9.]+)", message).group(1))
    assert target < spent <= eps_tfp * 1.001 and spent > 0.7 * eps_tfp
    sigma_fit = float(re.search(r"calibrates σ = ([0-9.]+)", message).group(1))
    assert sigma_fit > SIGMA and _tf_privacy_epsilon(sigma_fit) > target * 0.9
    allowed = int(re.search(r"--critic_steps=(\d+)", message).group(1))
    q = BATCH / N
    assert 0 < allowed < STEPS
    assert accounting.compute_epsilon(SIGMA, q, allowed, DELTA, accountant) <= target < \
        accounting.compute_epsilon(SIGMA, q, allowed + 1, DELTA, accountant)


def test_the_planner_applies_the_same_rule():
    args = dict(num_records=N, batch_size=BATCH, critic_steps=STEPS,
                epsilon=_tf_privacy_epsilon() / 2, noise_multiplier=SIGMA, delta=DELTA,
                accountant="rdp")
    assert privacy_card.plan_card(**args)["critic_steps"] < STEPS
    with pytest.raises(errors.SettingsError, match="disagree"):
        privacy_card.plan_card(**args, both_given=True)


def test_without_both_given_a_default_epsilon_still_caps_the_steps():
    eps_tfp = _tf_privacy_epsilon()
    plan = _plan(eps_tfp / 2, "rdp", both_given=False)
    assert 0 < plan.critic_steps < STEPS and plan.noise_multiplier == SIGMA


def test_infinite_epsilon_with_sigma_lets_epsilon_follow():
    plan = _plan(math.inf, "pld")
    assert plan.critic_steps == STEPS and plan.noise_multiplier == SIGMA


def _parse(argv):
    fv = flags.FlagValues()
    train.define_flags(fv)
    fv(["train", *argv])
    return fv


def test_the_command_judges_given_from_default(tmp_path):
    assert train.config_from_flags(_parse(["--epsilon=2", "--noise_multiplier=1"])) \
        .epsilon_and_noise_given
    assert not train.config_from_flags(_parse(["--epsilon=2"])).epsilon_and_noise_given
    alone = _parse(["--noise_multiplier=1"])
    assert not train.config_from_flags(alone).epsilon_and_noise_given
    # flags.txt of a σ-only run leaves the default ε out, so resuming with it stays σ-only
    text = train.run_flags_text(alone, str(tmp_path / "w"))
    assert "--epsilon" not in text and "--noise_multiplier=1.0" in text
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(text)
    assert not train.config_from_flags(_parse([f"--flagfile={flagfile}"])) \
        .epsilon_and_noise_given
    # an ε from a flagfile is given, as much as one on the command line
    flagfile.write_text("--epsilon=2\n")
    both = _parse([f"--flagfile={flagfile}", "--noise_multiplier=1"])
    assert train.config_from_flags(both).epsilon_and_noise_given
    assert "--epsilon=2.0" in train.run_flags_text(both, "w")


@pytest.mark.slow
def test_command_line_refuses_a_disagreeing_pair(patch_records, tmp_path):
    workdir = str(tmp_path / "w")
    done = subprocess.run([sys.executable, "-m", "tfdpgan.train", f"--data={patch_records}",
                           f"--workdir={workdir}", "--critic_steps=200", "--batch_size=20",
                           "--epsilon=1", "--noise_multiplier=0.5", "--init_from="],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    printed = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(printed) == 1 and "Traceback" not in done.stderr
    assert "disagree" in printed[0] and "200 planned critic steps" in printed[0]
    assert not os.path.exists(workdir)
