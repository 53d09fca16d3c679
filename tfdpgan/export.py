"""Re-export a run's generator from its latest checkpoint.

  python -m tfdpgan.export --workdir=W

Writes W/generator (SavedModel, ``serving_default``: latent -> image, label) with the privacy
card and the data-independent normalisation in assets.extra/ (tfdpgan.gan.export).
"""
from absl import app, flags

from tfdpgan import cli
from tfdpgan.gan import run

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    cli.FlagDefiner(fv).DEFINE_string("workdir", None,
                                      "Training workdir to export the generator of.")


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    print(f"exported {run.export_from_workdir(FLAGS.workdir)}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
