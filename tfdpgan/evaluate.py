"""Utility of a synthetic data set: a U-Net trained on it, scored on real test patients.

  python -m tfdpgan.evaluate --workdir=W                    # the run in W, its own test patients
  python -m tfdpgan.evaluate --workdir=W --test_data=DIR    # DIR/imagesTs, labelsTs[, masksTs]
  python -m tfdpgan.evaluate --workdir=W --grid='lr=1e-4,3e-4;dropout=0,0.1;augment=0,1'
  python -m tfdpgan.evaluate --workdir=W --real_train=REC --threshold_baseline   # + baselines
  python -m tfdpgan.evaluate --workdir=W --selection=real_val    # the paper's selection

Writes W/private/eval/{report.json, REPORT.md, predictions/}; the steps are in
tfdpgan.evaluation.evaluate.
"""
import os

from absl import app, flags

from tfdpgan import cli, workdir
from tfdpgan.evaluation import config as config_lib, evaluate, report, unet

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS, sweep: bool = False):
    """The evaluation flags. With ``sweep`` (tfdpgan.sweep, which also defines train's flags)
    --workdir/--data/--out_dir are left to the sweep and --test_data takes a list."""
    d = config_lib.EvalConfig(workdir="")
    fdef = cli.FlagDefiner(fv)
    if not sweep:
        fdef.DEFINE_string("workdir", None, "Training workdir to evaluate (its generator/).")
        fdef.DEFINE_string("out_dir", None, "Output folder (default: WORKDIR/private/eval).")
        fdef.DEFINE_string("data", None, "The run's TFRecord data set (default: run.json's).")
        fdef.DEFINE_string("test_data", None, "Folder with imagesTs/ labelsTs/ [masksTs/] "
                           "(default: the test patients of the run's data set).")
    else:
        fdef.DEFINE_list("test_data", [], "Test folders (imagesTs/ labelsTs/ [masksTs/]), one "
                         "evaluation each (default: the test patients of the data set).")
    fdef.DEFINE_string("synthetic", None, "Synthetic TFRecord folder (tfdpgan.sample) to train "
                       "on instead of sampling --num_synthetic from the generator.")
    fdef.DEFINE_integer("num_synthetic", d.num_synthetic, "Synthetic pairs to sample.")
    fdef.DEFINE_float("label_threshold", d.label_threshold, "Synthetic labels are binarised as "
                      "label >= this on the {0, 1} scale.")
    fdef.DEFINE_string("real_train", None, "Also train the U-Net on this TFRecord folder's "
                       "real training patches (upper-bound row).")
    fdef.DEFINE_boolean("threshold_baseline", d.threshold_baseline, "Also report a global "
                        "intensity threshold chosen on the validation set.")
    fdef.DEFINE_boolean("prior_row", d.prior_row, "When the run started from a public prior "
                        "(train --init_from, e.g. the built-in one), also train the U-Net on "
                        "the prior's samples alone: what the prior knew before any private "
                        "data, so DP fine-tuning is not credited with it.")
    fdef.DEFINE_enum("selection", d.selection, list(config_lib.SELECTIONS), "synthetic_val: "
                     "select on held-out synthetic patches (privacy-free, the default); "
                     "real_val: on the real validation patients' whole volumes (the paper; "
                     "private data outside the DP guarantee, flagged in the report).")
    fdef.DEFINE_float("synthetic_val_fraction", d.synthetic_val_fraction, "Share held out for "
                      "--selection=synthetic_val.")
    fdef.DEFINE_string("grid", d.grid, "U-Net grid, e.g. 'lr=1e-4,3e-4;dropout=0,0.1;"
                       f"augment=0,1' (keys: {', '.join(sorted(config_lib.GRID_KEYS))}); empty: "
                       "the single --unet_* setting. A given --unet_lr without --grid means "
                       "no grid.")
    _define_unet_flags(fdef, d.unet)
    fdef.DEFINE_float("overlap", d.overlap, "Tile overlap on test volumes.")
    fdef.DEFINE_float("selection_overlap", d.selection_overlap, "Tile overlap on validation "
                      "volumes (every epoch).")
    fdef.DEFINE_boolean("fid", d.fid, "Compute FID (fails if the network cannot be loaded).")
    fdef.DEFINE_string("fid_weights", d.fid_weights, "FID network weights: path or TF-Hub "
                       "handle (default: the cached standard weights, python -m tfdpgan.fid).")
    fdef.DEFINE_integer("fid_samples", d.fid_samples, "Images per FID set.")
    fdef.DEFINE_string("fid_cache_dir", None, "Cache of real-patch FID activations.")
    fdef.DEFINE_integer("repeats", d.repeats, "U-Nets trained per row (repeat k: --eval_seed "
                        "and --unet_seed + k); each patient's DSC and HD95 are their mean. One "
                        "U-Net's DSC moves by ~0.03-0.04 with the seed alone: use 3 or more to "
                        "compare runs.")
    fdef.DEFINE_integer("eval_seed", d.seed, "Seed of synthetic sampling, hold-outs and FID "
                        "patch sampling.")


def _define_unet_flags(fdef: cli.FlagDefiner, u: unet.UNetConfig):
    fdef.DEFINE_integer("unet_base_filters", u.base_filters, "U-Net width (paper: 32).")
    fdef.DEFINE_integer("unet_depth", u.depth, "U-Net pooling levels (paper: 4).")
    fdef.DEFINE_float("unet_lr", u.learning_rate, "U-Net Adam learning rate (when no --grid).")
    fdef.DEFINE_float("unet_dropout", u.dropout, "U-Net dropout.")
    fdef.DEFINE_boolean("unet_augment", u.augment, "Random flips / 90-degree rotations.")
    fdef.DEFINE_boolean("unet_intensity_augment", u.intensity_augment, "Random brightness, "
                        "gamma and bias ramp per training patch (every row alike).")
    fdef.DEFINE_integer("unet_batch_size", u.batch_size, "U-Net batch size.")
    fdef.DEFINE_integer("unet_epochs", u.epochs, "Epochs (each followed by validation).")
    fdef.DEFINE_integer("unet_steps_per_epoch", u.steps_per_epoch, "Steps per epoch "
                        "(0: one pass over the training patches).")
    fdef.DEFINE_integer("unet_seed", u.seed, "U-Net initialisation/shuffling seed.")
    fdef.DEFINE_enum("unet_loss", u.loss, list(unet.LOSSES), "dice_bce: soft Dice + "
                     "cross-entropy, output bias from the label prior; dice: soft Dice only "
                     "(the former loss, prone to collapse).")
    fdef.DEFINE_integer("unet_max_restarts", u.max_restarts, "Re-initialisations after a "
                        "detected collapse (empty prediction, loss stuck).")


def config_from_flags(fv: flags.FlagValues = FLAGS, **overrides) -> config_lib.EvalConfig:
    base = unet.UNetConfig(
        base_filters=fv.unet_base_filters, depth=fv.unet_depth, learning_rate=fv.unet_lr,
        dropout=fv.unet_dropout, augment=fv.unet_augment,
        intensity_augment=fv.unet_intensity_augment, batch_size=fv.unet_batch_size,
        epochs=fv.unet_epochs, steps_per_epoch=fv.unet_steps_per_epoch or None,
        seed=fv.unet_seed, loss=fv.unet_loss, max_restarts=fv.unet_max_restarts)
    # An explicit --unet_lr means that learning rate, not the default learning-rate grid.
    grid = "" if fv["unet_lr"].present and not fv["grid"].present else fv.grid
    values = dict(
        synthetic=fv.synthetic, num_synthetic=fv.num_synthetic, real_train=fv.real_train,
        threshold_baseline=fv.threshold_baseline, prior_row=fv.prior_row,
        selection=fv.selection,
        synthetic_val_fraction=fv.synthetic_val_fraction, grid=grid, unet=base,
        label_threshold=fv.label_threshold, overlap=fv.overlap,
        selection_overlap=fv.selection_overlap, fid=fv.fid, fid_weights=fv.fid_weights,
        fid_samples=fv.fid_samples, fid_cache_dir=fv.fid_cache_dir, seed=fv.eval_seed,
        repeats=fv.repeats)
    if "out_dir" in fv:
        values.update(workdir=fv.workdir, out_dir=fv.out_dir, data=fv.data,
                      test_data=fv.test_data)
    values.update(overrides)
    return config_lib.EvalConfig(**values)


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    config = config_from_flags()
    result = evaluate.evaluate(config)
    out_dir = config.out_dir or workdir.path(config.workdir, workdir.EVAL)
    for line in report.summary_lines(result):
        print(line)
    print(f"report: {os.path.join(out_dir, report.REPORT_JSON)} and {report.REPORT_MD}; "
          f"predictions in {os.path.join(out_dir, 'predictions')}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
