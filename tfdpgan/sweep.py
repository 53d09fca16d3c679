"""Train and evaluate DP-WGANs over privacy budgets: the utility-privacy curve.

  python -m tfdpgan.sweep --flagfile=flags/sweep_demo.cfg          # CPU demo
  python -m tfdpgan.sweep --flagfile=flags/sweep_paper.cfg --data=REC --test_data=DIR

All of train's flags apply (--epsilon and --workdir are set per ε by the sweep: --epsilons,
--sweep_dir) and all of evaluate's (--test_data takes a list). Writes <sweep_dir>/results.csv,
results.md, results.png; re-running skips finished work (tfdpgan.evaluation.sweep).
"""
import os
from typing import List, Tuple

from absl import flags

from tfdpgan import cli, errors
from tfdpgan import evaluate as evaluate_command
from tfdpgan import train as train_command
from tfdpgan.evaluation import sweep

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """train's flags, evaluate's flags (sweep variant) and the sweep's own."""
    train_command.define_flags(fv)
    evaluate_command.define_flags(fv, sweep=True)
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_list("epsilons", ["inf", "10", "3", "1"], "Privacy budgets to train "
                     "(inf = no DP); replaces --epsilon.")
    fdef.DEFINE_string("sweep_dir", os.path.join("runs", "sweep"), "Folder of the sweep: "
                       "eps_<ε>/ run folders, baselines/, results.csv|md|png.")
    fdef.DEFINE_boolean("baselines", True, "Also evaluate the U-Net trained on the real "
                        "training patches and the validation-chosen threshold.")


def train_flag_names() -> List[str]:
    """train's flags except --epsilon and --workdir (set per ε by the sweep)."""
    scratch = flags.FlagValues()
    train_command.define_flags(scratch)
    return [name for name in scratch if name not in ("epsilon", "workdir")]


def config_from_flags(fv: flags.FlagValues = FLAGS) -> Tuple[sweep.SweepConfig, str]:
    """(config, train flags as a flagfile without --epsilon/--workdir)."""
    if fv["workdir"].present:
        raise errors.SettingsError("--workdir is set per ε by the sweep; use --sweep_dir")
    if fv.strategy == "multi_worker":   # every worker would also evaluate into sweep_dir
        raise errors.SettingsError(
            "--strategy=multi_worker in a sweep: train each ε with python -m tfdpgan.train "
            "--strategy=multi_worker, then evaluate the workdirs; --strategy=mirrored works "
            "in a sweep")
    evaluation = evaluate_command.config_from_flags(fv, workdir="")
    config = sweep.SweepConfig(
        sweep_dir=fv.sweep_dir, epsilons=sweep.parse_epsilons(fv.epsilons),
        train=train_command.config_from_flags(fv), evaluation=evaluation,
        test_data=tuple(fv.test_data), baselines=fv.baselines)
    text = "".join(fv[name].serialize() + "\n" for name in train_flag_names()
                   if fv[name].value is not None)
    return config, text


def main(argv):
    del argv
    config, text = config_from_flags()
    config.evaluation.validate()
    sweep.run_sweep(config, text)


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
