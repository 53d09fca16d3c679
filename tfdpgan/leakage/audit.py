"""Measure what a trained run leaks: membership inference and memorisation.

``audit_workdir(AuditConfig(workdir=W))`` writes ``W/private/audit/`` (atomically: audit.json,
AUDIT.md, near_copies.png; tfdpgan.leakage.report) and returns audit.json's contents. The
command is ``python -m tfdpgan.audit``.

THIS IS A MEASUREMENT FOR THE DATA HOLDER, NOT A RELEASE. It reads the private training
patches, the held-out patients and the critic checkpoint; its outputs name patients and
near_copies.png shows training patches. It is written under the run's private/ (owner-only,
tfdpgan.workdir; ``W/audit/`` in an old flat workdir) with the checkpoints: keep it inside
the institution. It does not change the run's privacy guarantee (it spends no ε and adds none).

Steps, each in its module:
  real       members (the run's training patients) and non-members (its val and test
             patients), an equal number of random patches from every patient; on a canaried
             data set the canary patients are left out of (a) and (b) and measured in (c)
  critic     (a) white-box: the restored critic's score D(x), raw and calibrated
  distances  (a) black-box: distance to the nearest synthetic pair; (b) memorisation
  attacks    ROC AUC, TPR at FPR 1 % / 0.1 %, per patch and per patient, and the bound
             TPR ≤ e^ε·FPR + δ that the card's (ε, δ) puts on any attack (group privacy for a
             patient under a per-patch guarantee)
  report     audit.json, AUDIT.md, near_copies.png
  exposure   (c) canaries, when the run's data set holds them (tfdpgan.leakage.canaries):
             how far the critic and the generator single out the planted signatures among
             never-inserted candidates, next to the DP bound for a canary

The run is rebuilt from its workdir (tfdpgan.workdir names, tfdpgan.gan.run settings); the
synthetic pairs come from the exported generator (tfdpgan.gan.export / sample), as a
recipient would get them.
"""
import dataclasses
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from tfdpgan import errors, workdir
from tfdpgan.data import records
from tfdpgan.gan import export, sample
from tfdpgan.leakage import (attacks, canaries, critic, distances, exposure, real,
                             report)

__all__ = ["AuditConfig", "AuditInputs", "check_inputs", "audit_workdir", "assemble_result",
           "per_patient_rows"]


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    workdir: str
    num_synthetic: int = 5000
    max_patches: int = 10000          # per split (equal share per patient); 0 = all
    seed: int = 0
    overwrite: bool = False
    calibrate: bool = True            # the 8x more expensive calibrated critic score
    near_copy_percentile: float = 1.0
    ratio_draws: int = 20             # random draws of training patients for d_train/d_held
    num_png: int = 16                 # near-copies shown in near_copies.png
    chunk: int = 1024                 # query rows per distance block
    batch_size: int = 256             # critic batch
    canary_base_patches: int = 64     # held-out patches that carry each canary candidate


@dataclasses.dataclass(frozen=True)
class AuditInputs:
    """What the audit reads from the workdir, checked before any work."""
    run: dict              # run.json's object
    checkpoint: str        # the latest checkpoint's path prefix
    generator: str         # the exported generator SavedModel
    card: dict             # privacy.json ({} if the run wrote none)
    out: str               # W/audit


def _check_settings(config: AuditConfig):
    if not config.workdir:
        raise errors.SettingsError("--workdir is required")
    if config.num_synthetic < 1:
        raise errors.SettingsError(
            f"--num_synthetic must be positive, got {config.num_synthetic}")
    if config.canary_base_patches < 1:
        raise errors.SettingsError(
            f"--canary_base_patches must be positive, got {config.canary_base_patches}")
    if config.max_patches < 0:
        raise errors.SettingsError(f"--max_patches must be >= 0, got {config.max_patches}")


def check_inputs(run_dir: str, overwrite: bool) -> AuditInputs:
    """Check everything the audit needs before any work; raise one clear error otherwise
    (MissingFileError, OutputExistsError, WorkdirError for an unreadable run.json)."""
    if not os.path.isdir(run_dir):
        raise errors.MissingFileError(f"{run_dir}: no such training workdir")
    if not workdir.has_run(run_dir):
        raise errors.MissingFileError(
            f"{workdir.path(run_dir, workdir.RUN_JSON)}: not found; is {run_dir} a training "
            f"workdir (python -m tfdpgan.train)?")
    run = workdir.read_run(run_dir)
    out = workdir.path(run_dir, workdir.AUDIT)
    if os.path.exists(out) and not overwrite:
        raise errors.OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    ckpt_dir = workdir.path(run_dir, workdir.CHECKPOINTS)
    checkpoint = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if checkpoint is None:
        raise errors.MissingFileError(f"{ckpt_dir}: no checkpoint (the white-box attack needs "
                                      f"the critic)")
    generator = workdir.path(run_dir, workdir.GENERATOR)
    if not os.path.isfile(os.path.join(generator, "saved_model.pb")):
        raise errors.MissingFileError(
            f"{generator}: no exported generator (saved_model.pb); run python -m "
            f"tfdpgan.export --workdir={run_dir}")
    has_card = os.path.isfile(workdir.path(run_dir, workdir.PRIVACY_JSON))
    card = workdir.read_card(run_dir) if has_card else {}
    return AuditInputs(run, checkpoint, generator, card, out)


def _critic_attacks(config: AuditConfig, net, patches: real.RealPatches) -> dict:
    """{"critic": ..., "critic_calibrated": ...} (the latter only with ``calibrate``)."""
    raw, cal = critic.critic_scores(net, patches.images, patches.labels, config.batch_size,
                                    config.calibrate)
    out = {"critic": attacks.attack_from_scores(patches, raw)}
    if cal is not None:
        out["critic_calibrated"] = attacks.attack_from_scores(patches, cal)
    return out


def _synthetic(config: AuditConfig, generator: str, patch_size: int):
    """``num_synthetic`` pairs from the exported generator, as a recipient samples them."""
    logging.info("sampling %d synthetic pairs from %s", config.num_synthetic, generator)
    fn, latent_dim, gen_patch = export.load_generator(generator)
    if gen_patch != patch_size:
        raise errors.WorkdirError(f"{generator}: generator patch {gen_patch} != data set "
                                  f"patch {patch_size}")
    return sample.generate(fn, latent_dim, config.num_synthetic, config.seed)


def per_patient_rows(patches: real.RealPatches, per_patient: dict) -> list:
    """audit.json's ``per_patient``: split, membership, patch count and each attack's mean
    score (``per_patient``: attack name -> score per patient)."""
    return [
        {"patient_id": pid, "split": patches.patient_split[i],
         "member": bool(patches.patient_member[i]),
         "num_patches": int(np.sum(patches.patient_index == i)),
         **{f"{name}_score": _finite(values[i]) for name, values in per_patient.items()}}
        for i, pid in enumerate(patches.patient_ids)]


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def assemble_result(config: AuditConfig, inputs: AuditInputs, rec_dir: str,
                    patches: real.RealPatches, attack_results: dict, memorisation: dict,
                    seconds: float, canary_result: Optional[dict] = None) -> dict:
    """audit.json's object (JSON-ready) from the steps' results. ``attack_results``: attack
    name -> attack_from_scores output, in the order of audit.json; ``canary_result``:
    exposure.canary_exposure (None without canaries)."""
    per_patient, attack_section = {}, {}
    for name, attack in attack_results.items():
        attack = dict(attack)
        per_patient[name] = attack.pop("per_patient")
        attack_section[name] = attack
    result = {
        "workdir": os.path.abspath(config.workdir),
        "data": os.path.abspath(rec_dir),
        "checkpoint": os.path.basename(inputs.checkpoint),
        "settings": dataclasses.asdict(config),
        "privacy": attacks.privacy_section(inputs.card, patches),
        "counts": dict(real.counts(patches), excluded_canary_patients=sorted(
            (canary_result or {}).get("patients", {}))),
        "attacks": attack_section,
        "memorisation": memorisation,
        "canaries": canary_result,
        "distance": "RMS over image and label channels in [-1, 1] (label {0,1} -> {-1,1})",
        "seconds": None,
        "per_patient": per_patient_rows(patches, per_patient),
    }
    result["seconds"] = round(seconds, 1)
    return report.json_ready(result)


def audit_workdir(config: AuditConfig) -> dict:
    """Run the whole audit of ``config.workdir``; write W/private/audit/ and return audit.json's
    contents."""
    _check_settings(config)
    inputs = check_inputs(config.workdir, config.overwrite)
    rec_dir = real.run_data_dir(inputs.run)
    patch_size = int(records.read_dataset_json(rec_dir)["patch_size"])
    started = time.time()
    info = records.read_dataset_json(rec_dir)
    canary_ids = sorted((canaries.read_canaries(info) or {}).get("patients", {}))
    loaded = real.load_real(rec_dir, config.max_patches, config.seed)
    patches = real.drop_patients(loaded, canary_ids)   # (c) measures the canaries themselves
    logging.info("real patches: %d members (%d patients), %d non-members (%d patients)",
                 int(patches.member.sum()), int(patches.patient_member.sum()),
                 int((~patches.member).sum()), int((~patches.patient_member).sum()))
    logging.info("restoring the critic from %s", inputs.checkpoint)
    net = critic.restore_critic(inputs.run, inputs.checkpoint, patch_size)
    attack_results = _critic_attacks(config, net, patches)
    syn_images, syn_labels = _synthetic(config, inputs.generator, patch_size)
    held = ~patches.member
    canary_result = exposure.canary_exposure(
        info, inputs.card, patches.images[held],
        patches.labels[held], net, syn_images, syn_labels, config.canary_base_patches,
        config.seed, config.batch_size)
    gm = distances.generator_and_memorisation(
        patches, syn_images, syn_labels, seed=config.seed,
        percentile=config.near_copy_percentile, ratio_draws=config.ratio_draws,
        chunk=config.chunk)
    attack_results["generator"] = gm["generator_attack"]
    result = assemble_result(config, inputs, rec_dir, patches, attack_results,
                             gm["memorisation"], time.time() - started, canary_result)
    png = report.near_copies_grid(syn_images, syn_labels, patches, gm["_d_train"],
                                  gm["_nearest_train"], config.num_png)
    with workdir.owner_only():
        report.write_outputs(inputs.out, result, png, config.overwrite)
    workdir.secure(inputs.out)
    return result
