"""Sample a synthetic data set from an exported generator.

  python -m tfdpgan.sample --generator=W/generator --num=1000 --out=DIR --format=tfrecord

Formats: ``tfrecord`` (the real-data schema with patient_id "synthetic", plus a dataset.json
with split "train", so anything that reads real patches reads these), ``nifti`` (image.nii.gz
and label.nii.gz, the patches stacked along axis 2), ``png`` (grids of image | label overlay).
Sampling is post-processing of the generator, so the output carries the generator's privacy
guarantee (its privacy.json is copied beside). Outputs appear atomically.
"""
from absl import app, flags

from tfdpgan import cli
from tfdpgan.gan import sample

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("generator", None, "Exported generator SavedModel (WORKDIR/release/generator, or the workdir).")
    fdef.DEFINE_integer("num", 1000, "Number of synthetic image+label pairs.")
    fdef.DEFINE_string("out", None, "Output folder.")
    fdef.DEFINE_enum("format", "tfrecord", list(sample.FORMATS), "Output format.")
    fdef.DEFINE_integer("seed", 0, "Seed of the latent vectors.")
    fdef.DEFINE_boolean("overwrite", False, "Replace an existing --out.")


def main(argv):
    del argv
    if not FLAGS.generator or not FLAGS.out:
        raise app.UsageError("--generator and --out are required")
    images, _ = sample.sample_to(FLAGS.generator, FLAGS.num, FLAGS.out, FLAGS.format,
                                 FLAGS.seed, FLAGS.overwrite)
    print(f"wrote {len(images)} synthetic pairs ({FLAGS.format}) to {FLAGS.out}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
