"""Convert labelled volumes into TFRecord patch shards plus dataset.json.

  python -m tfdpgan.convert --data_dir=DIR --out_dir=REC
  python -m tfdpgan.convert --manifest=cases.csv --out_dir=REC
  (tools/nifti_to_tfrecord.py is the same command)

DIR is an nnU-Net style folder (imagesTr/ labelsTr/ [masksTr/], optional imagesTs/ labelsTs/
[masksTs/] for held-out test patients; nnU-Net v2 raw folders with <case>_0000 images and a
dataset.json as they are); NIfTI, MetaImage, NRRD files or a DICOM series folder per patient.
The manifest has columns patient_id,image,label[,mask]. Every case is checked before anything
is written; the output appears only when complete (tfdpgan.data.convert).
"""
import os

from absl import app, flags

from tfdpgan import cli, errors
from tfdpgan.data import convert, normalization, shards, volumes

FLAGS = flags.FLAGS
_RECORDED = ("data_dir", "manifest", "out_dir", "patch_size", "patches_per_patient",
             "vessel_fraction", "val_fraction", "normalization", "percentile",
             "intensity_range", "num_shards", "seed", "include_test", "vessel_labels",
             "ignore", "compression")


def define_flags(fv: flags.FlagValues = FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("data_dir", None, "nnU-Net style input folder (imagesTr/, labelsTr/, "
                       "...; nnU-Net v2 raw folders as they are).")
    fdef.DEFINE_string("manifest", None, "CSV with columns patient_id,image,label[,mask] "
                       "(instead of --data_dir; all its cases are training cases).")
    fdef.DEFINE_string("out_dir", None, "Output folder for the shards and dataset.json.")
    fdef.DEFINE_integer("patch_size", 96, "Side of the square axial patches, in voxels.")
    fdef.DEFINE_integer("patches_per_patient", 1000, "Patches sampled per patient.")
    fdef.DEFINE_float("vessel_fraction", 0.5,
                      "Share of patches centred on a random vessel voxel (the rest on a random "
                      "in-brain voxel).")
    fdef.DEFINE_float("val_fraction", 0.1, "Share of training patients held out for "
                      "validation.")
    fdef.DEFINE_enum("normalization", "percentile", list(normalization.NORMALIZATIONS),
                     "percentile: per patient, [0, p-th percentile of in-brain voxels] -> "
                     "[-1, 1]; fixed: the data-independent --intensity_range -> [-1, 1].")
    fdef.DEFINE_float("percentile", 99.95, "Upper percentile for --normalization=percentile.")
    fdef.DEFINE_list("intensity_range", None, "low,high raw intensities for "
                     "--normalization=fixed.")
    fdef.DEFINE_integer("num_shards", 4, "Shards per split (at most one per patient).")
    fdef.DEFINE_integer("seed", 0, "Seed of the patient split and the patch sampling.")
    fdef.DEFINE_boolean("include_test", True, "Also convert imagesTs/ (split 'test') if "
                        "present.")
    fdef.DEFINE_boolean("overwrite", False, "Replace an existing --out_dir (atomically).")
    fdef.DEFINE_list("vessel_labels", None, "Label values that mark vessels, e.g. 1,2,3 "
                     "(default: every non-zero value; a label whose only non-zero value is "
                     "not 1 or 255 must be named here).")
    fdef.DEFINE_multi_string("ignore", [], "Glob pattern (file name or imagesTr/name) of "
                             "files in the input folders to leave out on purpose; repeatable. "
                             "Any other unknown file is an error.")
    fdef.DEFINE_integer("workers", 0, "Worker processes converting patients (0: all cores). "
                        "The output does not depend on it.")
    fdef.DEFINE_enum("compression", shards.DEFAULT_GZIP_MODE, sorted(shards.GZIP_MODES),
                     "How the GZIP shards are deflated: fast (run-length matching, the "
                     "default), small (zlib level 6, ~1 %% smaller, ~4x slower), none "
                     "(stored, fastest, ~1.5x larger).")


def _numbers(name: str, values, kind):
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        raise errors.SettingsError(f"--{name} must be a list of numbers, got "
                                   f"{','.join(values)!r}") from None


def config_from_flags(fv: flags.FlagValues = FLAGS) -> convert.ConvertConfig:
    intensity_range = None
    if fv.intensity_range:
        intensity_range = _numbers("intensity_range", fv.intensity_range, float)
        if len(intensity_range) != 2:
            raise errors.SettingsError("--intensity_range must be two numbers: low,high")
    return convert.ConvertConfig(
        patch_size=fv.patch_size, patches_per_patient=fv.patches_per_patient,
        vessel_fraction=fv.vessel_fraction, val_fraction=fv.val_fraction,
        normalization=fv.normalization, percentile=fv.percentile,
        intensity_range=intensity_range, num_shards=fv.num_shards, seed=fv.seed,
        vessel_labels=_numbers("vessel_labels", fv.vessel_labels, int)
        if fv.vessel_labels else None,
        compression=fv.compression)


def main(argv):
    del argv
    if bool(FLAGS.data_dir) == bool(FLAGS.manifest):
        raise app.UsageError("give exactly one of --data_dir or --manifest")
    if not FLAGS.out_dir:
        raise app.UsageError("--out_dir is required")
    config = config_from_flags(FLAGS)
    source_labels = None
    if FLAGS.manifest:
        train, test = volumes.read_manifest(FLAGS.manifest), []
    else:
        if not os.path.isdir(FLAGS.data_dir):
            raise errors.MissingFileError(f"{FLAGS.data_dir}: no such folder")
        train = volumes.find_cases(FLAGS.data_dir, "Tr", FLAGS.ignore)
        if not train:
            raise errors.InputDataError(f"{FLAGS.data_dir}: no training cases found (expected "
                                        f"imagesTr/ and labelsTr/ with one file per patient)")
        test = volumes.find_cases(FLAGS.data_dir, "Ts", FLAGS.ignore) \
            if FLAGS.include_test else []
        source_labels = (volumes.read_nnunet_json(FLAGS.data_dir) or {}).get("labels")
    info = convert.convert(train, FLAGS.out_dir, config, test_cases=test,
                           converter_flags={n: FLAGS[n].value for n in _RECORDED},
                           overwrite=FLAGS.overwrite, workers=FLAGS.workers or None,
                           source_labels=source_labels)
    print(f"wrote {FLAGS.out_dir}: " + ", ".join(
        f"{split} {s['num_patients']} patients / {s['num_patches']} patches"
        for split, s in info["splits"].items() if s["num_patients"]))
    if info["warnings"]:
        print(f"{len(info['warnings'])} warning(s), also in dataset.json:")
        for warning in info["warnings"]:
            print(f"  warning: {warning}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
