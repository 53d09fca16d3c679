"""Convert labelled NIfTI volumes into TFRecord patch shards plus dataset.json.

  python tools/nifti_to_tfrecord.py --data_dir=DIR --out_dir=REC
  python tools/nifti_to_tfrecord.py --manifest=cases.csv --out_dir=REC

DIR is an nnU-Net style folder (imagesTr/ labelsTr/ [masksTr/], optional imagesTs/ labelsTs/
[masksTs/] for held-out test patients); the manifest has columns patient_id,image,label[,mask].
Every case is checked before anything is written; the output appears only when complete.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan.data import convert, volumes  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "nnU-Net style input folder (imagesTr/, labelsTr/, ...).")
flags.DEFINE_string("manifest", None, "CSV with columns patient_id,image,label[,mask] "
                    "(instead of --data_dir; all its cases are training cases).")
flags.DEFINE_string("out_dir", None, "Output folder for the shards and dataset.json.")
flags.DEFINE_integer("patch_size", 96, "Side of the square axial patches, in voxels.")
flags.DEFINE_integer("patches_per_patient", 1000, "Patches sampled per patient.")
flags.DEFINE_float("vessel_fraction", 0.5,
                   "Share of patches centred on a random vessel voxel (the rest on a random "
                   "in-brain voxel).")
flags.DEFINE_float("val_fraction", 0.1, "Share of training patients held out for validation.")
flags.DEFINE_enum("normalization", "percentile", ["percentile", "fixed"],
                  "percentile: per patient, [0, p-th percentile of in-brain voxels] -> [-1, 1]; "
                  "fixed: the data-independent --intensity_range -> [-1, 1].")
flags.DEFINE_float("percentile", 99.95, "Upper percentile for --normalization=percentile.")
flags.DEFINE_list("intensity_range", None, "low,high raw intensities for "
                  "--normalization=fixed.")
flags.DEFINE_integer("num_shards", 4, "Shards per split (at most one per patient).")
flags.DEFINE_integer("seed", 0, "Seed of the patient split and the patch sampling.")
flags.DEFINE_boolean("include_test", True, "Also convert imagesTs/ (split 'test') if present.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out_dir (atomically).")


def main(argv):
    del argv
    if bool(FLAGS.data_dir) == bool(FLAGS.manifest):
        raise app.UsageError("give exactly one of --data_dir or --manifest")
    if not FLAGS.out_dir:
        raise app.UsageError("--out_dir is required")
    intensity_range = None
    if FLAGS.intensity_range:
        try:
            low, high = (float(v) for v in FLAGS.intensity_range)
        except ValueError:
            raise app.UsageError("--intensity_range must be two numbers: low,high")
        intensity_range = (low, high)
    config = convert.ConvertConfig(
        patch_size=FLAGS.patch_size, patches_per_patient=FLAGS.patches_per_patient,
        vessel_fraction=FLAGS.vessel_fraction, val_fraction=FLAGS.val_fraction,
        normalization=FLAGS.normalization, percentile=FLAGS.percentile,
        intensity_range=intensity_range, num_shards=FLAGS.num_shards, seed=FLAGS.seed)
    converter_flags = {name: FLAGS[name].value for name in (
        "data_dir", "manifest", "out_dir", "patch_size", "patches_per_patient",
        "vessel_fraction", "val_fraction", "normalization", "percentile", "intensity_range",
        "num_shards", "seed", "include_test")}
    try:
        if FLAGS.manifest:
            train, test = volumes.read_manifest(FLAGS.manifest), []
        else:
            if not os.path.isdir(FLAGS.data_dir):
                raise volumes.InputError(f"{FLAGS.data_dir}: no such folder")
            train = volumes.find_cases(FLAGS.data_dir, "Tr")
            test = volumes.find_cases(FLAGS.data_dir, "Ts") if FLAGS.include_test else []
        info = convert.convert(train, FLAGS.out_dir, config, test_cases=test,
                               converter_flags=converter_flags, overwrite=FLAGS.overwrite)
    except (volumes.InputError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {FLAGS.out_dir}: " + ", ".join(
        f"{split} {s['num_patients']} patients / {s['num_patches']} patches"
        for split, s in info["splits"].items() if s["num_patients"]))


if __name__ == "__main__":
    flags.mark_flags_as_mutual_exclusive(["data_dir", "manifest"])
    app.run(main)
