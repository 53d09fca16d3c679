"""Train and evaluate DP-WGANs over privacy budgets: the utility-privacy curve.

  python -m tfdpgan.sweep --flagfile=flags/sweep_demo.cfg          # CPU demo (<= 60 min)
  python -m tfdpgan.sweep --flagfile=flags/sweep_paper.cfg --data=REC --test_data=DIR

For every ε of ``--epsilons`` (``inf`` = no DP) a generator is trained with training.train into
``<sweep_dir>/eps_<ε>`` (all of train's flags apply; --epsilon and --workdir are set by the
sweep) and evaluated with evaluate.evaluate (all of its flags apply) on every test set
(``--test_data`` folders; default the data set's own test patients) into
``eps_<ε>/eval`` (``eval_<name>`` for named test folders). With ``--baselines`` the U-Net
trained on the real training patches (upper bound) and the validation-chosen intensity
threshold are evaluated once, into ``<sweep_dir>/baselines``.

Outputs in ``<sweep_dir>``: ``results.csv`` (one row per test set and row), ``results.md``
(the table: ε, noise multiplier, ε spent, DSC ± SD, 95HD ± SD, FID) and ``results.png`` (DSC
and FID against ε; ∞ at a labelled position at the right).

Resumable: a finished training (privacy.json and generator/ present, same flags) is not
redone, an interrupted one resumes from its checkpoint (training.train), and an evaluation whose
report.json holds the same settings is not redone.
"""
import csv
import dataclasses
import io
import math
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app, flags

from tfdpgan import atomic
from tfdpgan.data import default_data
from tfdpgan.evaluation import evaluate
from tfdpgan.gan import training

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
BASELINES_DIR = "baselines"
DEFAULT_TEST_SET = "default"
CSV_COLUMNS = ("test_set", "row", "epsilon_target", "noise_multiplier", "epsilon_spent",
               "delta", "privacy_unit", "critic_steps", "dsc_mean", "dsc_sd", "hd95_mean_mm",
               "hd95_sd_mm", "hd95_num_undefined", "num_patients", "fid", "fid_real_floor",
               "selection", "eval_dir")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    sweep_dir: str
    epsilons: Tuple[float, ...]
    train: training.TrainConfig                 # template: epsilon and workdir are replaced
    evaluation: evaluate.EvalConfig          # template: workdir, out_dir, test_data replaced
    test_data: Tuple[str, ...] = ()          # () = the data set's own test patients
    baselines: bool = True


def eps_name(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def parse_epsilons(values: Sequence[str]) -> Tuple[float, ...]:
    out = []
    for value in values:
        try:
            eps = float(str(value).strip())
        except ValueError:
            raise ValueError(f"--epsilons: {value!r} is not a number or 'inf'") from None
        if not eps > 0:
            raise ValueError(f"--epsilons: ε must be positive, got {value}")
        out.append(eps)
    if not out:
        raise ValueError("--epsilons: give at least one ε")
    if len({eps_name(e) for e in out}) != len(out):
        raise ValueError(f"--epsilons: duplicate values in {list(values)}")
    return tuple(out)


def test_sets(config: SweepConfig) -> List[Tuple[str, Optional[str]]]:
    """(name, folder or None) per test set; names are unique."""
    if not config.test_data:
        return [(DEFAULT_TEST_SET, None)]
    named, seen = [], set()
    for folder in config.test_data:
        name = os.path.basename(os.path.normpath(folder)) or "test"
        base, k = name, 2
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        named.append((name, folder))
    return named


def _eval_dir(workdir: str, name: str, single_default: bool) -> str:
    return os.path.join(workdir, evaluate.EVAL_DIR if single_default
                        else f"{evaluate.EVAL_DIR}_{name}")


def _training_finished(workdir: str, flags_text: str) -> bool:
    """privacy.json is written only when a run has finished; the generator after it."""
    done = (os.path.isfile(os.path.join(workdir, "privacy.json"))
            and os.path.isfile(os.path.join(workdir, "generator", "saved_model.pb")))
    if not done:
        return False
    path = os.path.join(workdir, "flags.txt")
    if not flags_text or not os.path.isfile(path):
        return not flags_text
    with open(path) as f:
        return f.read() == flags_text


def _rows_of(report: dict, test_set: str, eval_dir: str, epsilon: Optional[float]) -> List[dict]:
    rows = []
    entries = {report["source"]: report, **report.get("baselines", {})}
    privacy = report.get("privacy") or {}
    for row, entry in entries.items():
        synthetic = row == "synthetic"
        rows.append({
            "test_set": test_set, "row": row,
            "epsilon_target": eps_name(epsilon) if synthetic and epsilon is not None else "",
            "noise_multiplier": privacy.get("noise_multiplier") if synthetic else None,
            "epsilon_spent": privacy.get("epsilon") if synthetic else None,
            "delta": privacy.get("delta") if synthetic else None,
            "privacy_unit": privacy.get("unit") if synthetic else None,
            "critic_steps": privacy.get("critic_steps") if synthetic else None,
            "dsc_mean": entry["dsc_mean"], "dsc_sd": entry["dsc_sd"],
            "hd95_mean_mm": entry["hd95_mean_mm"], "hd95_sd_mm": entry["hd95_sd_mm"],
            "hd95_num_undefined": entry["hd95_num_undefined"],
            "num_patients": entry["num_patients"],
            "fid": entry.get("fid"), "fid_real_floor": report.get("fid_real_floor"),
            "selection": report["selection"]["method"], "eval_dir": eval_dir})
    return rows


def run_sweep(config: SweepConfig, flags_text: str = "",
              progress: Callable[[str], None] = None) -> List[dict]:
    """Train and evaluate every ε (skipping finished work); write results.*; return the rows.

    ``flags_text``: the sweep's train flags as a flagfile (without --epsilon/--workdir); each
    point's flags.txt is it plus its own --epsilon and --workdir, so
    ``python -m tfdpgan.train --flagfile=<sweep_dir>/eps_3/flags.txt`` repeats that point.
    """
    say = progress or (lambda line: print(line, flush=True))
    os.makedirs(config.sweep_dir, exist_ok=True)
    if config.evaluation.fid_cache_dir is None:   # real-patch activations: once per sweep
        config = dataclasses.replace(config, evaluation=dataclasses.replace(
            config.evaluation, fid_cache_dir=os.path.join(config.sweep_dir, "fid_cache")))
    sets = test_sets(config)
    single = sets == [(DEFAULT_TEST_SET, None)]
    rows, start = [], time.time()
    total = len(config.epsilons) + (1 if config.baselines else 0)
    point_seconds = []
    for i, eps in enumerate(config.epsilons, start=1):
        t0 = time.time()
        name = eps_name(eps)
        workdir = os.path.join(config.sweep_dir, f"eps_{name}")
        point_flags = (flags_text + f"--epsilon={name}\n--workdir={workdir}\n"
                       if flags_text else "")
        tag = f"[sweep {i}/{total}] ε={name}"
        if _training_finished(workdir, point_flags):
            say(f"{tag}: training finished earlier, not redone ({workdir})")
        else:
            say(f"{tag}: training into {workdir} ...")
            t = time.time()
            card = training.train(dataclasses.replace(config.train, epsilon=eps, workdir=workdir),
                               point_flags)
            spent = "∞" if card["epsilon"] is None else f"{card['epsilon']:.3f}"
            say(f"{tag}: trained ({card['critic_steps']} critic steps, ε spent {spent}) in "
                f"{time.time() - t:.0f} s")
        for set_name, folder in sets:
            out_dir = _eval_dir(workdir, set_name, single)
            ev = dataclasses.replace(config.evaluation, workdir=workdir, out_dir=out_dir,
                                     data=config.train.data, test_data=folder, synthetic=None,
                                     real_train=None, threshold_baseline=False)
            rows += _rows_of(_evaluate(ev, tag, set_name, say), set_name, out_dir, eps)
        point_seconds.append(time.time() - t0)
        left = total - i
        say(f"{tag}: done in {point_seconds[-1]:.0f} s; {time.time() - start:.0f} s elapsed"
            + (f", ~{left * sum(point_seconds) / len(point_seconds):.0f} s left" if left else ""))
        _write_results(config, rows)
    if config.baselines:
        tag = f"[sweep {total}/{total}] baselines"
        workdir = os.path.join(config.sweep_dir, BASELINES_DIR)
        rec_dir = config.train.data or default_data.prepare(config.train.phantom,
                                                            config.train.cache_dir)[1]
        for set_name, folder in sets:
            out_dir = _eval_dir(workdir, set_name, single)
            ev = dataclasses.replace(
                config.evaluation, workdir=workdir, out_dir=out_dir, data=rec_dir,
                test_data=folder, synthetic=None,
                real_train=config.evaluation.real_train or rec_dir, threshold_baseline=True)
            rows += _rows_of(_evaluate(ev, tag, set_name, say), set_name, out_dir, None)
        _write_results(config, rows)
    say(f"[sweep] finished in {time.time() - start:.0f} s: "
        f"{os.path.join(config.sweep_dir, RESULTS_MD)}")
    return rows


def _evaluate(ev: evaluate.EvalConfig, tag: str, set_name: str, say) -> dict:
    old = evaluate.read_report(ev.out_dir)
    t = time.time()
    report = evaluate.evaluate(ev, reuse=True)
    if old is not None and old.get("created") == report.get("created"):
        say(f"{tag}: evaluation on test set '{set_name}' finished earlier, not redone")
    else:
        say(f"{tag}: evaluated on test set '{set_name}' in {time.time() - t:.0f} s: DSC "
            f"{evaluate.format_mean_sd(report['dsc_mean'], report['dsc_sd'])}, FID "
            f"{evaluate.format_number(report['fid'])}")
    return report


# --- outputs -------------------------------------------------------------------------------

def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _write_results(config: SweepConfig, rows: List[dict]):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    atomic.write_text_atomic(os.path.join(config.sweep_dir, RESULTS_CSV), buffer.getvalue())
    atomic.write_text_atomic(os.path.join(config.sweep_dir, RESULTS_MD), render_markdown(rows))
    plot(rows, os.path.join(config.sweep_dir, RESULTS_PNG))


ROW_LABELS = {"real_train": "real training patches (upper bound)",
              "threshold": "intensity threshold (validation-chosen)"}


def render_markdown(rows: List[dict]) -> str:
    f = lambda x, d=3: "n/a" if x is None or x == "" else f"{x:.{d}f}"
    pm = lambda m, s, d=3: "n/a" if m is None else f(m, d) + ("" if s is None else f" ± {f(s, d)}")
    lines = ["# Utility against privacy", ""]
    for test_set in dict.fromkeys(r["test_set"] for r in rows):
        subset = [r for r in rows if r["test_set"] == test_set]
        floor = next((r["fid_real_floor"] for r in subset if r["fid_real_floor"] is not None),
                     None)
        n = subset[0]["num_patients"]
        lines += [f"## Test set: {test_set} ({n} patient{'s' if n != 1 else ''})", "",
                  "| training data | ε (target) | noise multiplier | ε spent (δ) | DSC | "
                  "95HD mm | FID |", "|---|---|---|---|---|---|---|"]
        for r in subset:
            if r["row"] == "synthetic":
                what = "synthetic"
                target = "∞" if r["epsilon_target"] == "inf" else r["epsilon_target"]
                spent = ("∞ (no DP)" if r["epsilon_spent"] is None else
                         f"{r['epsilon_spent']:.3f} (δ = {r['delta']:.2g})")
                sigma = "0" if not r["noise_multiplier"] else f(r["noise_multiplier"], 4)
            else:
                what, target, spent, sigma = ROW_LABELS.get(r["row"], r["row"]), "", "", ""
            hd = pm(r["hd95_mean_mm"], r["hd95_sd_mm"], 2)
            if r["hd95_num_undefined"]:
                hd += f" ({r['hd95_num_undefined']} undefined)"
            lines.append(f"| {what} | {target} | {sigma} | {spent} | "
                         f"{pm(r['dsc_mean'], r['dsc_sd'])} | {hd} | {f(r['fid'], 2)} |")
        lines += ["", f"FID floor (real training vs real test patches): {f(floor, 2)}.", ""]
    methods = sorted({r["selection"] for r in rows})
    lines += ["Mean ± SD over test patients. U-Net model selection: "
              + ", ".join(f"`{m}`" for m in methods) + "."]
    if "real_val" in methods:
        lines += ["", "Selection on the real validation patients (`real_val`, as in Kossen et "
                  "al. 2022) uses private data outside the DP guarantee; the evaluation itself "
                  "uses the real test patients. These numbers are for internal use."]
    lines += ["", "Per-run details: `eval*/REPORT.md` in each run folder."]
    return "\n".join(lines) + "\n"


def _x_positions(epsilons: Sequence[float]):
    """x of each ε on a log10 axis; ∞ one decade (at least) right of the largest finite ε."""
    finite = [math.log10(e) for e in epsilons if math.isfinite(e)]
    right = (max(finite) + max(1.0, 0.25 * (max(finite) - min(finite)))) if finite else 0.0
    return lambda e: math.log10(e) if math.isfinite(e) else right


def plot(rows: List[dict], path: str):
    """DSC (± SD) and FID against ε; ∞ at a labelled position at the right; baselines and the
    FID floor as horizontal lines. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    synthetic = [r for r in rows if r["row"] == "synthetic"]
    epsilons = sorted({float(r["epsilon_target"]) for r in synthetic})
    xpos = _x_positions(epsilons) if epsilons else (lambda e: 0.0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"real_train": "--", "threshold": ":"}
    names = list(dict.fromkeys(r["test_set"] for r in rows))
    for k, test_set in enumerate(names):
        colour = f"C{k}"
        suffix = f" ({test_set})" if len(names) > 1 else ""
        points = sorted((r for r in synthetic if r["test_set"] == test_set),
                        key=lambda r: float(r["epsilon_target"]))
        for finite in (True, False):   # no line across the gap between finite ε and ∞
            part = [r for r in points if math.isfinite(float(r["epsilon_target"])) == finite]
            if not part:
                continue
            xs = [xpos(float(r["epsilon_target"])) for r in part]
            label = f"synthetic{suffix}" if finite or len(part) == len(points) else None
            axes[0].errorbar(xs, [r["dsc_mean"] for r in part],
                             yerr=[r["dsc_sd"] or 0.0 for r in part], marker="o", capsize=3,
                             color=colour, label=label)
            fids = [(x, r["fid"]) for x, r in zip(xs, part) if r["fid"] is not None]
            if fids:
                axes[1].plot(*zip(*fids), marker="o", color=colour, label=label)
        for r in rows:
            if r["test_set"] == test_set and r["row"] in styles:
                axes[0].axhline(r["dsc_mean"], ls=styles[r["row"]], color=colour, alpha=0.7,
                                label=f"{ROW_LABELS[r['row']]}{suffix}")
        floor = next((r["fid_real_floor"] for r in rows if r["test_set"] == test_set
                      and r["fid_real_floor"] is not None), None)
        if floor is not None:
            axes[1].axhline(floor, ls="--", color=colour, alpha=0.7,
                            label=f"real training vs real test patches{suffix}")
    ticks = [xpos(e) for e in epsilons]
    labels = ["∞\n(no DP)" if math.isinf(e) else f"{e:g}" for e in epsilons]
    for ax, title in zip(axes, ("U-Net trained on synthetic data: test DSC",
                                "FID (synthetic vs real test patches)")):
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels)
        ax.set_xlabel("ε (privacy budget; log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if any(math.isinf(e) for e in epsilons) and len(epsilons) > 1:
            finite_right = max(xpos(e) for e in epsilons if math.isfinite(e))
            ax.axvline((finite_right + xpos(math.inf)) / 2, color="grey", lw=0.8, ls="-.")
        if ticks:
            ax.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)
    axes[0].set_ylabel("DSC (mean ± SD over test patients)")
    axes[0].set_ylim(0.0, 1.0)
    axes[1].set_ylabel("FID (lower is better)")
    if not any(r["fid"] is not None for r in rows):
        axes[1].text(0.5, 0.5, "FID not computed", ha="center", va="center",
                     transform=axes[1].transAxes)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


# --- command line --------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """train's flags, evaluate's flags (sweep variant) and the sweep's own."""
    training.define_flags(fv)
    evaluate.define_flags(fv, sweep=True)
    flags.DEFINE_list("epsilons", ["inf", "10", "3", "1"], "Privacy budgets to train "
                      "(inf = no DP); replaces --epsilon.", flag_values=fv)
    flags.DEFINE_string("sweep_dir", os.path.join("runs", "sweep"), "Folder of the sweep: "
                        "eps_<ε>/ run folders, baselines/, results.csv|md|png.", flag_values=fv)
    flags.DEFINE_boolean("baselines", True, "Also evaluate the U-Net trained on the real "
                         "training patches and the validation-chosen threshold.",
                         flag_values=fv)


def train_flag_names() -> List[str]:
    scratch = flags.FlagValues()
    training.define_flags(scratch)
    return [name for name in scratch if name not in ("epsilon", "workdir")]


def config_from_flags(fv: flags.FlagValues = FLAGS) -> Tuple[SweepConfig, str]:
    """(config, train flags as a flagfile without --epsilon/--workdir)."""
    if fv["workdir"].present:
        raise ValueError("--workdir is set per ε by the sweep; use --sweep_dir")
    sweep_dir = fv.sweep_dir
    train_config = training.config_from_flags(fv)
    evaluation = evaluate.config_from_flags(fv, workdir="")
    config = SweepConfig(sweep_dir=sweep_dir, epsilons=parse_epsilons(fv.epsilons),
                         train=train_config, evaluation=evaluation,
                         test_data=tuple(fv.test_data), baselines=fv.baselines)
    text = "".join(fv[name].serialize() + "\n" for name in train_flag_names()
                   if fv[name].value is not None)
    return config, text


def main(argv):
    del argv
    try:
        config, text = config_from_flags()
        config.evaluation.validate()
        run_sweep(config, text)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
