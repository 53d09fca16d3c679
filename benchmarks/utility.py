"""What the synthetic pairs are worth, privacy level by privacy level, side by side.

  python benchmarks/utility.py                      # ~2 h on a 2-core CPU; resumable per row
  python benchmarks/utility.py --quick --out_dir=/tmp/u   # minutes: every code path, tiny sizes
  python benchmarks/utility.py --recipe=flags/finetune_prior.cfg --public_preset=site_b \
      --private_preset=default --patient_cohort=48   # a prior trained here (+ its training time)
  python benchmarks/utility.py --recipe=flags/demo.cfg --prior=builtin --private_preset=default \
      --patient_cohort=48   # the shipped prior (~60 min; ε = ∞ and 3 alone took 34 min)

Rows, all scored on the SAME held-out whole test volumes (the private site's test patients):
  real        the U-Net trained on the private site's real training patches (upper bound)
  threshold   a global intensity threshold chosen on the private site's validation volumes
  prior       the public prior alone (ε = 0: trained without DP on the PUBLIC phantom site,
              never saw the private site), so nobody credits DP fine-tuning with what it knew.
              --prior=train trains it here with --prior_recipe on --public_preset (seed 0);
              --prior=builtin takes tfdpgan's shipped prior (flags/pretrain_phantom.cfg on
              site_b, seed 1000; tfdpgan/gan/builtin_prior/prior.json) and scores it as the
              prior row of the first ε's evaluation (same test volumes, same U-Net budget)
  eps_inf, eps_10, eps_3, eps_1   per-patch DP fine-tuning of the prior on the private site
  patient_3   per-patient ε = 3 on a larger private cohort (same recipe, same prior)
The private "site" is a phantom data set whose preset (scanner/site) differs from the public
one when presets are available (--public_preset / --private_preset); U-Net selection is the
evaluation's default (held-out synthetic patches, privacy-free). Every row gets the same U-Net
budget; the default (8 epochs) does not converge for real patches, so --unet_epochs=32 gives a
truer upper bound (about 2x the evaluation time).

Each row: DSC ± SD, HD95 ± SD (mm), FID and its real floor, noise multiplier, critic steps,
wall time. Every finished training (privacy.json + generator) and every evaluation with the
same settings is reused (a training only if it started from the same prior weights, else
refused: use a new --out_dir), so an interrupted benchmark resumes where it stopped (a row's wall time
is its first measurement, kept in OUT_DIR/row_seconds.json). The last lines
print dsc_ratio_inf_over_real, dsc_ratio_eps3_over_inf, dsc_eps1_minus_threshold,
fid_ratio_inf_over_floor and the patient cohort that per-patient DP would need for the per-patch
ε = 3 row's noise/signal (tfdpgan.dp.card.records_needed). The table goes to
benchmarks/results/utility.txt (--output), its rows (with the test volumes) to the .json beside
it. One run's DSC moves by several hundredths with the seeds: repeat the benchmark with new
--out_dir (fresh training seeds) and give the JSONs to benchmarks/utility_summary.py, which
prints every row and target as mean ± SD over the runs and in how many runs a target was met.
"""
import dataclasses
import json
import math
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic, errors, train as train_command, workdir  # noqa: E402
from tfdpgan.data import default_data  # noqa: E402
from tfdpgan.dp import card as privacy_card  # noqa: E402
from tfdpgan.evaluation import evaluate, report  # noqa: E402
from tfdpgan.evaluation.config import EvalConfig  # noqa: E402
from tfdpgan.gan import priors, training  # noqa: E402
import utility_summary  # noqa: E402  (benchmarks/: the targets, also over repeated runs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("out_dir", os.path.join("runs", "utility"), "Folder of the benchmark's runs.")
flags.DEFINE_string("recipe", os.path.join(ROOT, "flags", "demo.cfg"),
                    "Train flagfile of the private rows (epsilon/workdir/data are replaced).")
flags.DEFINE_string("prior_recipe", os.path.join(ROOT, "flags", "pretrain_phantom.cfg"),
                    "Train flagfile of the public prior (non-private).")
flags.DEFINE_enum("prior", "train", ["train", "builtin"], "The public prior: trained here "
                  "(--prior_recipe, --public_preset) or tfdpgan's shipped one (its networks "
                  "must be the recipe's; not with --quick).")
flags.DEFINE_string("public_preset", None, "Phantom preset of the public prior's site.")
flags.DEFINE_string("private_preset", None, "Phantom preset of the private site.")
flags.DEFINE_list("epsilons", ["inf", "10", "3", "1"], "Per-patch rows.")
flags.DEFINE_integer("patient_cohort", 200, "Private patients of the per-patient row.")
flags.DEFINE_integer("patient_patches", 40, "Patches per patient of that cohort.")
flags.DEFINE_integer("patient_batch", 32, "Expected patients per critic step (patient row).")
flags.DEFINE_bool("patient_row", True, "Include the per-patient ε = 3 row.")
flags.DEFINE_integer("num_synthetic", 4000, "Synthetic pairs per evaluation.")
flags.DEFINE_integer("fid_samples", 1000, "Images per FID set (0 = no FID).")
flags.DEFINE_integer("unet_epochs", 0, "U-Net epochs of every row's evaluation (0: the "
                     "evaluation's CPU-sized default, 8; early stopping applies either way).")
flags.DEFINE_integer("eval_repeats", 1, "U-Nets per row, averaged (tfdpgan.evaluate --repeats;"
                     " one U-Net's DSC moves by ~0.03-0.04 with the seed alone).")
flags.DEFINE_bool("quick", False, "Tiny sizes (minutes): checks the benchmark, not utility.")
flags.DEFINE_string("output", os.path.join(ROOT, "benchmarks", "results", "utility.txt"),
                    "Where the table goes.")
FLAGS = flags.FLAGS


def _recipe(path: str):
    """TrainConfig of a flagfile, parsed by the train command's own flags."""
    fv = flags.FlagValues()
    train_command.define_flags(fv)
    fv(["train", f"--flagfile={path}"])
    return train_command.config_from_flags(fv)


def _phantom(preset, **changes):
    config = default_data.PhantomDataConfig(**changes)
    if preset:
        config = dataclasses.replace(config, preset=preset)
    return config


def _quick(config):
    """Tiny sizes for --quick: a few critic steps on a small phantom."""
    if not FLAGS.quick:
        return config
    phantom = dataclasses.replace(config.phantom, num_patients=6, num_test=2,
                                  patches_per_patient=60, patch_size=32)
    return dataclasses.replace(config, phantom=phantom, critic_steps=20, batch_size=16,
                               base_filters=4, summary_every=10, image_every=1000,
                               checkpoint_every=10)


def _train(config, name):
    """Train (or resume) one row's generator; a finished row is reused only if its settings,
    data and prior equal this run's (training.train checks the full run record, as a resume
    does). Returns (config, card, seconds)."""
    config = dataclasses.replace(config, workdir=os.path.join(FLAGS.out_dir, name))
    start = time.time()
    if not workdir.is_finished(config.workdir):
        print(f"[{name}] training ...", flush=True)
    try:
        card = training.train(config)
    except errors.WorkdirError as e:   # a finished row of another recipe, prior or data
        raise app.UsageError(f"{e}: use a new --out_dir") from e
    return config, card, time.time() - start


def _evaluate(run_dir, test_nifti, prior_row=False, **kwargs):
    # the benchmark scores its prior once, as a row of its own: a trained prior in its own
    # evaluation, the shipped one (prior_row=True) in the first ε's
    config = EvalConfig(workdir=run_dir, test_data=test_nifti, prior_row=prior_row,
                        num_synthetic=200 if FLAGS.quick else FLAGS.num_synthetic,
                        fid=FLAGS.fid_samples > 0 and not FLAGS.quick,
                        fid_samples=max(FLAGS.fid_samples, 2), repeats=FLAGS.eval_repeats,
                        **kwargs)
    if FLAGS.unet_epochs:
        config = dataclasses.replace(config, unet=dataclasses.replace(
            config.unet, epochs=FLAGS.unet_epochs))
    if FLAGS.quick:
        config = dataclasses.replace(config, unet=dataclasses.replace(
            config.unet, base_filters=4, depth=2, epochs=1, steps_per_epoch=3))
    start = time.time()
    result = evaluate.evaluate(config, reuse=True)
    return result, time.time() - start


def _seconds(name, measured):
    """Wall time of row ``name``: the first measurement of a row (train + evaluation) is kept
    in OUT_DIR/row_seconds.json, so a resumed benchmark, which reuses finished rows in about
    no time, still reports what they took (a row interrupted midway counts its remainder)."""
    path = os.path.join(FLAGS.out_dir, "row_seconds.json")
    known = {}
    if os.path.exists(path):
        with open(path) as f:
            known = json.load(f)
    if name not in known and measured > 0:
        known[name] = round(measured)
        atomic.write_json_atomic(path, known)
    return known.get(name, round(measured))


def _provenance(report: dict) -> dict:
    """What a row's numbers depend on besides its data, from the evaluation ``report`` that
    scored it: the evaluation settings (runs with other ones are not comparable; the summary
    refuses to mix them) and the host (report.host; None for a report from before it was
    recorded)."""
    f = report["settings"]["flags"]
    return {"evaluation": {"num_synthetic": f["num_synthetic"], "repeats": f["repeats"],
                           "grid": f["grid"], "selection": f["selection"],
                           "unet_epochs": f["unet"]["epochs"],
                           "unet_steps_per_epoch": f["unet"]["steps_per_epoch"],
                           "fid_samples": f["fid_samples"] if f["fid"] else 0},
            "host": report.get("host")}


def _row(name, result, card=None, train_seconds=0.0, eval_seconds=0.0, report=None):
    """One table row; ``report`` is the evaluation that scored it (``result`` itself, or the
    report whose baseline ``result`` is)."""
    return {"row": name, "dsc_mean": result.get("dsc_mean"), "dsc_sd": result.get("dsc_sd"),
            "hd95_mean_mm": result.get("hd95_mean_mm"), "hd95_sd_mm": result.get("hd95_sd_mm"),
            "fid": result.get("fid"), "fid_real_floor": result.get("fid_real_floor"),
            "epsilon": None if card is None else card.get("epsilon"),
            "privacy_unit": None if card is None else card.get("privacy_unit"),
            "noise_multiplier": None if card is None else card.get("noise_multiplier"),
            "critic_steps": None if card is None else card.get("critic_steps"),
            "expected_batch_size": None if card is None else card.get("expected_batch_size"),
            "accountant": None if card is None else card.get("accountant"),
            "noise_to_signal": (privacy_card.Plan.from_dict(card).noise_to_signal
                                if card and card.get("noise_multiplier") else None),
            "seconds": _seconds(name, train_seconds + eval_seconds),
            **_provenance(result if report is None else report)}


PRIOR_ROW = utility_summary.PRIOR


def _builtin_prior() -> str:
    """--prior=builtin: the shipped prior's source name, after checking it is usable here (its
    site must be --public_preset's when that is given; --quick's tiny networks do not fit)."""
    if FLAGS.quick:
        raise app.UsageError("--prior=builtin fits only the demo's networks; --quick trains "
                             "tiny ones (use --prior=train)")
    site = priors.read_builtin()["source_run"]["phantom"]["preset"]
    if FLAGS.public_preset and FLAGS.public_preset != site:
        raise app.UsageError(f"--prior=builtin was trained on phantom preset {site!r}, not "
                             f"--public_preset={FLAGS.public_preset!r}")
    return priors.BUILTIN


def _cohort(private_phantom):
    """The per-patient row's private cohort: another seed and more patients. Its held-out
    test patients (ids after the cohort's, so no row trained on an id or a volume of them)
    are THE test volumes of every row."""
    cohort = dataclasses.replace(private_phantom, seed=2, num_patients=FLAGS.patient_cohort,
                                 patches_per_patient=FLAGS.patient_patches)
    if FLAGS.quick:
        cohort = dataclasses.replace(cohort, num_patients=12, patches_per_patient=20)
    # Phantom ids are phantom_000, 001, ... in every data set; the evaluation refuses a test id
    # that is also a training id, so the test ids must come after every other data set's.
    others = private_phantom.num_patients + private_phantom.num_test
    if cohort.num_patients < others:
        raise app.UsageError(f"--patient_cohort must be at least {others} (the private data "
                             f"set's patients), so the test ids follow every training id")
    return cohort


def _rows():
    recipe, prior_recipe = _recipe(FLAGS.recipe), _recipe(FLAGS.prior_recipe)
    prior = _builtin_prior() if FLAGS.prior == "builtin" else None   # refused before any work
    private_phantom = default_data.benchmark_private_site(
        FLAGS.private_preset, patch_size=recipe.phantom.patch_size,
        patches_per_patient=recipe.phantom.patches_per_patient)
    private_phantom = _quick(dataclasses.replace(recipe, phantom=private_phantom)).phantom
    cohort = _cohort(private_phantom)
    test_nifti = default_data.prepare(cohort)[0]     # THE test volumes of every row (imagesTs)
    rows = []
    if prior is None:
        prior_config = _quick(dataclasses.replace(prior_recipe, phantom=_phantom(
            FLAGS.public_preset, seed=0, patch_size=recipe.phantom.patch_size,
            patches_per_patient=recipe.phantom.patches_per_patient)))
        prior_config, _, t = _train(prior_config, "prior")
        prior = prior_config.workdir
        result, e = _evaluate(prior, test_nifti)
        rows.append(dict(_row(PRIOR_ROW, result, None, t, e), epsilon=0.0))
    for eps_text in FLAGS.epsilons:
        config = dataclasses.replace(_quick(recipe), epsilon=float(eps_text),
                                     phantom=private_phantom, init_from=prior)
        config, card, t = _train(config, f"eps_{eps_text}")
        first = eps_text == FLAGS.epsilons[0]
        rec_dir = default_data.prepare(private_phantom)[1]
        # the shipped prior has no workdir of its own: the first evaluation scores it
        score_prior = first and FLAGS.prior == "builtin"
        result, e = _evaluate(config.workdir, test_nifti, real_train=rec_dir if first else None,
                              threshold_baseline=first, prior_row=score_prior)
        rows.append(_row(f"ε = {eps_text} per patch", result, card, t, e))
        if score_prior:
            prior_result = dict(result["baselines"]["prior"],   # same test patches: same floor
                                fid_real_floor=result.get("fid_real_floor"))
            rows.insert(0, dict(_row(PRIOR_ROW, prior_result, report=result), epsilon=0.0))
        for base, label in (("real_train", utility_summary.REAL),
                            ("threshold", utility_summary.THRESHOLD)):
            if first and base in result.get("baselines", {}):
                rows.append(_row(label, result["baselines"][base], report=result))
    if FLAGS.patient_row:
        config = dataclasses.replace(
            _quick(recipe), epsilon=3.0, phantom=cohort, privacy_unit="patient",
            patches_per_patient=8, batch_size=4 if FLAGS.quick else FLAGS.patient_batch,
            init_from=prior)
        config, card, t = _train(config, "patient_3")
        result, e = _evaluate(config.workdir, test_nifti)
        rows.append(_row("ε = 3 per patient", result, card, t, e))
    return rows, test_nifti


def _cohort_line(by):
    """Patients the per-patient row would need to match the per-patch ε = 3 row's noise/signal,
    at that row's expected batch (as patients) and steps."""
    patch = by.get(utility_summary.EPS3) or {}
    if not patch.get("noise_to_signal"):
        return "patient_cohort_for_patch_eps3_noise -"
    batch, steps, ratio = (patch["expected_batch_size"], patch["critic_steps"],
                           patch["noise_to_signal"])
    n = privacy_card.records_needed(ratio,
                                    expected_batch_size=batch, critic_steps=steps, epsilon=3.0,
                                    accountant=patch.get("accountant") or "pld")
    needed = n if n else f"> {privacy_card.LARGEST_COHORT:.0e}"
    return (f"patient_cohort_for_patch_eps3_noise {needed} (batch {batch:g} "
            f"patients, {steps} steps, σ/B {ratio:.4f})")


def _fmt(x, digits):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else \
        f"{x:.{digits}f}"


def _table(rows, test_nifti):
    lines = [f"Utility of synthetic pairs: U-Net trained only on each row's data, scored on "
             f"the same whole test volumes ({test_nifti}); selection on held-out synthetic "
             f"patches.", "",
             f"{'row':38s} {'ε':>6s} {'σ':>6s} {'steps':>6s} {'DSC':>15s} {'HD95 mm':>13s} "
             f"{'FID':>7s} {'floor':>6s} {'s':>6s}"]
    for r in rows:
        lines.append(
            f"{r['row']:38s} {_fmt(r['epsilon'], 2):>6s} {_fmt(r['noise_multiplier'], 2):>6s} "
            f"{(str(r['critic_steps']) if r['critic_steps'] else '-'):>6s} "
            f"{report.format_mean_sd(r['dsc_mean'], r['dsc_sd'], 3):>15s} "
            f"{report.format_mean_sd(r['hd95_mean_mm'], r['hd95_sd_mm'], 1):>13s} "
            f"{_fmt(r['fid'], 1):>7s} {_fmt(r['fid_real_floor'], 1):>6s} {r['seconds']:>6d}")
    by = {r["row"]: r for r in rows}
    lines += [""] + [f"{name} {_fmt(value, utility_summary.TARGETS[name][2])}"
                     for name, value in utility_summary.targets(rows).items()] + [
              _cohort_line(by)]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    start = time.time()
    rows, test_nifti = _rows()
    rows = [dict(r, test_data=test_nifti) for r in rows]   # utility_summary compares on it
    text = _table(rows, test_nifti) + (f"total {sum(r['seconds'] for r in rows)} s over the "
                                       f"rows; this invocation {time.time() - start:.0f} s\n")
    print(text, end="")
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    atomic.write_text_atomic(FLAGS.output, text)
    atomic.write_json_atomic(os.path.splitext(FLAGS.output)[0] + ".json", rows)


if __name__ == "__main__":
    app.run(main)
