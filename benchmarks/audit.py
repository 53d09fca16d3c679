"""Leakage of a non-private and a private run, side by side (tfdpgan.audit on each).

  python -m tfdpgan.train --epsilon=inf --workdir=runs/epsinf
  python -m tfdpgan.train --epsilon=3 --workdir=runs/eps3
  python benchmarks/audit.py --workdirs=runs/epsinf,runs/eps3

Runs the audit of every workdir (replacing its W/audit/, or reusing it with --reuse), then
prints one table with a column per run: membership-inference AUC and TPR at FPR 1 % / 0.1 %
(patch and patient level, with the DP bound e^ε·FPR + δ where the run is private), and the
memorisation numbers (d_train/d_held, near-copies). Without leakage: AUC 0.5, TPR = FPR,
fraction d_train < d_held 0.5, near-copies ≲ 1 %. The last lines are ratios of the first run
over the last (for the generator attack, AUC − 0.5 excess). The same text goes to
benchmarks/results/audit.txt.
"""
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic, cli, errors, workdir  # pylint: disable=g-import-not-at-top
from tfdpgan.leakage import audit, report  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("workdirs", ["runs/epsinf", "runs/eps3"],
                  "Training workdirs to audit (e.g. the ε = ∞ run first, then ε = 3).")
flags.DEFINE_integer("num_synthetic", 5000, "Synthetic pairs per run.")
flags.DEFINE_integer("max_patches", 10000, "Cap per split (equal share per patient).")
flags.DEFINE_integer("seed", 0, "Seed of the audit.")
flags.DEFINE_boolean("reuse", False, "Reuse an existing W/audit/audit.json instead of "
                     "recomputing it.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "results", "audit.txt"),
                    "Where to write the printed table.")
FLAGS = flags.FLAGS


def _label(result):
    p = result["privacy"]
    if not p["private"]:
        return "eps=inf"
    return f"eps={p['epsilon']:.3g}/{p['privacy_unit']}"


def _num(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _rows(results):
    """(row label, [cell per run])."""
    rows = []
    names = [n for n in ("critic", "critic_calibrated", "generator")
             if any(n in r["attacks"] for r in results)]
    for name in names:
        for level in ("patch", "patient"):
            attacks = [r["attacks"].get(name, {}).get(level) for r in results]
            prefix = f"{name} {level}"
            rows.append((f"{prefix} AUC", [_num(a and a["auc"]) for a in attacks]))
            for fpr in ("0.01", "0.001"):
                cells = []
                for r, a in zip(results, attacks):
                    if a is None:
                        cells.append("n/a")
                        continue
                    cell = _pct(a["tpr_at_fpr"][fpr]) + ("" if a["fpr_resolved"][fpr] else "†")
                    bounds = r["privacy"]["bounds"]
                    if bounds:
                        b = bounds["per_record" if level == "patch" else "per_patient"][fpr]
                        cell += f" (<={_pct(b)})"
                    cells.append(cell)
                rows.append((f"{prefix} TPR@FPR {float(fpr) * 100:g}%", cells))
    mem = [r["memorisation"] for r in results]
    rows += [
        ("d_train/d_held median", [_num(m["ratio"]["median"]) for m in mem]),
        ("d_train/d_held 5th pct", [_num(m["ratio"]["p5"]) for m in mem]),
        ("fraction d_train < d_held", [_num(m["ratio"]["fraction_below_1"]) for m in mem]),
        ("near-copies (< tau)", [f"{m['near_copies']}/{m['num_synthetic']}" for m in mem]),
        ("near-copy fraction", [_pct(m["near_copy_fraction"]) for m in mem]),
        ("tau (1% held-out->train NN)", [_num(m["tau"], 4) for m in mem]),
        ("median synthetic->train NN", [_num(m["d_train_all_median"], 4) for m in mem]),
        ("min synthetic->train NN", [_num(m["min_d_train"], 4) for m in mem]),
    ]
    return rows


def _table(results, seconds):
    rows = _rows(results)
    labels = [_label(r) for r in results]
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(labels[i]), *(len(cells[i]) for _, cells in rows)) + 2
            for i in range(len(results))]
    lines = [f"{'':<{width}}" + "".join(f"{lab:>{c}}" for lab, c in zip(labels, cols))]
    for label, cells in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{x:>{c}}" for x, c in zip(cells, cols)))
    first, last = results[0], results[-1]
    lines += [
        "",
        "no leakage: AUC 0.5, TPR = FPR, fraction 0.5, near-copies <~ 1%; "
        "(<=x) = DP bound e^eps*FPR+delta (patient rows: group privacy for a patch-level "
        "run); † = FPR below 1/(number of non-members), interpolated, not resolved",
    ]
    for r, s in zip(results, seconds):
        c = r["counts"]
        lines.append(f"{_label(r)}: {r['workdir']}, {c['member_patches']} member patches of "
                     f"{c['member_patients']} patients, {c['nonmember_patches']} non-member "
                     f"patches of {c['nonmember_patients']} patients, "
                     f"{r['memorisation']['num_synthetic']} synthetic, audit {s:.0f} s")
    if len(results) > 1:
        g0 = first["attacks"]["generator"]["patch"]["auc"]
        g1 = last["attacks"]["generator"]["patch"]["auc"]
        f0 = first["memorisation"]["ratio"]["fraction_below_1"]
        f1 = last["memorisation"]["ratio"]["fraction_below_1"]
        if None not in (g0, g1) and abs(g1 - 0.5) > 1e-9:
            lines.append(f"generator_auc_excess_ratio {(g0 - 0.5) / (g1 - 0.5):.3f}")
        if None not in (f0, f1) and abs(f1 - 0.5) > 1e-9:
            lines.append(f"memorisation_excess_ratio {(f0 - 0.5) / (f1 - 0.5):.3f}")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    results, seconds = [], []
    for run_dir in FLAGS.workdirs:
        path = os.path.join(workdir.path(run_dir, workdir.AUDIT), report.AUDIT_JSON)
        start = time.time()
        if FLAGS.reuse and os.path.isfile(path):
            with open(path) as f:
                result = json.load(f)
        else:
            try:
                result = audit.audit_workdir(audit.AuditConfig(
                    workdir=run_dir, num_synthetic=FLAGS.num_synthetic,
                    max_patches=FLAGS.max_patches, seed=FLAGS.seed, overwrite=True))
            except errors.TfdpganError as e:   # bad input; anything else is a bug
                cli.fail(str(e))
        results.append(result)
        seconds.append(result.get("seconds") or time.time() - start)
    text = _table(results, seconds)
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    atomic.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
