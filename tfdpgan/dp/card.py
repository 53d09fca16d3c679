"""The privacy card of a run: ``privacy.json`` (machine-readable) and ``PRIVACY.md`` (plain words).

What is protected: the release of the generator and of everything sampled from it. The critic
is the only network that reads training data; it is trained with DP-SGD (per-record clipping,
Gaussian noise, Poisson sampling), and the generator only ever sees the critic, so the
generator and its samples are post-processing of the DP critic. The critic and the training
checkpoints themselves are NOT covered by a release guarantee beyond the same (ε, δ) and must
not be shared together with the sampling seed (see pipeline.new_secret_seed).

Numbers always come from the accountant over the steps actually run.

  python -m tfdpgan.privacy --workdir=W            print W's card
  python -m tfdpgan.privacy --plan --num_records=N --batch_size=B --critic_steps=T --epsilon=E
"""
import json
import math
import os
import sys
from typing import Optional

from absl import app, flags

import tfdpgan
from tfdpgan.dp import accounting
from tfdpgan import atomic

PRIVACY_JSON = "privacy.json"
PRIVACY_MD = "PRIVACY.md"
PLURAL = {"patch": "patches", "patient": "patients"}


def make_plan(*, num_records: int, expected_batch_size: float, critic_steps: int,
              epsilon: float = math.inf, noise_multiplier: Optional[float] = None,
              delta: Optional[float] = None, accountant: str = "pld") -> dict:
    """The budget before training: sampling rate, δ, noise multiplier and the critic steps
    that will run. Training (tfdpgan.train) and ``--plan`` both use this function.

    Records are patches or patients (the privacy unit); ``expected_batch_size`` is the
    expected number of records per step, so q = expected_batch_size / num_records.
    ``epsilon`` finite and no ``noise_multiplier``: σ is calibrated for ``critic_steps``.
    ``noise_multiplier`` given: it is used, and a finite ``epsilon`` caps the steps.
    Neither (ε = ∞): not private, σ = 0.
    """
    if not 1 <= expected_batch_size <= num_records:
        raise ValueError(f"batch_size {expected_batch_size:g} must be in [1, {num_records}] "
                         f"(the number of training records)")
    q = expected_batch_size / num_records
    delta = delta if delta is not None else accounting.default_delta(num_records)
    private = math.isfinite(epsilon) or noise_multiplier is not None
    steps, sigma = int(critic_steps), 0.0
    if private:
        sigma = noise_multiplier
        if sigma is None:
            sigma = accounting.calibrate_noise(epsilon, q, steps, delta, accountant)
        if math.isfinite(epsilon):
            steps = min(steps, accounting.max_steps_within(epsilon, sigma, q, delta,
                                                           accountant))
    return {"sampling_rate": q, "delta": delta, "noise_multiplier": float(sigma),
            "critic_steps": int(steps), "num_records": int(num_records),
            "expected_batch_size": float(expected_batch_size)}


def _finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


def make_card(*, private: bool, noise_multiplier: float, l2_norm_clip: Optional[float],
              expected_batch_size: float, num_records: int, critic_steps: int, delta: float,
              accountant: str, target_epsilon: Optional[float], privacy_unit: str = "patch",
              patches_per_patient: Optional[int] = None, sampling: str = "poisson",
              compute_pld: bool = True, data_independent_preprocessing: bool = False) -> dict:
    """The privacy.json object for a run (keys fixed in DESIGN.md). ``l2_norm_clip`` None:
    not known (a plan; ε does not depend on C)."""
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
        "tfdpgan_version": tfdpgan.__version__,
    }


def render_markdown(card: dict) -> str:
    """PRIVACY.md: what the numbers in ``card`` mean, in plain words."""
    unit = card["privacy_unit"]
    lines = ["# Privacy card", ""]
    if not card["private"]:
        lines += [
            "**This run is NOT differentially private** (ε = ∞). The critic saw the training "
            "data without clipping or noise; the generator and its samples may reveal "
            "individual training patches or patients. Do not share them outside the "
            "institution that holds the data.", ""]
    else:
        eps, delta = card["epsilon"], card["delta"]
        clip = "not set" if card["l2_norm_clip"] is None else f"{card['l2_norm_clip']:g}"
        lines += [
            f"**Guarantee:** ({eps:.3g}, {delta:.3g})-differential privacy per **{unit}** "
            f"(add/remove one {unit}), for the release of the generator and of everything "
            f"sampled from it.", "",
            f"- Accountant used for the guarantee: `{card['accountant']}`; "
            f"RDP ε = {_fmt(card['epsilon_rdp'])}, PLD ε = {_fmt(card['epsilon_pld'])}.",
            f"- Target ε: {_fmt(card['target_epsilon'])}.",
            f"- Critic steps run: {card['critic_steps']}; sampling: {card['sampling']} with "
            f"rate q = {card['sampling_rate']:.4g} (expected batch "
            f"{card['expected_batch_size']:g} of {card['num_records']} {PLURAL[unit]}).",
            f"- Per-{unit} gradient clip C = {clip}; Gaussian noise std "
            f"= {card['noise_multiplier']:.4g} × C per step.",
            f"- δ = {delta:.3g} ≤ 1/(10 N) for N = {card['num_records']} {PLURAL[unit]}: "
            f"releasing one randomly chosen {unit} verbatim is already (0, 1/N)-DP, so a δ "
            "near 1/N would allow exactly that.", ""]
        k = card.get("patches_per_patient")
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
                f"whole patient is only ({_fmt(eps_k)}, {_fmt(delta_k)})-DP, which for "
                "large k is no meaningful protection. A patient-level guarantee needs "
                "patient-level DP (one record per patient), which this run did not use.", ""]
    lines += [
        "## What is protected",
        "- The generator (SavedModel) and every image+label pair sampled from it: they are "
        "post-processing of the DP-trained critic, which is the only network that read the "
        "training data.",
        "",
        "## What is not protected",
        "- The critic weights and the training checkpoints (they contain the secret sampling "
        "seed): keep them inside the institution.",
        "- The TensorBoard logs of the run (critic loss, Wasserstein estimate, per-example "
        "gradient-norm quantiles, clipped fraction) are computed from the private batches "
        "outside the DP mechanism: keep them internal too.",
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
    return "\n".join(lines) + "\n"


def _fmt(x):
    return "n/a" if x is None else f"{x:.3g}"


def write_card(workdir: str, card: dict):
    """Write privacy.json and PRIVACY.md into ``workdir`` (each atomically)."""
    atomic.write_json_atomic(os.path.join(workdir, PRIVACY_JSON), card)
    atomic.write_text_atomic(os.path.join(workdir, PRIVACY_MD), render_markdown(card))


def read_card(workdir: str) -> dict:
    path = os.path.join(workdir, PRIVACY_JSON)
    with open(path) as f:
        return json.load(f)


FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a program)."""
    flags.DEFINE_string("workdir", None, "Training run whose card to print.")
    flags.DEFINE_boolean("plan", False, "Answer 'what ε do I get' before training.")
    flags.DEFINE_string("data", None, "--plan: TFRecord folder to count the records of "
                        "(instead of --num_records).")
    flags.DEFINE_enum("privacy_unit", "patch", ["patch", "patient"], "--plan: the record.")
    flags.DEFINE_integer("patches_per_patient", None, "--plan: patches per patient (the "
                         "patch unit's group-privacy statement, or k of the patient unit).")
    flags.DEFINE_integer("num_records", None, "--plan: number of training records "
                         "(patches or patients).")
    flags.DEFINE_float("batch_size", None, "--plan: expected records per critic step.")
    flags.DEFINE_integer("critic_steps", None, "--plan: number of critic steps.")
    flags.DEFINE_float("noise_multiplier", None, "--plan: noise multiplier (or --epsilon).")
    flags.DEFINE_float("epsilon", None, "--plan: target ε to calibrate the noise for.")
    flags.DEFINE_float("delta", None, "--plan: δ (default min(1e-5, 1/(10 N))).")
    flags.DEFINE_enum("accountant", "pld", ["rdp", "pld"], "--plan: accountant.")


def count_records(rec_dir: str, unit: str) -> int:
    """Training records of a TFRecord data set: patches, or patients with patches."""
    path = os.path.join(rec_dir, "dataset.json")
    try:
        with open(path) as f:
            info = json.load(f)
        if unit == "patient":
            return int(info["splits"]["train"]["num_patients"])
        return int(info["counts"]["train"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the training counts ({e})") from None


def plan_card(*, num_records: int, batch_size: float, critic_steps: int,
              epsilon: Optional[float], noise_multiplier: Optional[float],
              delta: Optional[float], accountant: str, privacy_unit: str = "patch",
              patches_per_patient: Optional[int] = None,
              l2_norm_clip: Optional[float] = None) -> dict:
    """The card a training run with these settings would end with if it ran all its
    planned steps (what ``--plan`` prints); the same functions as tfdpgan.train."""
    eps = math.inf if epsilon is None else epsilon
    plan = make_plan(num_records=num_records, expected_batch_size=batch_size,
                     critic_steps=critic_steps, epsilon=eps,
                     noise_multiplier=noise_multiplier, delta=delta, accountant=accountant)
    return make_card(
        private=math.isfinite(eps) or noise_multiplier is not None,
        noise_multiplier=plan["noise_multiplier"], l2_norm_clip=l2_norm_clip,
        expected_batch_size=batch_size, num_records=num_records,
        critic_steps=plan["critic_steps"], delta=plan["delta"], accountant=accountant,
        target_epsilon=eps if math.isfinite(eps) else None, privacy_unit=privacy_unit,
        patches_per_patient=patches_per_patient)


def main(argv):
    del argv
    if FLAGS.plan:
        num = FLAGS.num_records
        if FLAGS.data:
            try:
                num = count_records(FLAGS.data, FLAGS.privacy_unit)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
        if not (num and FLAGS.batch_size and FLAGS.critic_steps):
            raise app.UsageError("--plan needs --num_records (or --data), --batch_size and "
                                 "--critic_steps")
        if (FLAGS.noise_multiplier is None) == (FLAGS.epsilon is None):
            raise app.UsageError("--plan needs exactly one of --noise_multiplier, --epsilon")
        try:
            card = plan_card(num_records=num, batch_size=FLAGS.batch_size,
                             critic_steps=FLAGS.critic_steps, epsilon=FLAGS.epsilon,
                             noise_multiplier=FLAGS.noise_multiplier, delta=FLAGS.delta,
                             accountant=FLAGS.accountant, privacy_unit=FLAGS.privacy_unit,
                             patches_per_patient=FLAGS.patches_per_patient)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"plan: per {card['privacy_unit']}, N = {num}, q = {card['sampling_rate']:.4g}, "
              f"{card['critic_steps']} critic steps, noise_multiplier "
              f"{card['noise_multiplier']:.4f}, delta {card['delta']:.3g}: epsilon "
              f"{_fmt(card['epsilon'])} ({card['accountant']}; RDP {_fmt(card['epsilon_rdp'])}"
              f", PLD {_fmt(card['epsilon_pld'])})")
        print(json.dumps(card, indent=2))
        return
    if not FLAGS.workdir:
        raise app.UsageError("give --workdir=W or --plan")
    try:
        print(render_markdown(read_card(FLAGS.workdir)), end="")
    except FileNotFoundError:
        print(f"error: {os.path.join(FLAGS.workdir, PRIVACY_JSON)}: not found", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
