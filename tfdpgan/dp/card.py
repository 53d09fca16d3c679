"""The privacy card of a run: ``privacy.json`` (machine-readable) and ``PRIVACY.md`` (plain words).

What is protected: the release of the generator and of everything sampled from it. The critic
is the only network that reads training data; it is trained with DP-SGD (per-record clipping,
Gaussian noise, Poisson sampling), and the generator only ever sees the critic, so the
generator and its samples are post-processing of the DP critic. The critic and the training
checkpoints themselves are NOT covered by a release guarantee beyond the same (ε, δ) and must
not be shared together with the sampling seed (see pipeline.new_secret_seed).

Numbers always come from the accountant over the steps actually run. The budget before
training is a `Plan` (make_plan), used by training and by ``python -m tfdpgan.privacy --plan``
alike; N, the number of records of the unit, has one definition (count_records).
"""
import dataclasses
import functools
import math
from typing import Optional

from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib

import tfdpgan
from tfdpgan import atomic, errors, workdir
from tfdpgan.dp import accounting

__all__ = ["UNITS", "PLURAL", "Plan", "make_plan", "count_records", "make_card", "plan_card",
           "records_needed", "noise_to_signal_floor", "LARGEST_COHORT", "render_markdown",
           "write_card", "tf_privacy_statement", "format_value"]

UNITS = ("patch", "patient")
LARGEST_COHORT = 10**7     # records_needed searches up to this many records
PLURAL = {"patch": "patches", "patient": "patients"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The budget of a run before training (make_plan)."""
    sampling_rate: float        # q = expected_batch_size / num_records
    delta: float
    noise_multiplier: float     # 0 when not private
    critic_steps: int           # the steps that will run (capped by a finite ε)
    num_records: int            # N of the privacy unit
    expected_batch_size: float  # expected records per step

    @property
    def noise_to_signal(self) -> float:
        """σ / B: the noise's standard deviation per gradient coordinate against the largest
        summed signal of a step (B expected records, each clipped to C; both in units of C).
        It sets how much a DP step can learn; it depends on the plan only, not on data."""
        return self.noise_multiplier / self.expected_batch_size

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """The plan stored in a run.json (which holds more keys)."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def make_plan(*, num_records: int, expected_batch_size: float, critic_steps: int,
              epsilon: float = math.inf, noise_multiplier: Optional[float] = None,
              delta: Optional[float] = None, accountant: str = "pld",
              both_given: bool = False) -> Plan:
    """The budget before training: sampling rate, δ, noise multiplier and the critic steps
    that will run. Training (tfdpgan.train) and ``--plan`` both use this function.

    Records are patches or patients (the privacy unit); ``expected_batch_size`` is the
    expected number of records per step, so q = expected_batch_size / num_records.
    ``epsilon`` finite and no ``noise_multiplier``: σ is calibrated for ``critic_steps``.
    ``noise_multiplier`` given: it is used, and a finite ``epsilon`` caps the steps.
    Neither (ε = ∞): not private, σ = 0.
    ``both_given`` (the user gave ε AND σ; only a command can tell a given ε from a default
    one): they must agree, i.e. σ must run all ``critic_steps`` within ε by ``accountant``;
    otherwise SettingsError (never a silent cap: see _refuse_disagreement).
    """
    if not 1 <= expected_batch_size <= num_records:
        raise errors.SettingsError(f"batch_size {expected_batch_size:g} must be in [1, {num_records}] "
                         f"(the number of training records)")
    q = expected_batch_size / num_records
    private = math.isfinite(epsilon) or noise_multiplier is not None
    _refuse_void_budget(num_records, epsilon, noise_multiplier, delta, private)
    delta = delta if delta is not None else accounting.default_delta(num_records)
    steps, sigma = int(critic_steps), 0.0
    if private:
        sigma = noise_multiplier
        if sigma is None:
            sigma = accounting.calibrate_noise(epsilon, q, steps, delta, accountant)
        if math.isfinite(epsilon):
            steps = min(steps, accounting.max_steps_within(epsilon, sigma, q, delta,
                                                           accountant))
            if both_given and steps < critic_steps:
                _refuse_disagreement(epsilon, sigma, q, int(critic_steps), steps, delta,
                                     accountant)
    return Plan(sampling_rate=q, delta=float(delta), noise_multiplier=float(sigma),
                critic_steps=int(steps), num_records=int(num_records),
                expected_batch_size=float(expected_batch_size))


def records_needed(noise_to_signal: float, *, expected_batch_size: float, critic_steps: int,
                   epsilon: float, accountant: str = "pld", delta: Optional[float] = None,
                   largest: int = LARGEST_COHORT) -> Optional[int]:
    """The planner's answer to "how many records (e.g. patients) would this budget need":
    the smallest N (within 1 %) at which ``critic_steps`` steps of ``expected_batch_size``
    expected records at ``epsilon`` have ``Plan.noise_to_signal`` <= ``noise_to_signal``,
    calibrated exactly as training would (make_plan; δ = ``delta`` or the default for N).
    σ falls as N grows (q = B / N), so a bisection on log N finds it; None when even
    ``largest`` records do not reach it (noise_to_signal_floor says how close). Uses no data."""
    def ratio(n):
        return _noise_to_signal(n, float(expected_batch_size), int(critic_steps),
                                float(epsilon), delta, accountant)
    low, high = int(math.ceil(expected_batch_size)), int(largest)
    if ratio(high) > noise_to_signal:
        return None
    if ratio(low) <= noise_to_signal:
        return low
    while high > low + 1 and high > 1.01 * low:     # ratio(low) > target >= ratio(high)
        mid = int(round(math.sqrt(low * high)))
        mid = min(max(mid, low + 1), high - 1)
        low, high = (low, mid) if ratio(mid) <= noise_to_signal else (mid, high)
    return high


def noise_to_signal_floor(*, expected_batch_size: float, critic_steps: int, epsilon: float,
                          accountant: str = "pld", delta: Optional[float] = None,
                          largest: int = LARGEST_COHORT) -> float:
    """σ/B with ``largest`` records: the least records_needed searches (σ has a floor for
    given steps and ε however small q gets). Shares records_needed's calibrations."""
    return _noise_to_signal(int(largest), float(expected_batch_size), int(critic_steps),
                            float(epsilon), delta, accountant)


@functools.lru_cache(maxsize=256)
def _noise_to_signal(num_records, expected_batch_size, critic_steps, epsilon, delta,
                     accountant):
    """Plan.noise_to_signal of make_plan (a pure function of numbers, so cached: each
    calibration costs about a second)."""
    return make_plan(num_records=num_records, expected_batch_size=expected_batch_size,
                     critic_steps=critic_steps, epsilon=epsilon, delta=delta,
                     accountant=accountant).noise_to_signal


def _finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


def make_card(*, private: bool, noise_multiplier: float, l2_norm_clip: Optional[float],
              expected_batch_size: float, num_records: int, critic_steps: int, delta: float,
              accountant: str, target_epsilon: Optional[float], privacy_unit: str = "patch",
              patches_per_patient: Optional[int] = None, sampling: str = "poisson",
              compute_pld: bool = True, data_independent_preprocessing: bool = False,
              public_prior: Optional[dict] = None) -> dict:
    """The privacy.json object for a run (keys fixed in DESIGN.md). ``l2_norm_clip`` None:
    not known (a plan; ε does not depend on C). ``public_prior``: where the networks'
    starting weights came from (a run on public data; no privacy cost, but stated)."""
    q = expected_batch_size / num_records
    eps_rdp = eps_pld = None
    if private:
        eps_rdp = accounting.compute_epsilon(noise_multiplier, q, critic_steps, delta, "rdp")
        if compute_pld:
            eps_pld = accounting.compute_epsilon(noise_multiplier, q, critic_steps, delta, "pld")
    spent = {"rdp": eps_rdp, "pld": eps_pld}[accountant] if private else None
    return {
        "private": bool(private),
        "privacy_unit": privacy_unit,
        "epsilon": _finite_or_none(spent) if private else None,
        "delta": float(delta) if private else None,
        "target_epsilon": _finite_or_none(target_epsilon),
        "accountant": accountant,
        "epsilon_rdp": _finite_or_none(eps_rdp),
        "epsilon_pld": _finite_or_none(eps_pld),
        "noise_multiplier": float(noise_multiplier) if private else 0.0,
        "l2_norm_clip": float(l2_norm_clip) if private and l2_norm_clip is not None else None,
        "sampling": sampling,
        "sampling_rate": float(q),
        "expected_batch_size": float(expected_batch_size),
        "num_records": int(num_records),
        "critic_steps": int(critic_steps),
        "patches_per_patient": patches_per_patient,
        "normalization_data_independent": bool(data_independent_preprocessing),
        "public_prior": public_prior,
        "tfdpgan_version": tfdpgan.__version__,
    }


def render_markdown(card: dict) -> str:
    """PRIVACY.md: what the numbers in ``card`` mean, in plain words."""
    lines = ["# Privacy card", ""]
    if not card["private"]:
        lines += [
            "**This run is NOT differentially private** (ε = ∞). The critic saw the training "
            "data without clipping or noise; the generator and its samples may reveal "
            "individual training patches or patients. Do not share them outside the "
            "institution that holds the data.", ""]
    else:
        lines += _guarantee_lines(card) + _patient_meaning_lines(card)
    lines += _prior_lines(card) + _scope_lines(card)
    if card["private"]:
        lines += ["", "## The same figure from TF Privacy", "",
                  "TF Privacy's own `compute_dp_sgd_privacy_statement` for this run's settings "
                  f"(records = {PLURAL[card['privacy_unit']]}; tfdpgan clips each record on "
                  "its own, i.e. no microbatching in TF Privacy's sense):", "", "```",
                  tf_privacy_statement(card).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def tf_privacy_statement(card: dict) -> str:
    """TF Privacy's compute_dp_sgd_privacy_statement for the card's N, expected batch, steps,
    σ, δ and accountant, so a reader can check ε with the tool they know. Its "Poisson
    sampling" line is the one that applies (tfdpgan samples Poisson)."""
    n, batch, steps = card["num_records"], card["expected_batch_size"], card["critic_steps"]
    epochs = steps * batch / n
    while epochs > 0 and math.ceil(epochs * n / batch) > steps:  # TF Privacy's step count
        epochs = math.nextafter(epochs, 0.0)
    accountant = compute_dp_sgd_privacy_lib.AccountantType[card["accountant"].upper()]
    return compute_dp_sgd_privacy_lib.compute_dp_sgd_privacy_statement(
        number_of_examples=n, batch_size=int(round(batch)), num_epochs=epochs,
        noise_multiplier=card["noise_multiplier"], delta=card["delta"],
        used_microbatching=False, accountant_type=accountant)


def _prior_lines(card: dict) -> list:
    prior = card.get("public_prior")
    if not prior:
        return []
    source = ("tfdpgan's built-in prior" if prior["workdir"] == "builtin"
              else f"`{prior['workdir']}`")
    return [
        f"**Public prior:** the generator and critic started from the weights of "
        f"{source}, trained on `{prior['data']}` "
        f"({'non-private' if not prior['prior_private'] else 'private'}, "
        f"{prior['prior_critic_steps']} critic steps"
        + (f"; weights SHA-256 `{prior['prior_sha256'][:16]}…`" if prior.get("prior_sha256")
           else "") + "). That data must be public (e.g. the "
        "built-in phantom): then the prior costs no privacy and the guarantee above covers "
        "the private data alone; tfdpgan refused it if it shared any source file with this "
        "run's data. Compare against the prior alone to see what the private data added."
        + (f" The critic's first {prior['critic_frozen_stages']} stage(s) kept the prior's "
           "weights throughout (not trained: constants independent of the private data); DP "
           "trained and noised the rest." if prior.get("critic_frozen_stages") else ""),
        ""]


def _guarantee_lines(card: dict) -> list:
    unit = card["privacy_unit"]
    eps, delta = card["epsilon"], card["delta"]
    clip = "not set" if card["l2_norm_clip"] is None else f"{card['l2_norm_clip']:g}"
    return [
        f"**Guarantee:** ({eps:.3g}, {delta:.3g})-differential privacy per **{unit}** "
        f"(add/remove one {unit}), for the release of the generator and of everything "
        f"sampled from it.", "",
        f"- Accountant used for the guarantee: `{card['accountant']}`; "
        f"RDP ε = {format_value(card['epsilon_rdp'])}, "
        f"PLD ε = {format_value(card['epsilon_pld'])}.",
        f"- Target ε: {format_value(card['target_epsilon'])}.",
        f"- Critic steps run: {card['critic_steps']}; sampling: {card['sampling']} with "
        f"rate q = {card['sampling_rate']:.4g} (expected batch "
        f"{card['expected_batch_size']:g} of {card['num_records']} {PLURAL[unit]}).",
        f"- Per-{unit} gradient clip C = {clip}; Gaussian noise std "
        f"= {card['noise_multiplier']:.4g} × C per step.",
        f"- δ = {delta:.3g} ≤ 1/(10 N) for N = {card['num_records']} {PLURAL[unit]}: "
        f"releasing one randomly chosen {unit} verbatim is already (0, 1/N)-DP, so a δ "
        "near 1/N would allow exactly that.", ""]


def _patient_meaning_lines(card: dict) -> list:
    unit, k = card["privacy_unit"], card.get("patches_per_patient")
    eps, delta = card["epsilon"], card["delta"]
    lines = []
    if unit == "patient":
        lines += [
            "**What this means for a patient:** the record is the patient. Each critic "
            "step includes every patient independently with probability q and then uses "
            f"up to {k} of that patient's patches; the gradient of the patient's combined "
            "loss is clipped to C as one record before the noise is added. Adding or "
            "removing a patient — all of their images and labels — changes what the "
            "released generator can be by at most the (ε, δ) above.", ""]
    if unit == "patch" and k:
        eps_k, delta_k = accounting.group_privacy_epsilon_delta(eps, delta, k)
        lines += [
            "**What this means for a patient:** the unit is a single 2-D patch, and each "
            f"patient contributed up to {k} patches. By group privacy the guarantee for a "
            f"whole patient is only ({format_value(eps_k)}, {format_value(delta_k)})-DP, which for "
            "large k is no meaningful protection. A patient-level guarantee needs "
            "patient-level DP (one record per patient), which this run did not use.", ""]
    return lines


def _scope_lines(card: dict) -> list:
    return [
        "## What is protected",
        "- The generator (SavedModel) and every image+label pair sampled from it: they are "
        "post-processing of the DP-trained critic, which is the only network that read the "
        "training data.",
        "",
        "## What is not protected",
        "- The critic weights and the training checkpoints (they contain the secret sampling "
        "seed): keep them inside the institution.",
        "- The TensorBoard events in release/ hold only DP-safe quantities. The critic loss, "
        "Wasserstein estimate, per-example gradient-norm quantiles and clipped fraction are "
        "computed from private batches outside the DP mechanism: they are written only with "
        "--log_private_stats, into private/, and stay internal.",
        "- Choices made by looking at the same data (hyperparameters, the choice of ε, "
        "repeated runs): each extra run on the same data spends its own ε.",
        ("- Intensity normalisation is data-independent (a fixed range), so it leaks nothing."
         if card.get("normalization_data_independent") else
         "- Intensity normalisation used each patient's own percentile (per-patient, not "
         "accounted for): the released images are in normalised units, and the per-patient "
         "scale factors in dataset.json are not part of the release."),
        "",
        f"tfdpgan {card['tfdpgan_version']}",
    ]


def format_value(x) -> str:
    """A privacy number for people: 3 significant digits, 'n/a' for None."""
    return "n/a" if x is None else f"{x:.3g}"


def write_card(run_dir: str, card: dict):
    """Write privacy.json and PRIVACY.md into the workdir ``run_dir`` (each atomically)."""
    atomic.write_json_atomic(workdir.path(run_dir, workdir.PRIVACY_JSON), card)
    atomic.write_text_atomic(workdir.path(run_dir, workdir.PRIVACY_MD), render_markdown(card))


def _refuse_void_budget(num_records, epsilon, noise_multiplier, delta, private):
    """Settings under which the (ε, δ) statement would be void or meaningless."""
    if not epsilon > 0:
        raise errors.SettingsError(f"epsilon must be positive (or inf), got {epsilon}")
    if private and noise_multiplier is not None and not noise_multiplier > 0:
        raise errors.SettingsError(f"noise_multiplier must be positive for a private run, "
                                   f"got {noise_multiplier}")
    if delta is not None and not 0 < delta < 1.0 / num_records:
        raise errors.SettingsError(
            f"delta = {delta:g} must be in (0, 1/N) = (0, {1.0 / num_records:.3g}) for N = "
            f"{num_records} records: publishing one random record verbatim is already "
            f"(0, 1/N)-DP, so such a δ guarantees nothing")


def _refuse_disagreement(epsilon, sigma, q, planned, allowed, delta, accountant):
    """--epsilon and --noise_multiplier both given and σ cannot run the planned steps within
    ε: one message with the ε σ would spend, the σ ε calibrates and the steps σ allows."""
    spent = accounting.compute_epsilon(sigma, q, planned, delta, accountant)
    calibrated = accounting.calibrate_noise(epsilon, q, planned, delta, accountant)
    raise errors.SettingsError(
        f"epsilon = {epsilon:g} and noise_multiplier = {sigma:g} disagree: σ = {sigma:g} "
        f"spends ε = {spent:.4g} over the {planned} planned critic steps ({accountant}, "
        f"q = {q:.4g}, δ = {delta:.3g}), more than ε = {epsilon:g}. Give --epsilon alone "
        f"(it calibrates σ = {calibrated:.4g} for these steps), or --critic_steps={allowed} "
        f"(the most σ = {sigma:g} allows within ε = {epsilon:g}), or --epsilon=inf with "
        f"--noise_multiplier (ε then follows from σ)")


def count_records(info: dict, unit: str) -> int:
    """N of the privacy unit from a data set's dataset.json object ``info``: its training
    patches (unit "patch") or its training patients (unit "patient"). The one definition
    used by training and by the planner."""
    if unit not in UNITS:
        raise errors.SettingsError(f"privacy_unit must be one of {UNITS}, got {unit!r}")
    try:
        if unit == "patient":
            return int(info["splits"]["train"]["num_patients"])
        return int(info["counts"]["train"])
    except (KeyError, TypeError, ValueError) as e:
        raise errors.InputDataError(f"dataset.json: cannot read the training counts "
                                    f"({e!r})") from None


def plan_card(*, num_records: int, batch_size: float, critic_steps: int,
              epsilon: Optional[float], noise_multiplier: Optional[float],
              delta: Optional[float], accountant: str, privacy_unit: str = "patch",
              patches_per_patient: Optional[int] = None,
              l2_norm_clip: Optional[float] = None, both_given: bool = False) -> dict:
    """The card a training run with these settings would end with if it ran all its
    planned steps (what ``--plan`` prints); the same functions as tfdpgan.train
    (``both_given``: see make_plan)."""
    eps = math.inf if epsilon is None else epsilon
    plan = make_plan(num_records=num_records, expected_batch_size=batch_size,
                     critic_steps=critic_steps, epsilon=eps,
                     noise_multiplier=noise_multiplier, delta=delta, accountant=accountant,
                     both_given=both_given)
    return make_card(
        private=math.isfinite(eps) or noise_multiplier is not None,
        noise_multiplier=plan.noise_multiplier, l2_norm_clip=l2_norm_clip,
        expected_batch_size=batch_size, num_records=num_records,
        critic_steps=plan.critic_steps, delta=plan.delta, accountant=accountant,
        target_epsilon=eps if math.isfinite(eps) else None, privacy_unit=privacy_unit,
        patches_per_patient=patches_per_patient)
