"""Print a run's privacy card, or plan a budget before training.

  python -m tfdpgan.privacy --workdir=W            print W's card (W/release/PRIVACY.md;
                                                   an old flat workdir's W/privacy.json too)
  python -m tfdpgan.privacy --plan --num_records=N --batch_size=B --critic_steps=T --epsilon=E
  python -m tfdpgan.privacy --plan --data=REC --privacy_unit=patient --batch_size=16 ...
  python -m tfdpgan.privacy --plan ... --epsilon=3 --noise_to_signal=0.009
                                                   and how many records would reach that σ/B

The plan uses the same functions as training (tfdpgan.dp.card.make_plan, count_records).
"""
import json

from absl import app, flags

from tfdpgan import cli, workdir
from tfdpgan.data import records
from tfdpgan.dp import card as privacy_card

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("workdir", None, "Training run whose card to print.")
    fdef.DEFINE_boolean("plan", False, "Answer 'what ε do I get' before training.")
    fdef.DEFINE_string("data", None, "--plan: TFRecord folder to count the records of "
                       "(instead of --num_records).")
    fdef.DEFINE_enum("privacy_unit", "patch", list(privacy_card.UNITS), "--plan: the record.")
    fdef.DEFINE_integer("patches_per_patient", None, "--plan: patches per patient (the "
                        "patch unit's group-privacy statement, or k of the patient unit).")
    fdef.DEFINE_integer("num_records", None, "--plan: number of training records "
                        "(patches or patients).")
    fdef.DEFINE_float("batch_size", None, "--plan: expected records per critic step.")
    fdef.DEFINE_integer("critic_steps", None, "--plan: number of critic steps.")
    fdef.DEFINE_float("noise_multiplier", None, "--plan: noise multiplier (or --epsilon).")
    fdef.DEFINE_float("epsilon", None, "--plan: target ε to calibrate the noise for.")
    fdef.DEFINE_float("delta", None, "--plan: δ (default min(1e-5, 1/(10 N))).")
    fdef.DEFINE_enum("accountant", "pld", ["rdp", "pld"], "--plan: accountant.")
    fdef.DEFINE_float("noise_to_signal", None, "--plan with --epsilon: also print the number "
                      "of records (e.g. patients) at which this batch size, step count and ε "
                      "would have noise/signal σ/B at most this. For scale: the demo's "
                      "per-patch ε = 3 runs at 0.0090 (README, issue #11).")


def plan(fv: flags.FlagValues = FLAGS):
    num = fv.num_records
    if fv.data:
        num = privacy_card.count_records(records.read_dataset_json(fv.data), fv.privacy_unit)
    if not (num and fv.batch_size and fv.critic_steps):
        raise app.UsageError("--plan needs --num_records (or --data), --batch_size and "
                             "--critic_steps")
    if (fv.noise_multiplier is None) == (fv.epsilon is None):
        raise app.UsageError("--plan needs exactly one of --noise_multiplier, --epsilon")
    if fv.noise_to_signal is not None and (fv.epsilon is None or fv.noise_to_signal <= 0):
        raise app.UsageError("--noise_to_signal needs --epsilon and a positive value")
    card = privacy_card.plan_card(
        num_records=num, batch_size=fv.batch_size, critic_steps=fv.critic_steps,
        epsilon=fv.epsilon, noise_multiplier=fv.noise_multiplier, delta=fv.delta,
        accountant=fv.accountant, privacy_unit=fv.privacy_unit,
        patches_per_patient=fv.patches_per_patient)
    fmt = privacy_card.format_value
    print(f"plan: per {card['privacy_unit']}, N = {num}, q = {card['sampling_rate']:.4g}, "
          f"{card['critic_steps']} critic steps, noise_multiplier "
          f"{card['noise_multiplier']:.4f}, delta {card['delta']:.3g}: epsilon "
          f"{fmt(card['epsilon'])} ({card['accountant']}; RDP {fmt(card['epsilon_rdp'])}, "
          f"PLD {fmt(card['epsilon_pld'])})")
    print(f"noise/signal sigma/B = {privacy_card.Plan.from_dict(card).noise_to_signal:.4g} "
          f"(noise std per coordinate "
          f"against {fv.batch_size:g} clipped records)")
    if fv.noise_to_signal is not None:
        _print_records_needed(fv, card)
    print(json.dumps(card, indent=2))


def _print_records_needed(fv, card):
    unit = privacy_card.PLURAL[card["privacy_unit"]]
    print(f"searching the {unit} needed for sigma/B <= {fv.noise_to_signal:g} "
          f"(about 10 calibrations) ...", flush=True)
    n = privacy_card.records_needed(
        fv.noise_to_signal, expected_batch_size=fv.batch_size, critic_steps=fv.critic_steps,
        epsilon=fv.epsilon, accountant=fv.accountant, delta=fv.delta)
    setting = (f"at batch {fv.batch_size:g}, {fv.critic_steps} critic steps, epsilon "
               f"{fv.epsilon:g} ({fv.accountant}"
               f"{'' if fv.delta is None else f', delta {fv.delta:g}'})")
    if n is not None:
        print(f"records needed: N >= {n} {unit} for sigma/B <= {fv.noise_to_signal:g} "
              f"{setting}")
        return
    floor = privacy_card.noise_to_signal_floor(
        expected_batch_size=fv.batch_size, critic_steps=fv.critic_steps, epsilon=fv.epsilon,
        delta=fv.delta, accountant=fv.accountant)
    print(f"records needed: none up to {privacy_card.LARGEST_COHORT:.0e} {unit} {setting}: "
          f"sigma/B stays above {floor:.4g} however many {unit} (sigma does not fall below "
          f"a floor for these steps and epsilon); raise --batch_size or lower --critic_steps")


def main(argv):
    del argv
    if FLAGS.plan:
        return plan(FLAGS)
    if not FLAGS.workdir:
        raise app.UsageError("give --workdir=W or --plan")
    print(privacy_card.render_markdown(workdir.read_card(FLAGS.workdir)), end="")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
