"""The leaky-reference settings (library function = flagfile), and the audit of a run trained
on a canaried data set (canary patients measured in (c), left out of (a) and (b))."""
import math
import os

import pytest
from absl import flags

from tfdpgan import train as train_command, workdir as workdir_lib
from tfdpgan.gan import run, training
from tfdpgan.leakage import audit, canaries, reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flagfile_equals_the_library_settings():
    fv = flags.FlagValues()
    train_command.define_flags(fv)
    fv(["train", f"--flagfile={os.path.join(ROOT, reference.FLAGFILE)}"])
    from_flags = train_command.config_from_flags(fv)
    config = reference.leaky_reference_config(from_flags.workdir)
    assert from_flags == config
    assert math.isinf(config.epsilon) and not config.private
    assert config.phantom.patch_size == 32 and config.base_filters == 8
    assert config.phantom.num_patients == 4 and config.critic_steps_per_generator_step == 1
    private = reference.leaky_reference_config("w", data="REC", epsilon=3.0, tf_seed=1)
    assert private.private and private.data == "REC" and private.tf_seed == 1
    assert private.gan == config.gan and private.critic_steps == config.critic_steps


@pytest.mark.slow
def test_audit_of_a_canaried_run(tiny_dataset, tmp_path):
    from tiny import TINY
    rec = str(tmp_path / "canaried")
    info = canaries.make_canary_dataset(
        tiny_dataset[1], rec, canaries.CanaryConfig(num_canaries=1, num_candidates=30))
    (canary,) = info["canaries"]["patients"]
    workdir = str(tmp_path / "run")
    training.train(run.TrainConfig(workdir=workdir, data=rec, epsilon=3.0,
                                   **dict(TINY, critic_steps=8)))
    result = audit.audit_workdir(audit.AuditConfig(workdir=workdir, num_synthetic=40,
                                                   max_patches=0))
    assert result["counts"]["excluded_canary_patients"] == [canary]
    assert result["counts"]["member_patients"] == 2           # 3 training patients - canary
    assert canary not in [row["patient_id"] for row in result["per_patient"]]
    c = result["canaries"]
    assert c["patients"] == {canary: info["canaries"]["inserted"][0]}
    assert c["num_candidates"] == 30 and c["num_synthetic"] == 40
    card = workdir_lib.read_card(workdir)
    assert c["dp_bound"]["group_size"] == 40 and c["dp_bound"]["epsilon"] == card["epsilon"]
    for name in ("critic", "generator"):
        assert 0.0 <= c[name]["auc"] <= 1.0 and c[name]["num_inserted"] == 1
        assert len(c[name]["exposure_bits"]) == 1
    text = open(os.path.join(workdir_lib.path(workdir, workdir_lib.AUDIT), "AUDIT.md")).read()
    assert "## (c) Canaries" in text and "| critic (white-box) |" in text
    assert f"canary patients ({canary}) are left out" in text
