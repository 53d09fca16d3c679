"""The evaluation report: report.json, REPORT.md, and the number formatting shared by the
evaluation, the sweep and the benchmarks.

report.json keys (DESIGN.md): ``dsc_mean``, ``dsc_sd``, ``hd95_mean_mm``, ``hd95_sd_mm``,
``hd95_num_undefined``, ``num_patients``, ``per_patient`` (list of {patient_id, dsc, hd95_mm}),
``fid``, ``fid_real_floor``, ``fid_network``, ``fid_samples``, ``source`` (the primary row),
``privacy``, ``selection``, ``baselines``, ``test_set``, ``privacy_note``, ``flags``,
``settings``, ``conventions``, ``timing``, ``host``, ``tfdpgan_version``, ``created``.

Conventions: SD is the sample SD over patients (ddof=1; null for one patient). HD95 follows
seg_metrics.hausdorff95: an empty prediction of a non-empty label has no finite HD95; it is
reported as null per patient, left out of the mean/SD and counted in ``hd95_num_undefined``.
DSC of an empty prediction is 0 (test labels are never empty; volumes.load_volume refuses them).
"""
import datetime
import importlib.metadata
import json
import math
import os
import platform
from typing import List, Optional

import numpy as np

import tfdpgan
from tfdpgan import atomic

__all__ = ["REPORT_JSON", "REPORT_MD", "PRIVACY_NOTE_REAL_VAL", "PRIVACY_NOTE_SYNTHETIC_VAL",
           "PRIVACY_NOTE_TEST", "EMPTY_LABELS", "ROW_TITLES", "format_mean_sd", "format_number", "finite",
           "summary", "privacy_summary", "conventions", "host", "host_text",
           "build_report", "render_markdown",
           "write_report", "read_report", "summary_lines"]

REPORT_JSON = "report.json"
REPORT_MD = "REPORT.md"
PRIVACY_NOTE_REAL_VAL = (
    "Model selection (training epoch, grid point and the threshold baseline's threshold) used "
    "the real validation patients' volumes. That is private data used outside the DP "
    "guarantee (Kossen et al. 2022 select the same way): the selected U-Net and these numbers "
    "are not covered by the generator's (epsilon, delta). Use --selection=synthetic_val for a "
    "privacy-free selection on held-out synthetic patches.")
PRIVACY_NOTE_SYNTHETIC_VAL = (
    "Model selection used held-out synthetic patches only (privacy-free post-processing of the "
    "generator); for the real_train row it used held-out real training patches, and the "
    "threshold baseline's threshold was chosen on the real validation volumes (both rows are "
    "real-data baselines).")
PRIVACY_NOTE_TEST = (
    "The test metrics and FID are computed from real test patients (and FID's floor from real "
    "training patches): this report is itself derived from private data and is for internal "
    "use; it is not covered by the generator's privacy guarantee.")
EMPTY_LABELS = 1e-4     # vessel share of training labels below which the report warns
ROW_TITLES = {"synthetic": "U-Net trained on synthetic data",
              "prior": "U-Net trained on the public prior's samples alone (no private data)",
              "real_train": "U-Net trained on real training patches (upper bound)",
              "threshold": "global intensity threshold (chosen on validation)"}


def format_mean_sd(mean, sd, digits=3) -> str:
    """'m ± s' ('m' without an SD, 'n/a' without a mean)."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def format_number(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def finite(x) -> Optional[float]:
    """``x`` as a float, or None if missing or not finite (JSON has no inf)."""
    return None if x is None or not math.isfinite(x) else float(x)


def summary(per_patient: List[dict]) -> dict:
    """Mean and sample SD over patients of DSC and HD95 (module conventions)."""
    dsc = np.array([p["dsc"] for p in per_patient], np.float64)
    hd = np.array([p["hd95_mm"] for p in per_patient if p["hd95_mm"] is not None], np.float64)
    sd = lambda x: float(np.std(x, ddof=1)) if len(x) >= 2 else None
    out = {"dsc_mean": float(np.mean(dsc)), "dsc_sd": sd(dsc),
           "hd95_mean_mm": float(np.mean(hd)) if len(hd) else None, "hd95_sd_mm": sd(hd),
           "hd95_num_undefined": int(len(per_patient) - len(hd)),
           "num_patients": len(per_patient), "repeats": 1}
    if per_patient and "dsc_repeats" in per_patient[0]:
        # the row's mean DSC of each repeat's U-Net: the spread of the evaluation itself
        by_repeat = np.mean([p["dsc_repeats"] for p in per_patient], axis=0)
        out.update(repeats=len(by_repeat), dsc_mean_by_repeat=[float(x) for x in by_repeat],
                   dsc_sd_over_repeats=sd(by_repeat))
    return out


def privacy_summary(card: Optional[dict]) -> Optional[dict]:
    """The generator's privacy card, shortened for the report (None without a card)."""
    if card is None:
        return None
    keys = ("private", "epsilon", "delta", "target_epsilon", "accountant", "noise_multiplier",
            "critic_steps", "sampling_rate", "patches_per_patient")
    return dict({k: card.get(k) for k in keys}, unit=card.get("privacy_unit"))


def conventions(probability_threshold: float, overlap: float, label_threshold: float) -> dict:
    return {
        "sd": "sample SD over patients (ddof=1); null for fewer than 2 patients",
        "hd95": "95th percentile of symmetric surface distances in mm (anisotropic spacing); "
                "null when undefined (empty prediction), excluded from mean/SD and counted in "
                "hd95_num_undefined",
        "dsc": "inside the whole volume, prediction restricted to the brain mask; both empty = "
               "1, one empty = 0",
        "probability_threshold": probability_threshold,
        "tile_overlap": overlap,
        "synthetic_label_threshold": (
            f"synthetic labels binarised as label >= {label_threshold:g} on the {{0, 1}} scale "
            f"(an exported generator's label is its label channel > 0 on [-1, 1])")}


# Instruction sets oneDNN (TensorFlow's CPU kernels) dispatches on, best first.
ISA_LEVELS = ("avx512_bf16", "avx512f", "avx2", "avx", "sse4_2")


def host(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """Where a report was computed: CPU model, the best instruction set of ISA_LEVELS it has,
    cores, machine and TensorFlow version (None where unknown, e.g. without /proc/cpuinfo).

    Recorded because a U-Net's training is bit-reproducible on one machine but not across
    CPUs: TensorFlow's oneDNN kernels sum in another order per instruction set (40 training
    steps, same seed and data, under ONEDNN_MAX_CPU_ISA=SSE41 vs AVX2 gave other weights), and
    training amplifies that, so the same evaluation may move by the seed spread on another CPU.
    """
    model, flags_ = None, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags_:
                    flags_ = set(value.split())
    except OSError:
        pass
    try:
        tf_version = importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        tf_version = None
    return {"cpu": model or platform.processor() or None,
            "isa": next((isa for isa in ISA_LEVELS if isa in flags_), None),
            "cores": os.cpu_count(), "machine": platform.machine() or None,
            "tensorflow": tf_version}


def build_report(*, rows: dict, primary: str, fid_info: dict, privacy: Optional[dict],
                 selection: dict, test_set: dict, settings: dict, conventions_: dict,
                 timing: dict) -> dict:
    """report.json's object. ``rows``: row name -> summary + per_patient + selection (+ fid);
    ``selection``: the primary row's selection with method, note and validation patients."""
    return {
        **fid_info,
        **{k: v for k, v in rows[primary].items() if k != "selection"},
        "source": primary,
        "privacy": privacy,
        "selection": selection,
        "baselines": {row: value for row, value in rows.items() if row != primary},
        "test_set": test_set,
        "privacy_note": PRIVACY_NOTE_TEST,
        "flags": settings["flags"],
        "settings": settings,
        "conventions": conventions_,
        "timing": timing,
        "host": host(),
        "tfdpgan_version": tfdpgan.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def _epsilon_text(privacy: Optional[dict]) -> str:
    if privacy is None:
        return "n/a (no generator)"
    if not privacy.get("private"):
        return "∞ (not private)"
    return f"{privacy['epsilon']:.3g} per {privacy['unit']} (δ = {privacy['delta']:.3g})"


def _table_lines(report: dict, rows: dict) -> List[str]:
    n = report["test_set"]["num_patients"]
    lines = [
        "# Evaluation report", "",
        f"- Run: `{report['flags']['workdir']}`; privacy of the generator: ε = "
        f"{_epsilon_text(report.get('privacy'))}",
        f"- Test set: {n} patient{'' if n == 1 else 's'} ({report['test_set']['source']})",
        f"- FID network: {report['fid_network'] or 'not computed'}", "",
        "| row | DSC (mean ± SD) | HD95 mm (mean ± SD) | undefined HD95 | FID |",
        "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {ROW_TITLES.get(name, name)} | "
                     f"{format_mean_sd(row['dsc_mean'], row['dsc_sd'])} | "
                     f"{format_mean_sd(row['hd95_mean_mm'], row['hd95_sd_mm'], 2)} | "
                     f"{row['hd95_num_undefined']} | {format_number(row.get('fid'))} |")
    lines += ["", f"FID of real training vs real test patches (floor): "
                  f"{format_number(report['fid_real_floor'])}", ""]
    repeated = {name: row for name, row in rows.items() if row.get("dsc_mean_by_repeat")}
    if repeated:
        lines += [f"DSC and HD95 of the U-Net rows are means over {report['flags']['repeats']} "
                  f"U-Nets per row (repeat k: seed + k for sampling, hold-out and "
                  f"initialisation). Each U-Net's mean DSC: "
                  + "; ".join(f"{name} {_by_repeat(row)}" for name, row in repeated.items())
                  + ".", ""]
    lines += ["## Per patient", "",
              "| patient | " + " | ".join(f"{n} DSC | {n} HD95 mm" for n in rows) + " |",
              "|---|" + "---|---|" * len(rows)]
    for i, entry in enumerate(report["per_patient"]):
        cells = []
        for row in rows.values():
            p = row["per_patient"][i]
            cells += [f"{p['dsc']:.4f}", format_number(p["hd95_mm"])]
        lines.append(f"| {entry['patient_id']} | " + " | ".join(cells) + " |")
    return lines


def _selection_line(name: str, s: dict) -> Optional[str]:
    if "grid" in s:
        best = next(g for g in s["grid"] if g["config"] == s["chosen"])
        line = (f"- {name}: {len(s['grid'])} grid point(s); chosen learning rate "
                f"{s['chosen']['learning_rate']:g}, dropout {s['chosen']['dropout']:g}, "
                f"augment {s['chosen']['augment']}, intensity augmentation "
                f"{s['chosen'].get('intensity_augment', False)}, best validation Dice "
                f"{s['best_val_dice']:.4f} after epoch {best['best_epoch']} of "
                f"{s['chosen']['epochs']}")
        collapse = s.get("collapse") or {}
        if collapse.get("restarts"):
            line += (f"; {collapse['restarts']} restart(s) after a detected collapse "
                     f"(empty prediction)")
        prior = next((g.get("label_prior") for g in s["grid"] if g["config"] == s["chosen"]),
                     None)
        if prior is not None and prior < EMPTY_LABELS:
            line += (f"; **the training labels are (almost) empty (vessel share {prior:.2g}): "
                     f"a DSC near 0 reflects the training data, not a collapsed U-Net**")
        if collapse.get("chosen_collapsed"):
            line += ("; **WARNING: the chosen U-Net is still collapsed (predicts no vessel); "
                     "its DSC says nothing about the synthetic data beyond that**")
        return line
    if "threshold" in s:
        line = (f"- {name}: threshold {format_number(s['threshold'], 4)} on the "
                f"{s['scale']}, chosen on {s.get('method', 'validation')}")
        if s.get("volumes"):
            line += f" ({s['volumes']})"
        if s.get("caveat"):
            line += f"; **{s['caveat']}**"
        return line
    return None


def render_markdown(report: dict) -> str:
    """REPORT.md: the table, per-patient values, model selection, privacy, conventions."""
    rows = {report["source"]: report, **report["baselines"]}
    lines = _table_lines(report, rows)
    sel = report["selection"]
    lines += ["", "## Model selection", "", f"Method: `{sel['method']}`. {sel['note']}", ""]
    for name, row in rows.items():
        line = _selection_line(name, row["selection"] if name != report["source"] else sel)
        if line:
            lines.append(line)
    lines += ["", "## Privacy", "", report["privacy_note"], "", "## Conventions", ""]
    lines += [f"- {k}: {v}" for k, v in report["conventions"].items()]
    lines += ["", "## Flags", "", "```", json.dumps(report["flags"], indent=2, sort_keys=True),
              "```", "",
              f"tfdpgan {report['tfdpgan_version']}; computed on "
              f"{host_text(report.get('host'))}"]
    return "\n".join(lines) + "\n"


def host_text(h: Optional[dict]) -> str:
    """One line for a ``host()`` record: "CPU (isa, N cores, TensorFlow V)"; "not recorded"
    for None (a report or result from before hosts were recorded)."""
    if not h:
        return "not recorded"
    return (f"{h.get('cpu')} ({h.get('isa')}, {h.get('cores')} cores, "
            f"TensorFlow {h.get('tensorflow')})")


def write_report(folder: str, report: dict):
    """report.json and REPORT.md into ``folder`` (each atomically)."""
    atomic.write_json_atomic(os.path.join(folder, REPORT_JSON), report)
    atomic.write_text_atomic(os.path.join(folder, REPORT_MD), render_markdown(report))


def read_report(out_dir: str) -> Optional[dict]:
    """report.json of an evaluation folder, or None."""
    path = os.path.join(out_dir, REPORT_JSON)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _by_repeat(row: dict) -> str:
    """'0.578/0.589/0.520': each repeat's U-Net's mean DSC."""
    return "/".join(f"{x:.3f}" for x in row["dsc_mean_by_repeat"])


def _repeats_text(row: dict) -> str:
    """' (mean of 3 U-Nets: 0.578/0.589/0.520)' for a row with repeats, else ''."""
    if not row.get("dsc_mean_by_repeat"):
        return ""
    return f" (mean of {len(row['dsc_mean_by_repeat'])} U-Nets: {_by_repeat(row)})"


def summary_lines(report: dict) -> List[str]:
    """One line per row (DSC, HD95; FID where the row has one), as the command prints them."""
    lines = [f"{report['source']}: DSC {format_mean_sd(report['dsc_mean'], report['dsc_sd'])}"
             f"{_repeats_text(report)}, "
             f"HD95 {format_mean_sd(report['hd95_mean_mm'], report['hd95_sd_mm'], 2)} mm, FID "
             f"{format_number(report['fid'])} (real floor "
             f"{format_number(report['fid_real_floor'])}) on "
             f"{report['test_set']['num_patients']} test patients"]
    for name, row in report["baselines"].items():
        lines.append(f"{name}: DSC {format_mean_sd(row['dsc_mean'], row['dsc_sd'])}"
                     f"{_repeats_text(row)}, HD95 "
                     f"{format_mean_sd(row['hd95_mean_mm'], row['hd95_sd_mm'], 2)} mm"
                     + (f", FID {format_number(row['fid'])}" if row.get("fid") is not None
                        else ""))
    return lines
