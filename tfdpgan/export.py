"""Re-export a run's generator from its latest checkpoint, or copy what may be shared.

  python -m tfdpgan.export --workdir=W                  # re-export W/release/generator
  python -m tfdpgan.export --workdir=W --release=DIR    # copy W's release/ to DIR

Re-export writes W/release/generator (SavedModel, ``serving_default``: latent -> image, label)
with the privacy card and the data-independent normalisation in assets.extra/
(tfdpgan.gan.export). ``--release`` copies exactly what the DP guarantee covers (the generator
with its card, privacy.json, PRIVACY.md, samples.png, the DP-safe TensorBoard events) of a
FINISHED run to a new folder DIR, owner-only and atomically; it refuses an existing DIR, an
unfinished run, and any file outside that set (nothing is written then). An old flat workdir
releases its generator, card and samples.png only (its event files hold private statistics).
"""
from absl import app, flags

from tfdpgan import cli, workdir
from tfdpgan.gan import export, run

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("workdir", None, "Training workdir to export the generator of.")
    fdef.DEFINE_string("release", None, "Copy the workdir's release (what the DP guarantee "
                       "covers, nothing else) of a finished run to this NEW folder instead "
                       "of re-exporting.")


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    if FLAGS.release:
        copied = export.copy_release(FLAGS.workdir, FLAGS.release)
        note = (" (old flat workdir: TensorBoard events left behind)"
                if workdir.is_flat(FLAGS.workdir) else "")
        print(f"released {len(copied)} files to {FLAGS.release}{note}")
        return
    print(f"exported {run.export_from_workdir(FLAGS.workdir)}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
