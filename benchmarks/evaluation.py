"""Utility of synthetic data (evaluation like the paper), rows side by side.

  python benchmarks/evaluation.py \
      --runs=epsinf:runs/epsinf,eps3:runs/eps3,patient_eps3:runs/patient_eps3

Evaluates each training workdir with tfdpgan.evaluation.evaluate (U-Net trained only on its
generator's synthetic pairs, default settings: Dice + cross-entropy, 2-point learning-rate grid,
collapse detection with restarts; scored on whole real test volumes) against ONE test set for
all rows (--test_data; default: the default phantom data set's test patients), once per model
selection of --selections: ``synthetic_val`` (held-out synthetic patches, privacy-free) and
``real_val`` (the real validation patients' volumes, the paper's way; private data outside the
DP guarantee). The first run also gets the two baselines: the same U-Net trained on real
training patches (upper bound) and a global intensity threshold chosen on validation. Prints
one table per selection (DSC ± SD, HD95 ± SD, FID, ε, U-Net restarts after a collapse) and the
ratio of each row's DSC to the first (ε = ∞) row's; the text also goes to
benchmarks/results/evaluation.txt. Existing evaluations with identical settings are reused.
"""
import dataclasses
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic, workdir  # noqa: E402
from tfdpgan.data import default_data  # noqa: E402
from tfdpgan.evaluation import config as config_lib, evaluate, inputs, report  # noqa: E402

flags.DEFINE_list("runs", ["epsinf:runs/epsinf", "eps3:runs/eps3"],
                  "name:workdir pairs; the first is the reference (ε = ∞) row.")
flags.DEFINE_list("selections", ["synthetic_val", "real_val"], "Model selections to report.")
flags.DEFINE_string("test_data", None, "Test folder for every row (default: the default "
                    "phantom's imagesTs/labelsTs/masksTs).")
flags.DEFINE_integer("num_synthetic", 4000, "Synthetic pairs per run.")
flags.DEFINE_integer("fid_samples", 1000, "Images per FID set.")
flags.DEFINE_integer("unet_epochs", config_lib.DEFAULT_UNET.epochs, "U-Net epochs.")
flags.DEFINE_integer("unet_steps_per_epoch", config_lib.DEFAULT_UNET.steps_per_epoch,
                     "U-Net steps per epoch.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "results", "evaluation.txt"), "Table file.")
FLAGS = flags.FLAGS


def _eps(result):
    p = result.get("privacy") or {}
    if not p or not p.get("private"):
        return "∞"
    return f"{p['epsilon']:.2f} per {p.get('unit', 'patch')}"


def _evaluate_rows(selection: str, test_data: str, unet):
    """[(name, report-like row)] for every run under one model selection."""
    rows = []
    for i, item in enumerate(FLAGS.runs):
        name, run_dir = item.split(":", 1)
        # the reference row's real-data baseline trains on that run's own data set
        real_train = (inputs.load_run(config_lib.EvalConfig(workdir=run_dir, fid=False)).rec_dir
                      if i == 0 else None)
        config = config_lib.EvalConfig(
            workdir=run_dir, out_dir=workdir.private_path(run_dir, f"eval_benchmark_{selection}"),
            test_data=test_data, num_synthetic=FLAGS.num_synthetic, selection=selection,
            fid_samples=FLAGS.fid_samples, unet=unet, real_train=real_train,
            threshold_baseline=i == 0)
        t = time.time()
        result = evaluate.evaluate(config, reuse=True)
        print(f"{name} ({selection}): evaluated in {time.time() - t:.0f} s", flush=True)
        rows.append((name, result))
        if i == 0:
            for base, label in (("real_train", "U-Net on real patches (upper bound)"),
                                ("threshold", "global intensity threshold")):
                if base in result["baselines"]:
                    rows.append((label, dict(result["baselines"][base], privacy=None)))
    return rows


def _table(selection: str, rows) -> list:
    ref = rows[0][1]["dsc_mean"]
    lines = [f"Model selection: {selection}", "",
             f"{'row':40s} {'epsilon':>18s} {'DSC':>16s} {'HD95 (mm)':>16s} {'FID':>8s} "
             f"{'restarts':>8s} {'DSC / DSC(first)':>17s}"]
    for name, r in rows:
        fid = r.get("fid")
        ratio = r["dsc_mean"] / ref if ref else float("nan")
        restarts = (r.get("selection") or {}).get("collapse", {}).get("restarts", "-")
        lines.append(f"{name:40s} {(_eps(r) if r.get('privacy') is not None else '-'):>18s} "
                     f"{report.format_mean_sd(r['dsc_mean'], r['dsc_sd'], 3):>16s} "
                     f"{report.format_mean_sd(r['hd95_mean_mm'], r['hd95_sd_mm'], 1):>16s} "
                     f"{(f'{fid:.1f}' if fid is not None else '-'):>8s} {restarts!s:>8s} "
                     f"{ratio:17.3f}")
    floor = rows[0][1].get("fid_real_floor")
    lines += ["", f"FID real-vs-real floor (train vs test patches): {floor:.1f}"
              if floor is not None else "FID not computed", ""]
    return lines


def main(argv):
    del argv
    test_data = FLAGS.test_data or default_data.prepare()[0]
    unet = dataclasses.replace(config_lib.DEFAULT_UNET, epochs=FLAGS.unet_epochs,
                               steps_per_epoch=FLAGS.unet_steps_per_epoch)
    start, lines = time.time(), []
    for selection in FLAGS.selections:
        rows = _evaluate_rows(selection, test_data, unet)
        if not lines:
            lines = [f"Whole-volume evaluation on {test_data} "
                     f"({rows[0][1]['test_set']['num_patients']} test patients); U-Net trained "
                     f"only on each row's training set (default grid "
                     f"'{config_lib.DEFAULT_GRID}', Dice + cross-entropy, collapse restarts).",
                     ""]
        lines += _table(selection, rows)
    lines.append(f"total {time.time() - start:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    atomic.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
