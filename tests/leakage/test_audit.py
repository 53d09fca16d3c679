"""The whole audit on the shared tiny trained workdir, its refusals, and the command."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tfdpgan import audit as audit_command
from tfdpgan import errors, workdir as workdir_lib
from tfdpgan.gan import run as gan_run
from tfdpgan.leakage import audit, critic, report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_run(tiny_workdir, tmp_path_factory):
    """A copy of the session's tiny DP run (the audit writes W/audit/)."""
    workdir = str(tmp_path_factory.mktemp("audit") / "w")
    shutil.copytree(tiny_workdir, workdir, ignore=shutil.ignore_patterns("audit"))
    return workdir


def _small(workdir, **kwargs):
    return audit.AuditConfig(workdir=workdir, num_synthetic=40, max_patches=60, **kwargs)


@pytest.mark.slow
def test_audit_of_a_trained_workdir(tiny_run):
    result = audit.audit_workdir(_small(tiny_run))
    out = workdir_lib.path(tiny_run, workdir_lib.AUDIT)
    assert out.startswith(workdir_lib.private_dir(tiny_run))   # reads real patches
    assert sorted(os.listdir(out)) == ["AUDIT.md", "audit.json", "near_copies.png"]
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o700)
    assert {oct(os.stat(os.path.join(out, n)).st_mode & 0o777) for n in os.listdir(out)} == {
        oct(0o600)}
    on_disk = json.load(open(os.path.join(out, "audit.json")))
    assert on_disk == result
    c = result["counts"]
    # tiny_dataset: 3 training patients, 1 val and 2 test patients, 40 patches each; the cap
    # of 60 per split keeps min(60 // 3, 60 // 1, 60 // 2) = 20 patches of every patient
    assert c == {"member_patients": 3, "nonmember_patients": 3, "member_patches": 60,
                 "nonmember_patches": 60, "nonmember_splits": ["test", "val"],
                 "patches_per_patient_cap": 20, "excluded_canary_patients": []}
    assert set(result["attacks"]) == {"critic", "critic_calibrated", "generator"}
    for attack in result["attacks"].values():
        assert 0.0 <= attack["patch"]["auc"] <= 1.0
        assert attack["patch"]["num_members"] == 60 and attack["patch"]["num_nonmembers"] == 60
        assert attack["patient"]["num_members"] == 3 and attack["patient"]["num_nonmembers"] == 3
        assert attack["patient"]["fpr_resolved"] == {"0.01": False, "0.001": False}
    p = result["privacy"]
    card = workdir_lib.read_card(tiny_run)
    assert p["private"] and p["epsilon"] == card["epsilon"] and p["delta"] == card["delta"]
    assert p["bounds"]["per_record"]["0.01"] == pytest.approx(
        min(1.0, math.exp(card["epsilon"]) * 0.01 + card["delta"]))
    mem = result["memorisation"]
    assert mem["num_synthetic"] == 40 and mem["tau"] > 0
    assert 0.0 <= mem["ratio"]["fraction_below_1"] <= 1.0
    assert mem["train_patients_per_draw"] == 3 and mem["held_out_patients"] == 3
    assert mem["held_out_patches"] == mem["train_patches_per_draw_mean"] == 60
    assert [row["member"] for row in result["per_patient"]].count(True) == 3
    text = open(os.path.join(out, "AUDIT.md")).read()
    assert "not a release" in text and "0.5 means no leakage" in text
    assert "Without memorisation ≈ 0.5" in text and "e^ε · FPR + δ" in text
    assert "Canaries" in text and result["canaries"] is None
    public = report.render_markdown(dict(result, privacy={
        "private": False, "epsilon": None, "delta": None, "privacy_unit": "patch",
        "bounds": None}))
    assert "**not private**" in public and "DP bound" not in public
    assert "DP bound @ 1 %" in text
    # the critic restored is the trained one: its scores differ from a fresh critic's
    run = workdir_lib.read_run(tiny_run)
    fresh = gan_run.build_wgan(gan_run.config_from_run(run), 16,
                               gan_run.plan_from_run(run)).critic
    restored = critic.restore_critic(run, tf.train.latest_checkpoint(
        workdir_lib.path(tiny_run, workdir_lib.CHECKPOINTS)), 16)
    x = tf.random.uniform([4, 16, 16, 2], -1, 1, seed=0)
    assert not np.allclose(fresh(x).numpy(), restored(x).numpy())


@pytest.mark.slow
def test_audit_refuses_bad_input_without_output(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such training workdir"):
        audit.audit_workdir(_small(str(tmp_path / "missing")))
    # a copy without its generator, then without its checkpoints
    broken = str(tmp_path / "broken")
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("audit"))
    shutil.rmtree(workdir_lib.path(broken, workdir_lib.GENERATOR))
    with pytest.raises(FileNotFoundError, match="no exported generator"):
        audit.audit_workdir(_small(broken))
    shutil.rmtree(workdir_lib.path(broken, workdir_lib.CHECKPOINTS))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        audit.audit_workdir(_small(broken))
    assert not os.path.exists(workdir_lib.path(broken, workdir_lib.AUDIT))
    with pytest.raises(ValueError, match="num_synthetic"):
        audit.audit_workdir(dataclasses.replace(_small(tiny_run), num_synthetic=0))


def test_flags_build_the_config():
    fv = flags.FlagValues()
    audit_command.define_flags(fv)
    fv(["audit", "--workdir=W", "--num_synthetic=7", "--max_patches=0", "--seed=3",
        "--nocalibrate", "--overwrite", "--canary_base_patches=9"])
    assert audit_command.config_from_flags(fv) == audit.AuditConfig(
        workdir="W", num_synthetic=7, max_patches=0, seed=3, calibrate=False, overwrite=True,
        canary_base_patches=9)
    fv = flags.FlagValues()
    audit_command.define_flags(fv)
    fv(["audit"])
    assert audit_command.config_from_flags(fv) == audit.AuditConfig(workdir="")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfdpgan.audit", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli(tiny_run, tmp_path):
    missing = _cli(f"--workdir={tmp_path / 'nothing'}")
    assert missing.returncode != 0 and "error:" in missing.stderr
    assert not os.path.exists(tmp_path / "nothing")
    workdir = str(tmp_path / "w")
    shutil.copytree(tiny_run, workdir, ignore=shutil.ignore_patterns("audit"))
    args = [f"--workdir={workdir}", "--num_synthetic=30", "--max_patches=30", "--seed=1"]
    done = _cli(*args, "--nocalibrate")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AUC" in done.stdout and "near-copies" in done.stdout and "DP bound" in done.stdout
    audit_json = os.path.join(workdir_lib.path(workdir, workdir_lib.AUDIT), "audit.json")
    result = json.load(open(audit_json))
    assert result["memorisation"]["num_synthetic"] == 30 and result["settings"]["seed"] == 1
    # min(30 // 3 training, 30 // 1 val, 30 // 2 test patients)
    assert result["counts"]["patches_per_patient_cap"] == 10
    assert "critic_calibrated" not in result["attacks"]
    again = _cli(*args)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert json.load(open(audit_json)) == result
    replaced = audit.audit_workdir(_small(workdir, overwrite=True))
    assert json.load(open(audit_json)) == replaced
    assert "critic_calibrated" in replaced["attacks"]
    assert not [name for name in os.listdir(workdir_lib.private_dir(workdir))
                if name.startswith(".audit")]


def test_bad_settings_are_refused_before_any_work(tmp_path):
    for config, message in ((audit.AuditConfig(workdir=""), "--workdir"),
                            (audit.AuditConfig(workdir=str(tmp_path), num_synthetic=0),
                             "num_synthetic"),
                            (audit.AuditConfig(workdir=str(tmp_path), canary_base_patches=0),
                             "canary_base_patches")):
        with pytest.raises(errors.SettingsError, match=message):
            audit.audit_workdir(config)
    assert os.listdir(tmp_path) == []
