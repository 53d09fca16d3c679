"""Tests for tfdpgan.accounting against independent numbers.

References computed here, not by the module: the exact epsilon of composed
Gaussian mechanisms (Balle and Wang 2018), integer-order RDP of the
Poisson-subsampled Gaussian (Mironov, Talwar and Zhang 2019) with the
classic and improved RDP -> (epsilon, delta) conversions, the published
MNIST DP-SGD table of TF Privacy, and TF Privacy 0.9.0's own functions.
"""
import dataclasses
import importlib.util
import json
import math
import pathlib
import re

import numpy as np
import pytest
from scipy import optimize, special

from tfdpgan.dp import accounting as acc

DELTA = 1e-5


# Independent references --------------------------------------------------

def exact_gaussian_epsilon(sigma, steps, delta):
    """Exact epsilon of `steps` Gaussian mechanisms (sensitivity 1).

    Their composition is one Gaussian with sigma / sqrt(steps); its privacy
    profile (Balle and Wang 2018, Thm. 8) is
    delta(eps) = Phi(-eps s + 1/(2s)) - e^eps Phi(-eps s - 1/(2s)).
    """
    s = sigma / math.sqrt(steps)

    def excess(eps):
        return (special.ndtr(-eps * s + 1 / (2 * s))
                - math.exp(eps + special.log_ndtr(-eps * s - 1 / (2 * s)))
                - delta)

    return optimize.brentq(excess, 0.0, 200.0, xtol=1e-12)


def subsampled_gaussian_rdp(q, sigma, alpha):
    """RDP at integer order alpha >= 2 of one Poisson-subsampled Gaussian.

    A_alpha = sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 s^2)),
    RDP = log(A_alpha) / (alpha - 1)   (Mironov, Talwar, Zhang 2019), q < 1.
    """
    k = np.arange(alpha + 1)
    log_terms = (special.gammaln(alpha + 1) - special.gammaln(k + 1)
                 - special.gammaln(alpha - k + 1) + (alpha - k) * np.log1p(-q)
                 + k * np.log(q) + (k * k - k) / (2 * sigma ** 2))
    return special.logsumexp(log_terms) / (alpha - 1)


def classic_conversion(rdp_by_order, delta):
    """min over orders of RDP + log(1/delta) / (alpha - 1) (Mironov 2017)."""
    return min(r + math.log(1 / delta) / (a - 1)
               for a, r in rdp_by_order.items())


def improved_conversion(rdp_by_order, delta):
    """Canonne, Kamath, Steinke 2020, Prop. 12."""
    return min(r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
               for a, r in rdp_by_order.items())


# default_delta ------------------------------------------------------------

@pytest.mark.parametrize("n, expected", [(1, 1e-5), (10_000, 1e-5),
                                         (1_000_000, 1e-7)])
def test_default_delta(n, expected):
    assert acc.default_delta(n) == pytest.approx(expected)
    assert acc.default_delta(n) <= 0.1 / n


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_default_delta_rejects_bad_counts(n):
    with pytest.raises(ValueError):
        acc.default_delta(n)


# Closed form: no subsampling --------------------------------------------

@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (0.8, 10), (2.0, 100),
                                          (5.0, 1000), (20.0, 100)])
def test_unsubsampled_gaussian_matches_exact_epsilon(sigma, steps):
    exact = exact_gaussian_epsilon(sigma, steps, DELTA)
    pld = acc.compute_epsilon(sigma, 1.0, steps, DELTA, "pld")
    rdp = acc.compute_epsilon(sigma, 1.0, steps, DELTA, "rdp")
    assert exact * (1 - 1e-9) <= pld <= exact * 1.002
    # RDP of T Gaussians is T alpha / (2 sigma^2); the classic conversion,
    # minimised over all real alpha > 1, is rho + 2 sqrt(rho log(1/delta)).
    rho = steps / (2 * sigma ** 2)
    classic = rho + 2 * math.sqrt(rho * math.log(1 / DELTA))
    assert exact <= rdp <= classic


# Published table ------------------------------------------------------------

# tensorflow/privacy, tutorials/README.md, "Select Parameters" (commit
# d435fcbf9af0): MNIST, N = 60000, batch 256, delta = 1e-5, RDP accountant
# of the time, i.e. the classic conversion. The tutorial counted
# epochs * N // batch steps.
MNIST_TABLE = [(1.3, 15, 1.19), (1.1, 60, 3.01), (0.7, 45, 7.10)]
MNIST_Q = 256 / 60000


@pytest.mark.parametrize("sigma, epochs, published", MNIST_TABLE)
def test_published_mnist_table(sigma, epochs, published):
    steps = epochs * 60000 // 256
    rdp_curve = {a: steps * subsampled_gaussian_rdp(MNIST_Q, sigma, a)
                 for a in range(2, 64)}
    # The independent RDP reproduces the published figures ...
    assert classic_conversion(rdp_curve, DELTA) == pytest.approx(
        published, rel=0.01)
    # ... and the module matches it under today's tighter conversion, on a
    # finer order grid (so never above, and close).
    improved = improved_conversion(rdp_curve, DELTA)
    rdp = acc.compute_epsilon(sigma, MNIST_Q, steps, DELTA, "rdp")
    assert improved * 0.98 <= rdp <= improved * (1 + 1e-9)
    assert rdp < published
    assert acc.compute_epsilon(sigma, MNIST_Q, steps, DELTA, "pld") < rdp


def _tf_privacy_lib():
    """TF Privacy 0.9.0's compute_dp_sgd_privacy_lib, loaded from its file.

    Importing it as tensorflow_privacy.* would import TensorFlow (seconds);
    the file itself needs only dp_accounting, absl and scipy.
    """
    spec = importlib.util.find_spec("tensorflow_privacy")
    if spec is None:
        pytest.skip("tensorflow_privacy is not installed")
    path = (pathlib.Path(spec.submodule_search_locations[0]) / "privacy"
            / "analysis" / "compute_dp_sgd_privacy_lib.py")
    module_spec = importlib.util.spec_from_file_location(
        "_tfp_compute_dp_sgd_privacy_lib", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_agrees_with_tf_privacy():
    lib = _tf_privacy_lib()
    steps = math.ceil(60 * 60000 / 256)  # TF Privacy's step count
    tfp_rdp, _ = lib.compute_dp_sgd_privacy(60000, 256, 1.1, 60, DELTA)
    rdp = acc.compute_epsilon(1.1, MNIST_Q, steps, DELTA, "rdp")
    assert tfp_rdp * 0.99 <= rdp <= tfp_rdp * (1 + 1e-9)  # superset orders

    statement = lib.compute_dp_sgd_privacy_statement(
        60000, 256, 60, 1.1, DELTA, used_microbatching=False,
        accountant_type=lib.AccountantType.PLD)
    tfp_pld = float(re.search(
        r"Epsilon assuming Poisson sampling \(\*\):\s+([0-9.]+)",
        statement).group(1))
    pld = acc.compute_epsilon(1.1, MNIST_Q, steps, DELTA, "pld")
    assert pld == pytest.approx(tfp_pld, abs=2e-3)


# Accountants against each other, monotonicity ------------------------------

@pytest.mark.parametrize("sigma, q, steps", [
    (1.1, MNIST_Q, 14062), (0.7, 0.01, 1000), (2.0, 0.05, 500),
    (5.0, 1.0, 10), (1.0, 0.001, 1000), (3.0, 0.1, 50), (16.0, 0.01, 10000)])
def test_pld_not_above_rdp(sigma, q, steps):
    assert (acc.compute_epsilon(sigma, q, steps, DELTA, "pld")
            <= acc.compute_epsilon(sigma, q, steps, DELTA, "rdp"))


@pytest.mark.parametrize("accountant", acc.ACCOUNTANTS)
def test_epsilon_is_monotone(accountant):
    def eps(sigma=1.0, q=0.01, steps=1000, delta=DELTA):
        return acc.compute_epsilon(sigma, q, steps, delta, accountant)

    by_sigma = [eps(sigma=s) for s in (0.6, 0.8, 1.0, 1.5, 3.0)]
    by_q = [eps(q=q) for q in (0.001, 0.005, 0.01, 0.05, 0.2)]
    by_steps = [eps(steps=n) for n in (1, 10, 100, 1000, 5000)]
    by_delta = [eps(delta=d) for d in (1e-8, 1e-6, 1e-4, 1e-2)]
    assert by_sigma == sorted(by_sigma, reverse=True)
    assert by_q == sorted(by_q)
    assert by_steps == sorted(by_steps)
    assert by_delta == sorted(by_delta, reverse=True)


@pytest.mark.parametrize("accountant", acc.ACCOUNTANTS)
def test_special_values(accountant):
    assert acc.compute_epsilon(1.0, 0.01, 0, DELTA, accountant) == 0.0
    assert acc.compute_epsilon(0.0, 0.01, 0, DELTA, accountant) == 0.0
    assert acc.compute_epsilon(0.0, 0.01, 5, DELTA, accountant) == math.inf


@pytest.mark.parametrize("kwargs", [
    dict(noise_multiplier=-1.0), dict(noise_multiplier=math.nan),
    dict(noise_multiplier=math.inf), dict(sampling_rate=0.0),
    dict(sampling_rate=1.5), dict(sampling_rate=math.nan),
    dict(steps=-1), dict(steps=2.0), dict(steps=True), dict(delta=0.0),
    dict(delta=1.0), dict(accountant="moments")])
def test_compute_epsilon_rejects_bad_arguments(kwargs):
    args = dict(noise_multiplier=1.0, sampling_rate=0.01, steps=10,
                delta=DELTA, accountant="rdp")
    args.update(kwargs)
    with pytest.raises(ValueError):
        acc.compute_epsilon(**args)


# calibrate_noise -------------------------------------------------------------

@pytest.mark.parametrize("accountant", acc.ACCOUNTANTS)
def test_calibrate_noise_is_smallest_sufficient(accountant):
    q, steps, target, tol = 0.01, 10_000, 3.0, 1e-3
    sigma = acc.calibrate_noise(target, q, steps, DELTA, accountant, tol=tol)
    assert acc.compute_epsilon(sigma, q, steps, DELTA, accountant) <= target
    assert acc.compute_epsilon(sigma / (1 + 2 * tol), q, steps, DELTA,
                               accountant) > target


def test_calibrate_noise_pld_needs_less_noise_than_rdp():
    args = (2.0, 0.02, 2000, DELTA)
    assert (acc.calibrate_noise(*args, accountant="pld")
            < acc.calibrate_noise(*args, accountant="rdp"))


@pytest.mark.parametrize("target, steps", [(1.0, 1), (4.0, 100)])
def test_calibrate_noise_against_exact_gaussian(target, steps):
    """Without subsampling the smallest sigma is known exactly."""
    exact = optimize.brentq(
        lambda s: exact_gaussian_epsilon(s, steps, DELTA) - target,
        1.0, 1000.0, xtol=1e-12)
    sigma = acc.calibrate_noise(target, 1.0, steps, DELTA, "pld")
    # PLD never understates epsilon, so sigma cannot undercut the exact one.
    assert exact <= sigma <= exact * 1.005


def test_calibrate_noise_trivial_cases():
    assert acc.calibrate_noise(math.inf, 0.01, 1000, DELTA) == 0.0
    assert acc.calibrate_noise(1.0, 0.01, 0, DELTA) == 0.0


@pytest.mark.parametrize("kwargs", [
    dict(target_epsilon=0.0), dict(target_epsilon=-1.0),
    dict(target_epsilon=math.nan), dict(tol=0.0), dict(tol=1.0),
    dict(sampling_rate=0.0), dict(steps=-5), dict(delta=2.0),
    dict(accountant="gdp")])
def test_calibrate_noise_rejects_bad_arguments(kwargs):
    args = dict(target_epsilon=1.0, sampling_rate=0.01, steps=100,
                delta=DELTA, accountant="rdp")
    args.update(kwargs)
    with pytest.raises(ValueError):
        acc.calibrate_noise(**args)


# max_steps_within ------------------------------------------------------------

@pytest.mark.parametrize("accountant", acc.ACCOUNTANTS)
def test_max_steps_within_boundary(accountant):
    budget, sigma, q = 3.0, 1.1, 0.01
    n = acc.max_steps_within(budget, sigma, q, DELTA, accountant)
    assert n > 0
    assert acc.compute_epsilon(sigma, q, n, DELTA, accountant) <= budget
    assert acc.compute_epsilon(sigma, q, n + 1, DELTA, accountant) > budget


@pytest.mark.parametrize("accountant", acc.ACCOUNTANTS)
def test_max_steps_within_small_noise_slow_growth(accountant):
    """σ 0.59 at q = 2.56e-4 (a cohort of 10^6 planned for ε = 3 in 3000 steps): ε is 2.4
    after one step and reaches 3 only after ~3000; the bracket search must still end."""
    budget, sigma, q, delta = 3.0, 0.59, 2.56e-4, 1e-7
    n = acc.max_steps_within(budget, sigma, q, delta, accountant)
    assert n > 100
    assert acc.compute_epsilon(sigma, q, n, delta, accountant) <= budget
    assert acc.compute_epsilon(sigma, q, n + 1, delta, accountant) > budget


def test_max_steps_within_edge_cases():
    assert acc.max_steps_within(5.0, 0.0, 0.01, DELTA, "rdp") == 0
    assert acc.max_steps_within(0.0, 1.0, 0.01, DELTA, "rdp") == 0
    one_step = acc.compute_epsilon(1.0, 0.5, 1, DELTA, "rdp")
    assert acc.max_steps_within(one_step * 0.999, 1.0, 0.5, DELTA,
                                "rdp") == 0
    assert acc.max_steps_within(one_step, 1.0, 0.5, DELTA, "rdp") >= 1
    assert (acc.max_steps_within(2.0, 1.0, 0.02, DELTA, "pld")
            >= acc.max_steps_within(2.0, 1.0, 0.02, DELTA, "rdp"))
    with pytest.raises(ValueError):
        acc.max_steps_within(math.inf, 1.0, 0.01, DELTA, "rdp")
    with pytest.raises(ValueError):
        acc.max_steps_within(-1.0, 1.0, 0.01, DELTA, "rdp")
    with pytest.raises(ValueError):
        acc.max_steps_within(1.0, 1.0, 0.01, DELTA, "exact")


# group privacy ---------------------------------------------------------------

def test_group_privacy_values():
    assert acc.group_privacy_epsilon_delta(0.7, 1e-6, 1) == pytest.approx(
        (0.7, 1e-6))
    assert acc.group_privacy_epsilon_delta(1.0, 1e-6, 2) == pytest.approx(
        (2.0, 2 * math.e * 1e-6))
    assert acc.group_privacy_epsilon_delta(0.5, 1e-7, 10) == pytest.approx(
        (5.0, 10 * math.exp(4.5) * 1e-7))
    assert acc.group_privacy_epsilon_delta(2.0, 0.0, 50) == (100.0, 0.0)
    assert acc.group_privacy_epsilon_delta(8.0, 1e-5, 200)[1] == math.inf


@pytest.mark.parametrize("eps, delta, k", [(0.3, 1e-6, 5), (2.0, 1e-8, 3)])
def test_group_privacy_bounds_the_hop_by_hop_chain(eps, delta, k):
    """k hops of (eps, delta) give delta * sum_{i<k} e^(i eps) exactly."""
    chain = delta * sum(math.exp(i * eps) for i in range(k))
    assert acc.group_privacy_epsilon_delta(eps, delta, k)[1] >= chain


@pytest.mark.parametrize("eps, delta, k", [(-0.1, 1e-6, 2), (1.0, -1e-6, 2),
                                           (1.0, 1.5, 2), (1.0, 1e-6, 0),
                                           (1.0, 1e-6, 1.5)])
def test_group_privacy_rejects_bad_arguments(eps, delta, k):
    with pytest.raises(ValueError):
        acc.group_privacy_epsilon_delta(eps, delta, k)


# PrivacyLedger ---------------------------------------------------------------

def test_ledger_advances_immutably():
    ledger = acc.PrivacyLedger(np.float32(1.1), 0.01, DELTA)  # as from TF
    later = ledger.advance(250).advance()
    assert (ledger.steps, later.steps) == (0, 251)
    assert ledger.epsilon() == 0.0
    assert later.epsilon() == acc.compute_epsilon(
        later.noise_multiplier, 0.01, 251, DELTA, later.accountant)
    assert later.epsilon("pld") <= later.epsilon("rdp")
    with pytest.raises(dataclasses.FrozenInstanceError):
        later.steps = 0
    record = json.loads(json.dumps(dataclasses.asdict(later)))
    assert acc.PrivacyLedger(**record) == later


@pytest.mark.parametrize("kwargs", [
    dict(noise_multiplier=-1.0), dict(sampling_rate=0.0), dict(delta=0.0),
    dict(steps=-1), dict(accountant="rdp2")])
def test_ledger_rejects_bad_fields(kwargs):
    fields = dict(noise_multiplier=1.0, sampling_rate=0.01, delta=DELTA)
    fields.update(kwargs)
    with pytest.raises(ValueError):
        acc.PrivacyLedger(**fields)


def test_ledger_rejects_negative_advance():
    with pytest.raises(ValueError):
        acc.PrivacyLedger(1.0, 0.01, DELTA).advance(-1)
