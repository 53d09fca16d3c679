"""How close is the phantom to real TOF-MRA? Every property of issue 10's table, measured on
default phantom patients, printed next to the range measured on real scans, plus the oracle
global-threshold Dice.

Patients are those of the default data set (``patient_seed(seed, i)``, i = 0..n-1), generated
in this process. Definitions (label = the vessel label, tissue = in-brain-mask voxels outside
the label):

- field of view: shape x spacing, in-plane (x, y) and slab (z).
- 1-voxel-thin centreline: centreline voxels = label voxels whose distance to the background
  (in voxels) is a 3x3x3 local maximum; thin = the label is absent on both sides of the voxel
  along at least one axis. Share of centreline voxels that are thin.
- specks: share of label voxels in 26-connected components of fewer than 10 voxels.
- radius > 1 mm: local radius of a label voxel = the largest distance-to-background (mm) in its
  3x3x3 neighbourhood minus half the mean voxel size; share of label voxels above 1 mm.
- invisible: share of label voxels whose intensity is <= the 95th percentile of tissue.
- vessel p99.95 / tissue median; tissue median after the converter's percentile normalisation
  (``tfdpgan.data.patches.fit_normalization``, [0, p99.95 in-brain] -> [-1, 1]).
- voxel size; vessel share of the brain = label voxels / brain-mask voxels.
- oracle threshold Dice: ``seg_metrics.best_threshold_dice`` (the best global threshold chosen
  on the volume's own label; an upper bound for any global threshold).

Also saves MIPs (axial and coronal) of the first three patients side by side as a PNG.

  python benchmarks/phantom_realism.py [--num_patients=4 --preset=default]
"""
import os
import time

import numpy as np
from absl import app, flags
from scipy import ndimage

from tfdpgan import atomic
from tfdpgan.data import patches, phantom
from tfdpgan.evaluation import seg_metrics

flags.DEFINE_integer("num_patients", 4, "Phantom patients to measure.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Data set seed (patients are those of the default data set).")
flags.DEFINE_enum("preset", "default", sorted(phantom.PRESETS), "Phantom preset.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results",
                                           "phantom_realism.txt"), "Report file.")
flags.DEFINE_string("mips", os.path.join(os.path.dirname(__file__), "results",
                                         "phantom_mips.png"), "MIP figure ('' = none).")
FLAGS = flags.FLAGS

# (key, property, real range as measured on real TOF-MRA in issue 10, format)
ROWS = [
    ("fov_x", "field of view in-plane L-R (mm)", "150-240", "{:.0f}"),
    ("fov_y", "field of view in-plane A-P (mm)", "150-240", "{:.0f}"),
    ("fov_slab", "field of view slab (mm)", "80-113", "{:.0f}"),
    ("thin", "label centreline 1 voxel thin", "28-46 %", "{:.1%}"),
    ("specks", "label voxels in specks < 10 voxels", "<= 0.7 %", "{:.2%}"),
    ("radius_gt_1mm", "label with radius > 1 mm", "12-23 %", "{:.1%}"),
    ("invisible", "label voxels <= tissue p95 (invisible)", "small", "{:.1%}"),
    ("vessel_ratio", "vessel p99.95 / tissue median", "8.4", "{:.2f}"),
    ("tissue_normalised", "tissue median after normalisation", "-0.77", "{:.3f}"),
    ("vessel_share", "vessel share of brain", "1.1-1.2 % (realistic)", "{:.2%}"),
    ("threshold_dice", "oracle global-threshold Dice", "(U-Net must beat it)", "{:.3f}"),
]


def properties(vol: phantom.Phantom, spacing) -> dict:
    """The table's properties of one volume (see module docstring)."""
    label, mask = vol.label > 0, vol.mask > 0
    tissue = vol.image[mask & ~label]
    median = float(np.median(tissue))
    edt_voxels = ndimage.distance_transform_edt(label)
    centre = label & (edt_voxels >= ndimage.maximum_filter(edt_voxels, size=3))
    thin = np.zeros_like(label)
    for axis in range(3):
        padded = np.pad(label, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        before = np.take(padded, np.arange(0, label.shape[axis]), axis=axis)
        after = np.take(padded, np.arange(2, label.shape[axis] + 2), axis=axis)
        thin |= ~before & ~after
    components, _ = ndimage.label(label, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    edt_mm = ndimage.distance_transform_edt(label, sampling=spacing)
    radius = ndimage.maximum_filter(edt_mm, size=3) - 0.5 * float(np.mean(spacing))
    norm = patches.fit_normalization(vol.image, vol.mask, "percentile")
    fov = np.asarray(vol.image.shape) * np.asarray(spacing)
    return {
        "fov_x": fov[0], "fov_y": fov[1], "fov_slab": fov[2],
        "thin": float((centre & thin).sum() / max(centre.sum(), 1)),
        "specks": float(sizes[sizes < 10].sum() / max(label.sum(), 1)),
        "radius_gt_1mm": float(np.mean(radius[label] > 1.0)),
        "invisible": float(np.mean(vol.image[label] <= np.percentile(tissue, 95))),
        "vessel_ratio": float(np.percentile(vol.image[label], 99.95) / median),
        "tissue_normalised": float(norm.apply(np.array([median], np.float32))[0]),
        "vessel_share": float(label.sum() / mask.sum()),
        "threshold_dice": seg_metrics.best_threshold_dice(vol.image, vol.label, vol.mask)[1],
    }


def _cell(fmt: str, values) -> str:
    values = [np.atleast_1d(v) for v in values]
    lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else \
        f"{fmt.format(lo)} .. {fmt.format(hi)}"


def save_mips(volumes, spacing, path: str):
    """Axial (top) and coronal (bottom) MIPs of the volumes side by side, each scaled to its
    own 99.99th percentile."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(volumes), figsize=(5 * len(volumes), 8.5),
                             gridspec_kw={"height_ratios": [1.7, 1.0]}, squeeze=False)
    for j, (pid, vol) in enumerate(volumes):
        top = float(np.percentile(vol.image, 99.99))
        axes[0, j].imshow(vol.image.max(axis=2).T, origin="lower", cmap="gray", vmax=top,
                          aspect=spacing[1] / spacing[0])
        axes[1, j].imshow(vol.image.max(axis=1).T, origin="lower", cmap="gray", vmax=top,
                          aspect=spacing[2] / spacing[0])
        axes[0, j].set_title(f"{pid}: axial MIP")
        axes[1, j].set_title(f"{pid}: coronal MIP")
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv):
    del argv
    config = phantom.preset(FLAGS.preset)
    ids = phantom.case_ids(FLAGS.num_patients, 0)["train"]
    measured, seconds, keep = [], [], []
    for index, pid in enumerate(ids):
        start = time.time()
        vol = phantom.make_volume(phantom.patient_seed(FLAGS.seed, index), config)
        seconds.append(time.time() - start)
        measured.append(properties(vol, config.spacing))
        if len(keep) < 3:
            keep.append((pid, vol))
    lines = [
        f"phantom preset {FLAGS.preset}: {len(ids)} patients (seed {FLAGS.seed}), shape "
        f"{config.shape}, voxel {' x '.join(f'{s:g}' for s in config.spacing)} mm "
        f"(real TOF: 0.3-0.5 in-plane x 0.5-0.8 mm), {config.field_strength:g} T",
        f"generation: {np.mean(seconds):.1f} s per volume (min {min(seconds):.1f}, max "
        f"{max(seconds):.1f}) in one process",
        "",
        f"{'property':<42}{'phantom (range over patients)':>32}   real TOF-MRA",
    ]
    for key, name, real, fmt in ROWS:
        lines.append(f"{name:<42}{_cell(fmt, [m[key] for m in measured]):>32}   {real}")
    lines += ["", "per patient:"]
    for pid, m in zip(ids, measured):
        lines.append(f"  {pid}: " + ", ".join(
            f"{key} {fmt.format(float(np.mean(m[key])))}" for key, _, _, fmt in ROWS[3:]))
    dice = np.mean([m["threshold_dice"] for m in measured])
    lines.append(f"oracle_threshold_dice_mean {dice:.3f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    atomic.write_text_atomic(FLAGS.output, text)
    if FLAGS.mips:
        save_mips(keep, config.spacing, FLAGS.mips)
        print(f"MIPs: {FLAGS.mips}")


if __name__ == "__main__":
    app.run(main)
