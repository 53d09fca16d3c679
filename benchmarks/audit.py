"""Does the audit catch a leak? A leakage-prone reference and canaries, ε = ∞ vs 3 vs 1.

  python benchmarks/audit.py                              # the experiment below (resumable)
  python benchmarks/audit.py --workdirs=runs/epsinf,runs/eps3   # plus columns for your runs

The experiment (in --work_dir; finished trainings, data sets and audits are reused, so an
interrupted benchmark continues where it stopped):
  1. leaky_reference: tfdpgan.leakage.reference (3 phantom training patients, ε = ∞, long
     training of a small critic); the audit's membership inference must find it.
  2. canaries: a phantom data set of --canary_patients patients in which --num_canaries
     training patients carry a planted signature (tfdpgan.leakage.canaries), trained with the
     reference's settings at each ε of --canary_epsilons (per patch); the audit measures the
     canaries' exposure (tfdpgan.leakage.exposure) next to the DP bound for a canary, and
     at each ε of --canary_patient_epsilons with a per-patient guarantee (the only one whose
     bound covers a canary patient: under a per-patch guarantee a canary's 64 patches make
     the group-privacy bound vacuous).

Runs the audit of every workdir (--workdirs first, then the experiment's; an existing
W/audit/audit.json is reused by the experiment's runs, and by --workdirs with --reuse), then
prints one table with a column per run: membership-inference AUC and TPR at FPR 1 % / 0.1 %
(patch and patient level, with the DP bound e^ε·FPR + δ where the run is private), and the
memorisation numbers (d_train/d_held, near-copies). Without leakage: AUC 0.5, TPR = FPR,
fraction d_train < d_held 0.5, near-copies ≲ 1 %. The last lines are ratios of the first run
over the last (for the generator attack, AUC − 0.5 excess), then the canary table, and last:
  leaky_reference_auc      critic (white-box) patch AUC of the reference's members vs
                           non-members (0.5 = nothing found)
  canary_exposure_eps_inf  AUC of the critic's canary test (inserted vs never-inserted
  canary_exposure_eps3     signatures; 0.5 = no exposure) at ε = ∞ and ε = 3 per patch
(canary_exposure_eps1, canary_exposure_eps3_patient: the other runs, just above them)
The same text goes to benchmarks/results/audit.txt.
"""
import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic, cli, errors, workdir  # pylint: disable=g-import-not-at-top
from tfdpgan.data import default_data, records  # pylint: disable=g-import-not-at-top
from tfdpgan.gan import training  # pylint: disable=g-import-not-at-top
from tfdpgan.leakage import audit, canaries, reference, report  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list("workdirs", [], "Extra training workdirs to audit (columns before the "
                  "experiment's).")
flags.DEFINE_string("work_dir", os.path.join(ROOT, "runs", "audit_benchmark"),
                    "Where the experiment's data sets, runs and audits live (reused).")
flags.DEFINE_list("canary_epsilons", ["inf", "3", "1"], "ε of the canary runs (per patch).")
flags.DEFINE_list("canary_patient_epsilons", ["3"], "ε of canary runs with a per-patient "
                  "guarantee (--privacy_unit=patient, 4 expected patients x 8 patches per step).")
flags.DEFINE_integer("canary_patients", 16, "Phantom patients of the canary data set "
                     "(training + validation; 3 more test patients).")
flags.DEFINE_integer("num_canaries", 4, "Training patients that carry a canary.")
flags.DEFINE_integer("num_candidates", 200, "Canary candidate signatures (the others are "
                     "the never-inserted reference).")
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


def _table(results, seconds, labels):
    rows = _rows(results)
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
    for r, s, label in zip(results, seconds, labels):
        c = r["counts"]
        lines.append(f"{label}: {r['workdir']}, {c['member_patches']} member patches of "
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


def _canary_rows(results):
    """(row label, [cell per run]) of the canary exposure of runs on a canaried data set."""
    rows = []
    for name in ("critic", "generator"):
        exps = [r["canaries"][name] for r in results]
        bounds = [r["canaries"]["dp_bound"] for r in results]
        rows.append((f"canary {name} AUC", [_num(e["auc"]) for e in exps]))
        for fpr in ("0.01", "0.001"):
            cells = [_pct(e["tpr_at_fpr"][fpr]) + ("" if e["fpr_resolved"][fpr] else "†")
                     + (f" (<={_pct(b['tpr'][fpr])})" if b else "")
                     for e, b in zip(exps, bounds)]
            rows.append((f"canary {name} TPR@FPR {float(fpr) * 100:g}%", cells))
        rows.append((f"canary {name} exposure bits", [
            f"{e['mean_exposure_bits']:.2f}/{e['max_exposure_bits']:.2f}" for e in exps]))
    gens = [r["canaries"]["generator"] for r in results]
    rows.append(("synthetic reproducing canary", [_pct(g["reproduction_inserted"]) for g in gens]))
    rows.append(("synthetic reproducing other", [_pct(g["reproduction_other"]) for g in gens]))
    return rows


def _canary_table(named):
    """The canary table of the (label, result) pairs whose data set holds canaries."""
    named = [(label, r) for label, r in named if r.get("canaries")]
    if not named:
        return ""
    rows = _canary_rows([r for _, r in named])
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(named[i][0]), *(len(cells[i]) for _, cells in rows)) + 2
            for i in range(len(named))]
    lines = ["", f"{'':<{width}}" + "".join(f"{lab:>{c}}" for (lab, _), c in zip(named, cols))]
    lines += [f"{label:<{width}}" + "".join(f"{x:>{c}}" for x, c in zip(cells, cols))
              for label, cells in rows]
    c = named[0][1]["canaries"]
    lines += ["", f"canaries: {len(c['patients'])} training patients "
              f"({', '.join(f'{n} patches' for n in c['num_patches'].values())}) carry one of "
              f"{c['num_candidates']} candidate signatures (they are left out of the "
              f"membership rows above); no exposure: AUC 0.5, TPR = FPR, "
              f"~1 bit; (<=x) = DP bound for a canary (group privacy over its patches under a "
              f"per-patch guarantee; group size "
              + ", ".join(f"{label} {r['canaries']['dp_bound']['group_size']}"
                          for label, r in named if r["canaries"]["dp_bound"]) + ")"]
    return "\n".join(lines) + "\n"


def _audit(run_dir, reuse):
    """audit.json of ``run_dir``: reused if ``reuse`` and present, else computed."""
    path = os.path.join(workdir.path(run_dir, workdir.AUDIT), report.AUDIT_JSON)
    if reuse and os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    try:
        return audit.audit_workdir(audit.AuditConfig(
            workdir=run_dir, num_synthetic=FLAGS.num_synthetic,
            max_patches=FLAGS.max_patches, seed=FLAGS.seed, overwrite=True))
    except errors.TfdpganError as e:   # bad input; anything else is a bug
        cli.fail(str(e))


def _train(config):
    """Train (or resume; a finished run with the same settings is reused, other settings are
    refused by training.train); returns seconds."""
    start = time.time()
    if not workdir.is_finished(config.workdir):
        logging.info("training %s (epsilon %s)", config.workdir, config.epsilon)
    training.train(config, flags_text=f"# benchmarks/audit.py\n--epsilon={config.epsilon}\n")
    return time.time() - start


def _canary_data(work, cache):
    """The canaried data set (made once; refused if it was made with other settings)."""
    base = default_data.prepare(dataclasses.replace(
        reference.LEAKY_PHANTOM, num_patients=FLAGS.canary_patients), cache)[1]
    out = os.path.join(work, "canary_data")
    config = canaries.CanaryConfig(num_canaries=FLAGS.num_canaries,
                                   num_candidates=FLAGS.num_candidates, seed=FLAGS.seed)
    if not os.path.isfile(os.path.join(out, "dataset.json")):
        canaries.make_canary_dataset(base, out, config)
    section = canaries.read_canaries(records.read_dataset_json(out)) or {}
    if (len(section.get("patients", ())), section.get("num_candidates")) != (
            config.num_canaries, config.num_candidates):
        cli.fail(f"{out}: made with other canary settings; use another --work_dir")
    return out


def _experiment(work):
    """Train what is missing; [(column label, workdir)] of the experiment's runs."""
    cache = os.path.join(work, "cache")
    leaky = os.path.join(work, "leaky_reference")
    rec = default_data.prepare(reference.LEAKY_PHANTOM, cache)[1]
    seconds = {"leaky_reference": _train(reference.leaky_reference_config(
        leaky, data=rec, tf_seed=FLAGS.seed))}
    runs = [("leaky_reference", leaky)]
    canary_rec = _canary_data(work, cache)
    for eps in FLAGS.canary_epsilons:
        label = f"canary_eps{eps}"
        run_dir = os.path.join(work, label)
        seconds[label] = _train(reference.leaky_reference_config(
            run_dir, data=canary_rec, epsilon=float(eps), tf_seed=FLAGS.seed))
        runs.append((label, run_dir))
    for eps in FLAGS.canary_patient_epsilons:
        label = f"canary_eps{eps}_patient"
        run_dir = os.path.join(work, label)
        seconds[label] = _train(reference.leaky_reference_config(
            run_dir, data=canary_rec, epsilon=float(eps), tf_seed=FLAGS.seed,
            privacy_unit="patient", batch_size=4, patches_per_patient=8))
        runs.append((label, run_dir))
    logging.info("training seconds (0 = reused): %s", seconds)
    return runs


def _last_lines(named):
    """Canary exposure at the other ε, then the three headline figures last."""
    exposure = {label[len("canary_"):]: r["canaries"]["critic"]["auc"] for label, r in named
                if label.startswith("canary_eps") and r.get("canaries")}
    lines = [f"canary_exposure_{k} {_num(v)}" for k, v in exposure.items()
             if k not in ("epsinf", "eps3")]
    leaky = dict(named).get("leaky_reference")
    if leaky:
        lines.append(f"leaky_reference_auc {_num(leaky['attacks']['critic']['patch']['auc'])}")
    lines += [f"canary_exposure_{name} {_num(exposure[k])}"
              for k, name in (("epsinf", "eps_inf"), ("eps3", "eps3")) if k in exposure]
    return "".join(line + "\n" for line in lines)


def main(argv):
    del argv
    runs = [(None, d) for d in FLAGS.workdirs] + _experiment(FLAGS.work_dir)
    results, seconds, labels = [], [], []
    for label, run_dir in runs:
        start = time.time()
        result = _audit(run_dir, reuse=FLAGS.reuse or label is not None)
        results.append(result)
        seconds.append(result.get("seconds") or time.time() - start)
        labels.append(label or _label(result))
    named = list(zip(labels, results))
    text = _table(results, seconds, labels) + _canary_table(named) + _last_lines(named)
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    atomic.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
