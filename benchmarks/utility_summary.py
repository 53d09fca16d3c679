"""The utility benchmark's targets (issue #11), for one run or over repeated runs.

  python benchmarks/utility_summary.py benchmarks/results/utility_builtin.json \
      benchmarks/results/utility_builtin_rep2.json   # each row and target: mean ± SD over runs

A run is the JSON that benchmarks/utility.py writes beside its table (its rows). One run's DSC
moves by several hundredths with the seeds alone (the generator's training and the U-Net's),
so a target is only worth claiming when it holds over repeated runs: this prints, per row, the
mean ± SD over runs and, per target, every run's value and in how many runs it was met.
Runs are comparable only when scored on the same test volumes (``test_data`` of the rows)
with the same evaluation settings (``evaluation``: synthetic pairs, U-Nets per row, U-Net
epochs and steps, grid, selection, FID samples); others are refused. Where each run was
computed (``host``: CPU, instruction set, TensorFlow) is listed, because U-Net training is
reproducible bit for bit only on one kind of CPU (tfdpgan.evaluation.report.host). A row
absent from some runs (e.g. ε = 10) is averaged over those that have it, and says how many.
Reads results only; trains nothing.
"""
import json
import math
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic, cli, errors  # noqa: E402
from tfdpgan.evaluation.report import format_mean_sd, host_text  # noqa: E402

PRIOR = "prior (public only, ε = 0)"
REAL = "U-Net on real patches (upper bound)"
THRESHOLD = "validation-chosen threshold"
INF, EPS3, EPS1 = "ε = inf per patch", "ε = 3 per patch", "ε = 1 per patch"

# name: (the bar, is it met by value, digits shown); the last lines of every utility table
TARGETS = {
    "dsc_ratio_inf_over_real": ("≥ 0.95", lambda v: v >= 0.95, 3),
    "dsc_ratio_eps3_over_inf": ("≥ 0.9", lambda v: v >= 0.9, 3),
    "dsc_eps1_minus_threshold": ("> 0", lambda v: v > 0, 3),
    "fid_ratio_inf_over_floor": ("≤ 3", lambda v: v <= 3, 2),
}


def targets(rows: list) -> dict:
    """The four target values of one run's rows (None where a row is missing)."""
    by = {r["row"]: r for r in rows}

    def get(name, key="dsc_mean"):
        return (by.get(name) or {}).get(key)

    def ratio(a, b):
        return None if a is None or not b else a / b

    eps1, threshold = get(EPS1), get(THRESHOLD)
    return {
        "dsc_ratio_inf_over_real": ratio(get(INF), get(REAL)),
        "dsc_ratio_eps3_over_inf": ratio(get(EPS3), get(INF)),
        "dsc_eps1_minus_threshold": None if eps1 is None or threshold is None
        else eps1 - threshold,
        "fid_ratio_inf_over_floor": ratio(get(INF, "fid"), get(INF, "fid_real_floor")),
    }


def mean_sd(values: list):
    """(mean, sample SD) of the values that are numbers; SD None for fewer than two."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def load_runs(paths: list) -> list:
    """The rows of each utility JSON; refuses unreadable files, runs on other test volumes and
    runs evaluated with other settings (also a file whose rows disagree on them)."""
    runs, tests, evaluations = [], {}, {}
    for path in paths:
        try:
            with open(path) as f:
                rows = json.load(f)
        except FileNotFoundError:
            raise errors.MissingFileError(f"{path}: no such utility result") from None
        except (OSError, ValueError) as e:
            raise errors.InputDataError(f"{path}: not a utility result JSON ({e})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "row" in r
                                                 for r in rows):
            raise errors.InputDataError(f"{path}: not a utility result (a list of rows with "
                                        f"'row' names, as benchmarks/utility.py writes)")
        test = {r.get("test_data") for r in rows}
        if len(test) != 1 or None in test:
            raise errors.InputDataError(f"{path}: its rows do not name one set of test volumes "
                                        f"(test_data), so it cannot be compared with others")
        tests[path] = test.pop()
        setups = {json.dumps(r.get("evaluation"), sort_keys=True) for r in rows}
        if len(setups) != 1:
            raise errors.InputDataError(f"{path}: its rows were evaluated with different "
                                        f"settings (evaluation), so it is not one run")
        evaluations[path] = setups.pop()
        runs.append(rows)
    if len(set(tests.values())) > 1:
        listing = "; ".join(f"{p}: {t}" for p, t in tests.items())
        raise errors.InputDataError(f"the runs were scored on different test volumes ({listing})")
    if len(set(evaluations.values())) > 1:
        listing = "; ".join(f"{p}: {e}" for p, e in evaluations.items())
        raise errors.InputDataError(f"the runs were evaluated with different settings "
                                    f"(evaluation; null = not recorded): {listing}")
    return runs


def _evaluation_text(evaluation) -> str:
    if not evaluation:
        return "not recorded"
    e = evaluation
    return (f"{e['num_synthetic']} synthetic pairs, {e['repeats']} U-Net(s) per row of "
            f"{e['unet_epochs']} x {e['unet_steps_per_epoch']} steps per grid point (grid "
            f"{e['grid']}), selection {e['selection']}, FID on {e['fid_samples']} images")


def _hosts_text(runs: list) -> str:
    """Each distinct host (report.host of the runs' rows) with the runs (1-based) it computed."""
    where = {}
    for i, rows in enumerate(runs, 1):
        for r in rows:
            name = host_text(r.get("host"))
            if i not in where.setdefault(name, []):
                where[name].append(i)
    return "; ".join(f"{name}: run{'s' if len(ids) > 1 else ''} "
                     f"{', '.join(map(str, ids))}" for name, ids in where.items())


def summary(runs: list, names: list) -> str:
    """Text: every row's DSC, HD95 and FID as mean ± SD over the runs that have it, then each
    target's mean ± SD, its value in every run and in how many runs it was met."""
    order = []
    for rows in runs:
        order += [r["row"] for r in rows if r["row"] not in order]
    digits = {"dsc_mean": 3, "hd95_mean_mm": 1, "fid": 1}
    lines = [f"Utility over {len(runs)} runs of benchmarks/utility.py ({', '.join(names)}), "
             f"the same test volumes ({runs[0][0]['test_data']}): mean ± SD over runs.",
             f"Evaluation: {_evaluation_text(runs[0][0].get('evaluation'))}.",
             f"Computed on: {_hosts_text(runs)}.", "",
             f"{'row':38s} {'runs':>4s} {'DSC':>15s} {'HD95 mm':>13s} {'FID':>13s}  DSC by run"]
    for name in order:
        found = [next((r for r in rows if r["row"] == name), None) for rows in runs]
        have = [r for r in found if r is not None]
        cells = []
        for key, d in digits.items():
            mean, sd = mean_sd([r.get(key) for r in have])
            cells.append("-" if mean is None else format_mean_sd(mean, sd, d))
        by_run = " ".join("-" if r is None or r.get("dsc_mean") is None
                          else f"{r['dsc_mean']:.3f}" for r in found)
        lines.append(f"{name:38s} {len(have):>4d} {cells[0]:>15s} {cells[1]:>13s} "
                     f"{cells[2]:>13s}  {by_run}")
    lines.append("")
    per_run = [targets(rows) for rows in runs]
    for name, (bar, met, d) in TARGETS.items():
        values = [t[name] for t in per_run]
        known = [v for v in values if v is not None]
        mean, sd = mean_sd(known)
        text = "-" if mean is None else format_mean_sd(mean, sd, d)
        by_run = " ".join("-" if v is None else f"{v:.{d}f}" for v in values)
        lines.append(f"{name} {text} (runs: {by_run}; target {bar}: met in "
                     f"{sum(bool(met(v)) for v in known)} of {len(known)})")
    return "\n".join(lines) + "\n"


def define_flags(fv: flags.FlagValues = flags.FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("output", None, "Also write the summary here.")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name one or more utility result JSONs "
                             "(benchmarks/results/utility*.json)")
    text = summary(load_runs(paths), [os.path.basename(p) for p in paths])
    print(text, end="")
    if flags.FLAGS.output:
        atomic.write_text_atomic(flags.FLAGS.output, text)


if __name__ == "__main__":
    cli.run(main, define_flags)
