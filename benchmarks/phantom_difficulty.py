"""Is the phantom hard enough? A trained U-Net vs the best global intensity threshold.

On the default phantom data (small settings, flags below) it trains the half U-Net on the
real training patches, segments the held-out test volumes (nifti imagesTs) with overlapping
tiles, and compares with an oracle threshold: the global intensity threshold maximising Dice on
each test volume itself, an upper bound for any global threshold. If intensity alone were
enough, the threshold would match the U-Net.

Model selection is on the validation patient only: after every `steps_per_epoch` steps the
U-Net segments the validation patient's whole volume as non-overlapping tiles and the weights
with the best pooled Dice are kept (unet.dataset_dice has no brain mask, so predictions outside
the brain count here but not in the test metric; the masked val volume Dice of the kept model is
printed too). Test volumes are only segmented at the end.

Prints per-patient and mean DSC and HD95 (mm) for both and, as the last lines, the ratios
`unet_over_threshold_dsc` and `threshold_over_unet_hd95`; the same text goes to
benchmarks/results/phantom_difficulty.txt.

  python benchmarks/phantom_difficulty.py [--num_train=8 --num_test=3 --epochs=16]
  [--preset=site_b] [--shape=140,168,52]
"""
import os
import time

import numpy as np
from absl import app, flags, logging

from tfdpgan import atomic
from tfdpgan.data import default_data, patches, phantom, pipeline, records, volumes
from tfdpgan.evaluation import seg_metrics, stitching, unet

flags.DEFINE_integer("num_train", 8, "Training phantom patients (one of them becomes val).")
flags.DEFINE_integer("num_test", 3, "Held-out test phantom patients.")
flags.DEFINE_integer("patch_size", 64, "Patch size.")
flags.DEFINE_integer("patches_per_patient", 1000, "Training patches per patient.")
flags.DEFINE_float("vessel_fraction", 0.3, "Share of training patches centred on a vessel (the "
                   "rest on any brain voxel, e.g. the unlabelled bright surface structures).")
flags.DEFINE_integer("seed", 0, "Phantom and training seed.")
flags.DEFINE_enum("preset", "default", sorted(phantom.PRESETS), "Phantom site preset.")
flags.DEFINE_list("shape", None, "Phantom volume shape x,y,z over the preset's field of view "
                  "(default: the preset's own grid).")
flags.DEFINE_integer("base_filters", 16, "U-Net base filters (the paper: 32).")
flags.DEFINE_integer("depth", 4, "U-Net down-sampling levels.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate (at 1e-3 the soft-Dice training "
                   "can collapse to an all-zero output).")
flags.DEFINE_integer("batch_size", 32, "Patches per step.")
flags.DEFINE_integer("epochs", 16, "Rounds of --steps_per_epoch training steps, each followed "
                     "by validation.")
flags.DEFINE_integer("early_stop_patience", 0, "Stop after this many epochs without a better "
                     "validation Dice (0 = train all --epochs; the evaluation's default is 3).")
flags.DEFINE_integer("steps_per_epoch", 50, "Training steps between validations.")
flags.DEFINE_bool("augment", True, "Random flips / 90-degree rotations.")
flags.DEFINE_float("overlap", 0.5, "Tile overlap when segmenting whole volumes.")
flags.DEFINE_string("cache_dir", "/tmp/tfdpgan-benchmark-cache", "Phantom data cache.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results",
                                           "phantom_difficulty.txt"),
                    "Where to write the printed report.")
FLAGS = flags.FLAGS


def _mean(values):
    values = np.asarray(values, np.float64)
    return float(np.mean(values)), int(np.isinf(values).sum())


def volume_tiles(volume, normalization: dict, patch_size: int):
    """(images, labels) [n, P, P] of the non-overlapping tiles covering a volume's brain, the
    image normalised like the training patches."""
    norm = patches.fit_normalization(
        volume.image, volume.mask, normalization["method"], normalization["percentile"],
        normalization["fixed_range"])
    centres = stitching.brain_origins(volume.mask, patch_size, 0.0) + [
        patch_size // 2, patch_size // 2, 0]
    images, _ = patches.extract(norm.apply(volume.image), centres, patch_size)
    labels, _ = patches.extract(volume.label, centres, patch_size)
    return images, labels


def main(argv):
    del argv
    shape = tuple(int(n) for n in FLAGS.shape) if FLAGS.shape else \
        default_data.PhantomDataConfig.shape
    data = default_data.PhantomDataConfig(
        num_patients=FLAGS.num_train, num_test=FLAGS.num_test, seed=FLAGS.seed, shape=shape,
        patch_size=FLAGS.patch_size, patches_per_patient=FLAGS.patches_per_patient,
        vessel_fraction=FLAGS.vessel_fraction, preset=FLAGS.preset)
    grid = data.phantom_config()
    total_start = time.time()
    nifti_dir, rec_dir = default_data.prepare(data, FLAGS.cache_dir)
    info = records.read_dataset_json(rec_dir)
    train = pipeline.load_arrays(rec_dir, "train")
    val_ids = info["splits"]["val"]["patients"]
    val_volumes = [volumes.load_volume(case) for case in volumes.find_cases(nifti_dir, "Tr")
                   if case.patient_id in val_ids]
    val_tiles = [volume_tiles(vol, info["normalization"], FLAGS.patch_size)
                 for vol in val_volumes]
    val = tuple(np.concatenate(arrays) for arrays in zip(*val_tiles))
    config = unet.UNetConfig(
        base_filters=FLAGS.base_filters, depth=FLAGS.depth, learning_rate=FLAGS.learning_rate,
        batch_size=FLAGS.batch_size, augment=FLAGS.augment, epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch, seed=FLAGS.seed,
        early_stop_patience=FLAGS.early_stop_patience)
    start = time.time()
    model, history = unet.train_unet((train.images, train.labels), val, config)
    train_seconds = time.time() - start

    def segment(vol):
        return stitching.segment_volume(model, vol, info["normalization"], FLAGS.patch_size,
                                        FLAGS.overlap)[1]

    val_dice = np.mean([seg_metrics.dice(segment(vol), vol.label) for vol in val_volumes])
    rows = []
    for case in volumes.find_cases(nifti_dir, "Ts"):
        vol = volumes.load_volume(case)
        seg = segment(vol)
        threshold, _ = seg_metrics.best_threshold_dice(vol.image, vol.label, vol.mask)
        thresholded = (vol.image >= threshold) & (vol.mask > 0)
        rows.append((case.patient_id,
                     seg_metrics.dice(seg, vol.label), seg_metrics.hausdorff95(seg, vol.label, vol.spacing),
                     seg_metrics.dice(thresholded, vol.label),
                     seg_metrics.hausdorff95(thresholded, vol.label, vol.spacing), threshold))
        logging.info("evaluated %s", case.patient_id)

    lines = [
        f"phantom: {len(train.patient_ids)} train / {len(val_volumes)} val / {len(rows)} "
        f"test patients, preset {data.preset}, shape {grid.shape}, voxel "
        f"{' x '.join(f'{v:g}' for v in grid.spacing)} mm, patch {data.patch_size}, "
        f"{len(train)} train "
        f"patches (vessel fraction {data.vessel_fraction}); val = {len(val[0])} tiles of the "
        f"whole val volume, unmasked",
        f"U-Net: base {config.base_filters}, depth {config.depth}, lr {config.learning_rate}, "
        f"batch {config.batch_size}, augment {config.augment}, {config.epochs} x "
        f"{config.steps_per_epoch} steps in {train_seconds:.0f} s; best val volume Dice "
        f"{history['best_val_dice']:.4f} after {(history['best_epoch'] + 1)} x "
        f"{config.steps_per_epoch} steps (val Dice per epoch "
        f"{', '.join(f'{d:.3f}' for d in history['val_dice'])}); kept model: val volume "
        f"Dice {val_dice:.4f} (masked, stitched like the test volumes)",
        "threshold: oracle global intensity threshold chosen on each test volume itself",
        "",
        f"{'patient':<14}{'U-Net DSC':>10}{'HD95 mm':>9}{'thr DSC':>10}{'HD95 mm':>9}"
        f"{'threshold':>11}",
    ]
    for pid, u_dsc, u_hd, t_dsc, t_hd, threshold in rows:
        lines.append(f"{pid:<14}{u_dsc:>10.4f}{u_hd:>9.2f}{t_dsc:>10.4f}{t_hd:>9.2f}"
                     f"{threshold:>11.1f}")
    (u_dsc, _), (u_hd, u_inf), (t_dsc, _), (t_hd, t_inf) = (
        _mean([row[i] for row in rows]) for i in (1, 2, 3, 4))
    lines += [
        f"{'mean':<14}{u_dsc:>10.4f}{u_hd:>9.2f}{t_dsc:>10.4f}{t_hd:>9.2f}",
        f"patients with infinite HD95 (empty segmentation): U-Net {u_inf}, threshold {t_inf}",
        "",
        f"unet_over_threshold_dsc {u_dsc / t_dsc:.3f}",
        f"threshold_over_unet_hd95 {t_hd / u_hd:.3f}",
        f"total run time {time.time() - total_start:.0f} s",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    atomic.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
