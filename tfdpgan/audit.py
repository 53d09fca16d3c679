"""Measure what a trained run leaks: membership inference and memorisation.

  python -m tfdpgan.audit --workdir=W [--num_synthetic=5000 --max_patches=10000 --seed=0]

Writes ``W/private/audit/`` (atomically, owner-only: audit.json, AUDIT.md, near_copies.png;
``W/audit/`` in an old flat workdir) and prints a summary. THIS IS A MEASUREMENT FOR THE DATA
HOLDER, NOT A RELEASE: it reads the private training patches, the held-out patients and the
critic checkpoint; it stays in W/private/ with the checkpoints.
What is measured: tfdpgan.leakage.audit. On a run trained on a canaried data set
(tfdpgan.leakage.canaries.make_canary_dataset) it also measures the canaries' exposure.
"""
import os

from absl import flags

from tfdpgan import cli, workdir
from tfdpgan.leakage import audit, report

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    d = audit.AuditConfig(workdir="")
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("workdir", None, "Training workdir to audit.")
    fdef.DEFINE_integer("num_synthetic", d.num_synthetic, "Synthetic pairs to sample.")
    fdef.DEFINE_integer("max_patches", d.max_patches, "At most this many random patches per "
                        "split (train, val, test), the same number from every patient; "
                        "0 = all.")
    fdef.DEFINE_integer("seed", d.seed, "Seed of the subsampling and of the latents.")
    fdef.DEFINE_boolean("calibrate", d.calibrate, "Also the calibrated critic attack (8 "
                        "critic evaluations per patch).")
    fdef.DEFINE_integer("canary_base_patches", d.canary_base_patches, "Canaried data sets: "
                        "held-out patches that carry each canary candidate for the critic's "
                        "canary score.")
    fdef.DEFINE_boolean("overwrite", False, "Replace an existing W/private/audit/.")


def config_from_flags(fv: flags.FlagValues = FLAGS) -> audit.AuditConfig:
    return audit.AuditConfig(workdir=fv.workdir or "", num_synthetic=fv.num_synthetic,
                             max_patches=fv.max_patches, seed=fv.seed,
                             calibrate=fv.calibrate, overwrite=fv.overwrite,
                             canary_base_patches=fv.canary_base_patches)


def main(argv):
    del argv
    config = config_from_flags()
    result = audit.audit_workdir(config)
    print(report.summary(result))
    out = workdir.path(config.workdir, workdir.AUDIT)
    print(f"wrote {os.path.join(out, report.AUDIT_JSON)}, {os.path.join(out, report.AUDIT_MD)}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
