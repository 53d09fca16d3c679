"""Train and evaluate DP-WGANs over privacy budgets: the utility-privacy curve (library of
``python -m tfdpgan.sweep``).

For every ε of ``epsilons`` (``inf`` = no DP) a generator is trained with
tfdpgan.gan.training.train into ``<sweep_dir>/eps_<ε>`` (the train config's epsilon and workdir
are replaced) and evaluated with tfdpgan.evaluation.evaluate on every test set (``test_data``
folders; default the data set's own test patients) into ``eps_<ε>/private/eval``
(``private/eval_<name>`` for named test folders; tfdpgan.workdir). With ``baselines`` the U-Net
trained on the real training patches (upper bound) and the validation-chosen intensity
threshold are evaluated once, into ``<sweep_dir>/baselines/private/eval``.

Outputs in ``<sweep_dir>``: ``results.csv`` (one row per test set and row), ``results.md``
(the table: ε, noise multiplier, ε spent, DSC ± SD, 95HD ± SD, FID) and ``results.png`` (DSC
and FID against ε; ∞ at a labelled position at the right).

Resumable: a finished training (release/privacy.json and release/generator/ present, same
flags) is not redone, an interrupted one resumes from its checkpoint (training.train), and an
evaluation whose report.json holds the same settings is not redone.
"""
import csv
import dataclasses
import io
import math
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

from tfdpgan import atomic, errors, workdir
from tfdpgan.data import default_data
from tfdpgan.evaluation import evaluate, report
from tfdpgan.evaluation.config import EvalConfig
from tfdpgan.gan import run as run_lib, training

__all__ = ["RESULTS_CSV", "RESULTS_MD", "RESULTS_PNG", "BASELINES_DIR", "DEFAULT_TEST_SET",
           "CSV_COLUMNS", "SweepConfig", "eps_name", "parse_epsilons", "test_sets",
           "rows_of", "run_sweep", "write_results", "render_markdown",
           "x_positions", "plot"]

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
    train: run_lib.TrainConfig          # template: epsilon and workdir are replaced
    evaluation: EvalConfig              # template: workdir, out_dir, test_data replaced
    test_data: Tuple[str, ...] = ()     # () = the data set's own test patients
    baselines: bool = True


def eps_name(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def parse_epsilons(values: Sequence[str]) -> Tuple[float, ...]:
    """``["inf", "10", "3"]`` -> (inf, 10.0, 3.0); SettingsError for bad or duplicate values."""
    out = []
    for value in values:
        try:
            eps = float(str(value).strip())
        except ValueError:
            raise errors.SettingsError(f"--epsilons: {value!r} is not a number or 'inf'") from None
        if not eps > 0:
            raise errors.SettingsError(f"--epsilons: ε must be positive, got {value}")
        out.append(eps)
    if not out:
        raise errors.SettingsError("--epsilons: give at least one ε")
    if len({eps_name(e) for e in out}) != len(out):
        raise errors.SettingsError(f"--epsilons: duplicate values in {list(values)}")
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


def _eval_dir(run_dir: str, name: str, single_default: bool) -> str:
    """Under the run's private/ (an evaluation reads real test data)."""
    return (workdir.path(run_dir, workdir.EVAL) if single_default
            else workdir.private_path(run_dir, f"{workdir.EVAL}_{name}"))


def rows_of(result: dict, test_set: str, eval_dir: str, epsilon: Optional[float]) -> List[dict]:
    """results.csv rows of one evaluation report (its primary row and baselines)."""
    rows = []
    entries = {result["source"]: result, **result.get("baselines", {})}
    privacy = result.get("privacy") or {}
    for row, entry in entries.items():
        synthetic = row == "synthetic"
        card = (lambda key: privacy.get(key) if synthetic else None)
        rows.append({
            "test_set": test_set, "row": row,
            "epsilon_target": eps_name(epsilon) if synthetic and epsilon is not None else "",
            "noise_multiplier": card("noise_multiplier"), "epsilon_spent": card("epsilon"),
            "delta": card("delta"), "privacy_unit": card("unit"),
            "critic_steps": card("critic_steps"),
            "dsc_mean": entry["dsc_mean"], "dsc_sd": entry["dsc_sd"],
            "hd95_mean_mm": entry["hd95_mean_mm"], "hd95_sd_mm": entry["hd95_sd_mm"],
            "hd95_num_undefined": entry["hd95_num_undefined"],
            "num_patients": entry["num_patients"],
            "fid": entry.get("fid"), "fid_real_floor": result.get("fid_real_floor"),
            "selection": result["selection"]["method"], "eval_dir": eval_dir})
    return rows


def _train_point(config: SweepConfig, eps: float, run_dir: str, point_flags: str, tag: str,
                 say):
    # training.train reuses a finished run only if its settings, data and prior are this
    # point's (and refuses other settings in the workdir)
    finished = workdir.is_finished(run_dir)
    say(f"{tag}: training finished earlier, not redone ({run_dir})" if finished
        else f"{tag}: training into {run_dir} ...")
    t = time.time()
    card = training.train(dataclasses.replace(config.train, epsilon=eps, workdir=run_dir),
                          point_flags)
    if not finished:
        spent = "∞" if card["epsilon"] is None else f"{card['epsilon']:.3f}"
        say(f"{tag}: trained ({card['critic_steps']} critic steps, ε spent {spent}) in "
            f"{time.time() - t:.0f} s")


def _evaluate(ev: EvalConfig, tag: str, set_name: str, say) -> dict:
    old = report.read_report(ev.out_dir)
    t = time.time()
    result = evaluate.evaluate(ev, reuse=True)
    if old is not None and old.get("created") == result.get("created"):
        say(f"{tag}: evaluation on test set '{set_name}' finished earlier, not redone")
    else:
        say(f"{tag}: evaluated on test set '{set_name}' in {time.time() - t:.0f} s: DSC "
            f"{report.format_mean_sd(result['dsc_mean'], result['dsc_sd'])}, FID "
            f"{report.format_number(result['fid'])}")
    return result


def _evaluate_sets(config: SweepConfig, run_dir: str, tag: str, say, epsilon, **changes):
    """Evaluate one run folder on every test set; returns its results rows."""
    sets = test_sets(config)
    single = sets == [(DEFAULT_TEST_SET, None)]
    rows = []
    for set_name, folder in sets:
        out_dir = _eval_dir(run_dir, set_name, single)
        ev = dataclasses.replace(config.evaluation, workdir=run_dir, out_dir=out_dir,
                                 test_data=folder, synthetic=None, **changes)
        rows += rows_of(_evaluate(ev, tag, set_name, say), set_name, out_dir, epsilon)
    return rows


def run_sweep(config: SweepConfig, flags_text: str = "",
              progress: Callable[[str], None] = None) -> List[dict]:
    """Train and evaluate every ε (skipping finished work); write results.*; return the rows.

    ``flags_text``: the sweep's train flags as a flagfile (without --epsilon/--workdir); each
    point's flags.txt is it plus its own --epsilon and --workdir, so
    ``python -m tfdpgan.train --flagfile=<sweep_dir>/eps_3/private/flags.txt`` repeats that
    point.
    """
    say = progress or (lambda line: print(line, flush=True))
    os.makedirs(config.sweep_dir, exist_ok=True)
    if config.evaluation.fid_cache_dir is None:   # real-patch activations: once per sweep
        config = dataclasses.replace(config, evaluation=dataclasses.replace(
            config.evaluation, fid_cache_dir=os.path.join(config.sweep_dir, "fid_cache")))
    rows, start, point_seconds = [], time.time(), []
    total = len(config.epsilons) + (1 if config.baselines else 0)
    for i, eps in enumerate(config.epsilons, start=1):
        t0, name = time.time(), eps_name(eps)
        run_dir = os.path.join(config.sweep_dir, f"eps_{name}")
        point_flags = (flags_text + f"--epsilon={name}\n--workdir={run_dir}\n"
                       if flags_text else "")
        tag = f"[sweep {i}/{total}] ε={name}"
        _train_point(config, eps, run_dir, point_flags, tag, say)
        rows += _evaluate_sets(config, run_dir, tag, say, eps, data=config.train.data,
                               real_train=None, threshold_baseline=False)
        point_seconds.append(time.time() - t0)
        left = total - i
        say(f"{tag}: done in {point_seconds[-1]:.0f} s; {time.time() - start:.0f} s elapsed"
            + (f", ~{left * sum(point_seconds) / len(point_seconds):.0f} s left" if left else ""))
        write_results(config, rows)
    if config.baselines:
        rec_dir = config.train.data or default_data.prepare(config.train.phantom,
                                                            config.train.cache_dir)[1]
        rows += _evaluate_sets(config, os.path.join(config.sweep_dir, BASELINES_DIR),
                               f"[sweep {total}/{total}] baselines", say, None, data=rec_dir,
                               real_train=config.evaluation.real_train or rec_dir,
                               threshold_baseline=True)
        write_results(config, rows)
    say(f"[sweep] finished in {time.time() - start:.0f} s: "
        f"{os.path.join(config.sweep_dir, RESULTS_MD)}")
    return rows


# --- outputs -------------------------------------------------------------------------------

def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_results(config: SweepConfig, rows: List[dict]):
    """results.csv, results.md and results.png in the sweep folder (each atomically)."""
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


def _table_row(r: dict) -> str:
    f = lambda x, d=3: "n/a" if x is None or x == "" else report.format_number(x, d)
    if r["row"] == "synthetic":
        what = "synthetic"
        target = "∞" if r["epsilon_target"] == "inf" else r["epsilon_target"]
        spent = ("∞ (no DP)" if r["epsilon_spent"] is None else
                 f"{r['epsilon_spent']:.3f} (δ = {r['delta']:.2g})")
        sigma = "0" if not r["noise_multiplier"] else f(r["noise_multiplier"], 4)
    else:
        what, target, spent, sigma = ROW_LABELS.get(r["row"], r["row"]), "", "", ""
    hd = report.format_mean_sd(r["hd95_mean_mm"], r["hd95_sd_mm"], 2)
    if r["hd95_num_undefined"]:
        hd += f" ({r['hd95_num_undefined']} undefined)"
    return (f"| {what} | {target} | {sigma} | {spent} | "
            f"{report.format_mean_sd(r['dsc_mean'], r['dsc_sd'])} | {hd} | {f(r['fid'], 2)} |")


def _floor(rows: List[dict], test_set: str):
    return next((r["fid_real_floor"] for r in rows if r["test_set"] == test_set
                 and r["fid_real_floor"] is not None), None)


def render_markdown(rows: List[dict]) -> str:
    """results.md: one table per test set, then what the selection means for privacy."""
    lines = ["# Utility against privacy", ""]
    for test_set in dict.fromkeys(r["test_set"] for r in rows):
        subset = [r for r in rows if r["test_set"] == test_set]
        n = subset[0]["num_patients"]
        lines += [f"## Test set: {test_set} ({n} patient{'s' if n != 1 else ''})", "",
                  "| training data | ε (target) | noise multiplier | ε spent (δ) | DSC | "
                  "95HD mm | FID |", "|---|---|---|---|---|---|---|"]
        lines += [_table_row(r) for r in subset]
        floor = _floor(rows, test_set)
        lines += ["", f"FID floor (real training vs real test patches): "
                      f"{'n/a' if floor is None else report.format_number(floor)}.", ""]
    methods = sorted({r["selection"] for r in rows})
    lines += ["Mean ± SD over test patients. U-Net model selection: "
              + ", ".join(f"`{m}`" for m in methods) + "."]
    if "real_val" in methods:
        lines += ["", "Selection on the real validation patients (`real_val`, as in Kossen et "
                  "al. 2022) uses private data outside the DP guarantee; the evaluation itself "
                  "uses the real test patients. These numbers are for internal use."]
    lines += ["", "Per-run details: `eval*/REPORT.md` in each run folder."]
    return "\n".join(lines) + "\n"


def x_positions(epsilons: Sequence[float]):
    """x of each ε on a log10 axis; ∞ one decade (at least) right of the largest finite ε."""
    finite = [math.log10(e) for e in epsilons if math.isfinite(e)]
    right = (max(finite) + max(1.0, 0.25 * (max(finite) - min(finite)))) if finite else 0.0
    return lambda e: math.log10(e) if math.isfinite(e) else right


def _plot_test_set(axes, rows: List[dict], test_set: str, colour: str, suffix: str, xpos):
    """One test set's synthetic points (no line across the gap to ∞), baselines, FID floor."""
    synthetic = [r for r in rows if r["row"] == "synthetic" and r["test_set"] == test_set]
    points = sorted(synthetic, key=lambda r: float(r["epsilon_target"]))
    for finite in (True, False):
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
    styles = {"real_train": "--", "threshold": ":"}
    for r in rows:
        if r["test_set"] == test_set and r["row"] in styles:
            axes[0].axhline(r["dsc_mean"], ls=styles[r["row"]], color=colour, alpha=0.7,
                            label=f"{ROW_LABELS[r['row']]}{suffix}")
    floor = _floor(rows, test_set)
    if floor is not None:
        axes[1].axhline(floor, ls="--", color=colour, alpha=0.7,
                        label=f"real training vs real test patches{suffix}")


def _style_axes(axes, epsilons: Sequence[float], xpos, any_fid: bool):
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
    if not any_fid:
        axes[1].text(0.5, 0.5, "FID not computed", ha="center", va="center",
                     transform=axes[1].transAxes)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")


def plot(rows: List[dict], path: str):
    """DSC (± SD) and FID against ε; ∞ at a labelled position at the right; baselines and the
    FID floor as horizontal lines. Written atomically. (matplotlib is imported here: an
    optional heavy package, only the plot needs it.)"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epsilons = sorted({float(r["epsilon_target"]) for r in rows if r["row"] == "synthetic"})
    xpos = x_positions(epsilons) if epsilons else (lambda e: 0.0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r["test_set"] for r in rows))
    for k, test_set in enumerate(names):
        _plot_test_set(axes, rows, test_set, f"C{k}",
                       f" ({test_set})" if len(names) > 1 else "", xpos)
    _style_axes(axes, epsilons, xpos, any(r["fid"] is not None for r in rows))
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
