"""The audit's outputs: audit.json, AUDIT.md (every number in plain words), near_copies.png,
and the terminal summary. All three files appear at once (tfdpgan.atomic.staged_dir).

These outputs are for the data holder only: they name patients and near_copies.png shows
training patches.
"""
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from tfdpgan import atomic, viz
from tfdpgan.leakage.attacks import fpr_key
from tfdpgan.leakage.real import RealPatches

__all__ = ["AUDIT_JSON", "AUDIT_MD", "NEAR_COPIES_PNG", "ATTACK_NAMES", "json_ready",
           "near_copies_grid", "write_outputs", "render_markdown", "summary"]

AUDIT_JSON = "audit.json"
AUDIT_MD = "AUDIT.md"
NEAR_COPIES_PNG = "near_copies.png"

ATTACK_NAMES = {
    "critic": "critic D(x) (white-box)",
    "critic_calibrated": "critic, calibrated (white-box)",
    "generator": "nearest synthetic (black-box)",
}


def json_ready(obj):
    """Plain JSON: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def near_copies_grid(syn_images, syn_labels, real: RealPatches, d_train, nearest_train,
                     num: int) -> Optional[np.ndarray]:
    """The ``num`` synthetic pairs closest to a training patch, each beside that patch
    (tfdpgan.viz.overlay_grid, two pairs per row); None if there is nothing to show."""
    if len(d_train) == 0 or len(nearest_train) == 0 or num < 1:
        return None
    order = np.argsort(d_train, kind="stable")[:num]
    cells_img, cells_lab = [], []
    for i in order:
        j = nearest_train[i]
        cells_img += [syn_images[i], real.images[j]]
        cells_lab += [syn_labels[i], real.labels[j]]
    return viz.overlay_grid(np.stack(cells_img), np.stack(cells_lab), columns=4)


def write_outputs(out_dir: str, result: dict, png: Optional[np.ndarray], overwrite: bool):
    """audit.json, AUDIT.md and near_copies.png, all appearing at once."""
    with atomic.staged_dir(out_dir, overwrite) as staging:
        atomic.write_json_atomic(os.path.join(staging, AUDIT_JSON), result)
        atomic.write_text_atomic(os.path.join(staging, AUDIT_MD), render_markdown(result))
        if png is not None:
            tf.io.write_file(os.path.join(staging, NEAR_COPIES_PNG), tf.io.encode_png(png))


# --- number formatting ---------------------------------------------------------------------


def _f(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _n(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _tpr_cell(attack_level: dict, fpr: float) -> str:
    key = fpr_key(fpr)
    value = attack_level["tpr_at_fpr"][key]
    text = _pct(value)
    if value is not None and not attack_level["fpr_resolved"][key]:
        text += " †"
    return text


def _level_bounds(bounds: dict, level: str) -> dict:
    return bounds["per_record"] if level == "patch" else bounds["per_patient"]


# --- AUDIT.md, section by section ----------------------------------------------------------


def _header_lines(result: dict) -> list:
    p, c, m = result["privacy"], result["counts"], result["memorisation"]
    return [
        "# Leakage audit", "",
        "**Internal measurement for the data holder — not a release.** It was computed from "
        "the private training patches, the held-out patients and the critic checkpoint; this "
        "folder names patients and `near_copies.png` shows training patches. Keep it with the "
        "checkpoints, inside the institution. Auditing spends no privacy budget and does not "
        "change the run's guarantee.", "",
        f"- Run: `{result['workdir']}` (checkpoint `{result['checkpoint']}`)",
        "- Privacy: " + (f"(ε = {p['epsilon']:.3g}, δ = {p['delta']:.3g})-DP per "
                          f"**{p['privacy_unit']}**" if p["private"]
                          else "**not private** (ε = ∞): no bound applies"),
        f"- Members: {c['member_patches']} patches of "
        f"{_n(c['member_patients'], 'training patient')}. Non-members: "
        f"{c['nonmember_patches']} patches of {_n(c['nonmember_patients'], 'held-out patient')}"
        f" (splits "
        f"{', '.join(c['nonmember_splits'])}). "
        + ("All patches of every patient." if c["patches_per_patient_cap"] is None else
           f"At most {c['patches_per_patient_cap']} random patches per patient (the same "
           f"share from every patient, so that no split exceeds "
           f"{result['settings']['max_patches']})."),
    ] + ([f"- The canary patients ({', '.join(c['excluded_canary_patients'])}) are left out "
          f"of (a) and (b); their exposure is (c)."] if c.get("excluded_canary_patients")
         else []) + [
        f"- Synthetic pairs sampled from `generator/`: {m['num_synthetic']} "
        f"(seed {result['settings']['seed']}).", "",
    ]


def _attack_intro_lines() -> list:
    return [
        "## (a) Membership inference", "",
        "An attack gives every real patch a score; the higher, the more it claims the patch "
        "(or, per patient, the patient: mean of the patient's patch scores) was in the "
        "training set. **AUC** is the probability that a random member scores above a random "
        "non-member: **0.5 means no leakage** (a coin flip), 1 means members are perfectly "
        "recognisable; ± is its standard error (Hanley-McNeil), which at patch level treats "
        "patches as independent although a patient's patches are alike, so it is too small "
        "there: the patient rows are the honest unit, and with few patients they are coarse. "
        "**TPR @ FPR** is the share of members the attack catches when it may wrongly accuse "
        "only that share of non-members (1 % and 0.1 %); without leakage TPR = FPR. "
        "TPR @ 0 is the share of members scored above every non-member.", "",
    ]


def _attack_table_lines(result: dict) -> list:
    bounds = result["privacy"].get("bounds")
    header = "| attack | level | AUC | TPR @ 1 % | TPR @ 0.1 % | TPR @ 0 |"
    if bounds:
        header += " DP bound @ 1 % | DP bound @ 0.1 % |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, attack in result["attacks"].items():
        for level in ("patch", "patient"):
            a = attack[level]
            row = (f"| {ATTACK_NAMES.get(name, name)} | {level} ({a['num_members']} vs "
                   f"{a['num_nonmembers']}) | {_f(a['auc'])} ± {_f(a.get('auc_se'))} | "
                   f"{_tpr_cell(a, 0.01)} | "
                   f"{_tpr_cell(a, 0.001)} | {_pct(a['tpr_at_fpr_0'])} |")
            if bounds:
                b = _level_bounds(bounds, level)
                row += f" {_pct(b['0.01'])} | {_pct(b['0.001'])} |"
            lines.append(row)
    return lines


def _attack_note_lines(bounds) -> list:
    return [
        "",
        "† Not resolved: with n non-members the smallest false-positive rate a threshold can "
        "reach is 1/n, so this FPR lies below it; the value is interpolated on the ROC curve "
        "between FPR 0 and 1/n (a randomised threshold) and rests on a single non-member"
        + ("; such a value can exceed the DP bound by chance alone." if bounds else "."), "",
        "- **critic D(x)**: the critic's output on the real (image, label) pair. Someone "
        "holding the critic checkpoint could run it; the critic is not released.",
        "- **critic, calibrated**: D(x) minus the mean of D over the 7 other flips and "
        "rotations of the same pair, which removes how much the critic likes this kind of "
        "content (the patch's difficulty) and keeps how much more it likes this exact patch.",
        "- **nearest synthetic**: minus the distance from the patch to its nearest synthetic "
        "pair — what a recipient of the synthetic data can do.",
        "",
    ]


def _dp_bound_lines(privacy: dict) -> list:
    bounds = privacy.get("bounds")
    if not bounds:
        return []
    k = bounds["patient_group_size"]
    if privacy["privacy_unit"] == "patient":
        text = ("**DP bound.** An (ε, δ)-DP guarantee limits *any* membership attack: "
                "TPR ≤ e^ε · FPR + δ. The record is the patient, so the bound holds for the "
                "patient-level rows and, since a patch's membership here is its patient's, "
                "for the patch-level rows too.")
    else:
        text = ("**DP bound.** An (ε, δ)-DP guarantee limits *any* membership attack: "
                "TPR ≤ e^ε · FPR + δ. The record is the patch, and the patch-level bound "
                "shown is for a single patch; here a member patch's whole patient (up to "
                f"{k} patches, many overlapping) is in the training set, and for a patient "
                f"group privacy gives only (kε, k·e^((k-1)ε)·δ), whose bound (patient rows) "
                f"is usually vacuous. Measured TPRs above the patch bound therefore do not "
                f"contradict the guarantee, but they show leakage a patient-level guarantee "
                f"would rule out.")
    return [text, ""]


def _critic_mean_lines(result: dict) -> list:
    cal = result["attacks"].get("critic")
    if not cal:
        return []
    return [f"Mean critic score: members {_f(cal['mean_member'], 4)}, non-members "
            f"{_f(cal['mean_nonmember'], 4)}.", ""]


def _ratio_lines(m: dict) -> list:
    r = m["ratio"]
    return [
        "## (b) Memorisation", "",
        "Distances are root-mean-square differences over the image and label channels in "
        "[-1, 1] (label {0,1} → {-1,1}): 0 = identical.", "",
        f"- **d_train / d_held**: for each synthetic pair, the distance to its nearest training "
        f"patch divided by the distance to its nearest held-out patch. The training reference "
        f"is {_n(m['train_patients_per_draw'], 'random training patient')} "
        f"(~{_f(m['train_patches_per_draw_mean'], 0)} patches), as many as the "
        f"{_n(m['held_out_patients'], 'held-out patient')} ({m['held_out_patches']} patches), so "
        f"both references are equally large and diverse; averaged over {m['ratio_draws']} "
        f"random draws.",
        f"  - median {_f(r['median'])}, 5th percentile {_f(r['p5'])}; **fraction below 1: "
        f"{_f(r['fraction_below_1'])}** (range over draws "
        + ("n/a" if m["ratio_fraction_below_1_range"] is None else
           f"{m['ratio_fraction_below_1_range'][0]:.3f}–"
           f"{m['ratio_fraction_below_1_range'][1]:.3f}")
        + "). **Without memorisation ≈ 0.5** (and median ≈ 1): a synthetic pair is then as "
        "likely to resemble an unseen patient as a training one. Clearly above 0.5 means the "
        "generator reproduces training patients more closely than new ones.",
    ]


def _near_copy_lines(m: dict) -> list:
    lines = [
        f"- **Near-copies: {m['near_copies']} of {m['num_synthetic']}** synthetic pairs "
        f"({_pct(m['near_copy_fraction'])}) lie closer to a training patch than τ = "
        f"{_f(m['tau'], 4)}, the {m['tau_percentile']:g} % percentile of the distances from "
        f"held-out patches to their nearest training patch. A fresh patch from the same "
        f"population lands this close to a training patch in ~{m['tau_percentile']:g} % of "
        f"cases, so **without memorisation ≲ {m['tau_percentile']:g} %**. Closest synthetic-to-"
        f"training distance: {_f(m['min_d_train'], 4)}.",
    ]
    far = (m["d_train_all_median"] is not None and m["held_to_train_median"] is not None
           and m["d_train_all_median"] > 2 * m["held_to_train_median"])
    if far:
        lines.append(
            "- **Caution:** typical synthetic pairs are much farther from every real patch than "
            "real patches are from each other (medians below). Their nearest real patch is "
            "then decided by coarse properties that many synthetic pairs share, so the "
            "fraction above moves in large jumps between draws (see its range) and says "
            "little about memorisation; the near-copy count remains meaningful.")
    lines += [
        f"- Medians: synthetic → nearest training patch (all) {_f(m['d_train_all_median'], 4)}, "
        f"synthetic → nearest held-out patch {_f(m['d_held_median'], 4)}, held-out → nearest "
        f"training patch {_f(m['held_to_train_median'], 4)}.",
        f"- `{NEAR_COPIES_PNG}`: the synthetic pairs closest to a training patch, each cell "
        f"pair = synthetic (image | label overlay) then its nearest training patch (image | "
        f"overlay), two pairs per row, closest first.", "",
    ]
    return lines


def _exposure_row(name: str, e: dict, bound: Optional[dict]) -> str:
    cells = [_tpr_cell(e, f) + (f" (≤ {_pct(bound['tpr'][fpr_key(f)])})" if bound else "")
             for f in (0.01, 0.001)]
    return (f"| {name} | {_f(e['auc'])} | {cells[0]} | {cells[1]} | "
            f"{_f(e['mean_exposure_bits'], 2)} of {_f(e['max_exposure_bits'], 2)} |")


def _canary_lines(canary: Optional[dict]) -> list:
    """(c): the exposure of planted canaries (tfdpgan.leakage.exposure), or why there is none."""
    if not canary:
        return ["## (c) Canaries", "",
                "Not run: the run's data set holds no canaries (make one with "
                "tfdpgan.leakage.canaries.make_canary_dataset and train on it).", ""]
    bound = canary.get("dp_bound")
    g = canary["generator"]
    lines = [
        "## (c) Canaries", "",
        f"{_n(len(canary['patients']), 'training patient')} carry a planted signature (straight "
        f"bright labelled lines at a fixed place in every patch), each drawn from "
        f"{canary['num_candidates']} candidates; the never-inserted candidates are the "
        f"reference. **No exposure: AUC 0.5, TPR = FPR, ≈ 1 bit.** Critic: mean D over "
        f"{canary['base_patches']} held-out patches with the candidate stamped in. Generator: "
        f"99th percentile over {canary['num_synthetic']} synthetic pairs of the share of the "
        f"signature's pixels they label vessel and show bright.", "",
        "| score | AUC | TPR @ FPR 1 % | TPR @ FPR 0.1 % | exposure (bits) |", "|---|---|---|---|---|",
        _exposure_row("critic (white-box)", canary["critic"], bound),
        _exposure_row("generator (black-box)", g, bound), "",
        f"- Synthetic pairs reproducing ≥ {100 * g['reproduced_threshold']:.0f} % of a "
        f"signature: inserted {_pct(g['reproduction_inserted'])}, never inserted "
        f"{_pct(g['reproduction_other'])}.",
    ]
    if bound:
        lines.append(f"- (≤ x): the DP bound e^ε·FPR + δ for a canary, a group of "
                     f"{_n(bound['group_size'], 'record')} (group privacy).")
    return lines + [""]


def _per_patient_lines(result: dict) -> list:
    """The per-patient table, left out above 60 patients (audit.json keeps it)."""
    if len(result["per_patient"]) > 60:
        return []
    names = [n for n in ("critic", "critic_calibrated", "generator") if n in result["attacks"]]
    lines = ["## Per patient (mean score of the patient's patches)", "",
             "| patient | split | member | patches | " + " | ".join(names) + " |",
             "|" + "---|" * (4 + len(names))]
    for row in result["per_patient"]:
        lines.append(f"| {row['patient_id']} | {row['split']} | "
                     f"{'yes' if row['member'] else 'no'} | {row['num_patches']} | "
                     + " | ".join(_f(row.get(f"{n}_score"), 4) for n in names) + " |")
    return lines + [""]


def render_markdown(result: dict) -> str:
    """AUDIT.md: every number of audit.json in plain words."""
    m = result["memorisation"]
    lines = (_header_lines(result) + _attack_intro_lines() + _attack_table_lines(result)
             + _attack_note_lines(result["privacy"].get("bounds"))
             + _dp_bound_lines(result["privacy"]) + _critic_mean_lines(result)
             + _ratio_lines(m) + _near_copy_lines(m) + _canary_lines(result.get("canaries"))
             + _per_patient_lines(result) + [f"Computed in {result['seconds']} s."])
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    """A few lines for the terminal."""
    p, m = result["privacy"], result["memorisation"]
    eps = (f"ε = {p['epsilon']:.3g} per {p['privacy_unit']}" if p["private"]
           else "ε = ∞ (not private)")
    lines = [f"audit of {result['workdir']} ({eps}); no leakage: AUC 0.5, fraction 0.5"]
    bounds = p.get("bounds")
    for name, attack in result["attacks"].items():
        for level in ("patch", "patient"):
            a = attack[level]
            text = (f"  {ATTACK_NAMES.get(name, name):32s} {level:7s} AUC {_f(a['auc'])}  "
                    f"TPR@1% {_pct(a['tpr_at_fpr']['0.01'])}")
            if bounds:
                text += f" (DP bound {_pct(_level_bounds(bounds, level)['0.01'])})"
            lines.append(text)
    r = m["ratio"]
    lines.append(f"  memorisation: d_train/d_held median {_f(r['median'])}, fraction < 1 "
                 f"{_f(r['fraction_below_1'])}; near-copies {m['near_copies']}/"
                 f"{m['num_synthetic']} (τ {_f(m['tau'], 4)})")
    canary = result.get("canaries")
    if canary:
        bound = canary["dp_bound"]
        for name in ("critic", "generator"):
            e = canary[name]
            text = (f"  canary exposure, {name:9s} AUC {_f(e['auc'])}  TPR@1% "
                    f"{_pct(e['tpr_at_fpr']['0.01'])}  {_f(e['mean_exposure_bits'], 2)} bits")
            if bound:
                text += f" (DP bound {_pct(bound['tpr']['0.01'])})"
            lines.append(text)
    return "\n".join(lines)
