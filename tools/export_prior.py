"""Build the built-in public prior (tfdpgan/gan/builtin_prior/) from a finished non-private
phantom run, the one ``--init_from=builtin`` (the demo's default) starts from::

    python -m tfdpgan.train --flagfile=flags/pretrain_phantom.cfg      # ~37 min, no DP
    python tools/export_prior.py --workdir=runs/prior_phantom

A prior may be trained in stages, e.g. further on other public volumes: ``python -m
tfdpgan.train --flagfile=flags/pretrain_phantom.cfg --init_from=runs/prior_phantom
--critic_frozen_stages=0 --phantom_seed=2000 --workdir=runs/prior_stage2``, then export
``runs/prior_stage2`` (issue #11: at 24000 more steps on 40 new patients this scored worse by
FID, so the shipped prior is stage 1 alone). Writes weights.npz (generator, critic
and EMA generator, layer by layer) and prior.json (the command, the run's settings, its
networks, and the SHA-256 of every phantom volume it trained on, in every stage: a run that
continued another prior (--init_from) is described with it, so that a private run on any of
those volumes is refused). A private run, or one on data other than
the built-in phantom, is refused: only the phantom is known to be public.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import cli  # noqa: E402
from tfdpgan.gan import priors  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("workdir", "runs/prior_phantom", "The finished prior run.")
    flags.DEFINE_string("out", priors.BUILTIN_DIR, "Output folder (replaced atomically).")
    flags.DEFINE_string("command", "python -m tfdpgan.train "
                        "--flagfile=flags/pretrain_phantom.cfg", "How the run was made "
                        "(recorded in prior.json).")


def main(argv):
    del argv
    meta = priors.export_prior(FLAGS.workdir, FLAGS.out, FLAGS.command)
    print(f"wrote {FLAGS.out}: {meta['data']}, {meta['critic_steps']} critic steps, networks "
          f"{meta['networks']}")


if __name__ == "__main__":
    cli.run(main, define_flags)
