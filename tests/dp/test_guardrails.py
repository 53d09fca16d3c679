"""Settings that void the guarantee are refused before anything is written."""
import dataclasses
import math
import os
import subprocess
import sys

import pytest

from tfdpgan import errors
from tfdpgan.dp import card as privacy_card
from tfdpgan.gan import run, training
from tiny import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("kwargs,match", [
    (dict(delta=0.01), "delta"),            # 1/N = 0.01 for N = 100: no guarantee
    (dict(delta=0.5), "delta"),
    (dict(delta=0.0), "delta"),
    (dict(noise_multiplier=0.0), "noise_multiplier"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon=-3.0), "epsilon"),
])
def test_void_budgets_are_refused(kwargs, match):
    args = dict(num_records=100, expected_batch_size=10, critic_steps=10, epsilon=3.0)
    with pytest.raises(errors.SettingsError, match=match):
        privacy_card.make_plan(**{**args, **kwargs})


def test_fixed_seed_with_tf_privacy_noise_is_refused(patch_records, tmp_path):
    """TF Privacy's noise restarts with the process: a fixed --tf_seed would repeat it after a
    resume. The fast backend (checkpointed generator) accepts the seed."""
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=patch_records,
                             **dict(TINY, epsilon=3.0, tf_seed=1))
    training.check_settings(config)
    bad = dataclasses.replace(config, gan=dataclasses.replace(config.gan, dp_backend="tf_privacy"))
    with pytest.raises(errors.SettingsError, match="repeat the noise"):
        training.check_settings(bad)
    training.check_settings(dataclasses.replace(bad, epsilon=math.inf))   # no noise: fine


def test_valid_delta_just_below_one_over_n_is_accepted():
    plan = privacy_card.make_plan(num_records=100, expected_batch_size=10, critic_steps=10,
                                  epsilon=3.0, delta=0.0099)
    assert plan.delta == 0.0099 and plan.noise_multiplier > 0


def test_zero_clip_is_refused_before_the_workdir_exists(patch_records, tmp_path):
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=patch_records, epsilon=3.0,
                             **dict(TINY, critic_steps=2))
    with pytest.raises(errors.SettingsError, match="l2_norm_clip"):
        training.train(dataclasses.replace(config, l2_norm_clip=0.0))
    assert not os.path.exists(config.workdir)
    # a non-private run has no clip to check
    training.check_settings(dataclasses.replace(config, epsilon=math.inf, l2_norm_clip=0.0))


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--delta=0.5", "--l2_norm_clip=0"])
def test_command_line_refuses_with_one_message(patch_records, tmp_path, flag):
    workdir = str(tmp_path / "w")
    done = subprocess.run([sys.executable, "-m", "tfdpgan.train", f"--data={patch_records}",
                           f"--workdir={workdir}", "--critic_steps=2", "--init_from=", flag],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors_printed = [l for l in done.stderr.splitlines() if l.startswith("error:")]
    assert len(errors_printed) == 1 and "Traceback" not in done.stderr
    assert not os.path.exists(workdir)


def test_resuming_on_a_changed_data_folder_is_refused(patch_records, tmp_path):
    import shutil
    rec = str(tmp_path / "rec")
    shutil.copytree(patch_records, rec)
    config = run.TrainConfig(workdir=str(tmp_path / "w"), data=rec, epsilon=3.0,
                             **dict(TINY, critic_steps=2))
    training.train(config)
    shard = run.records.shard_paths(rec, "train")[0]
    os.remove(shard)
    shutil.copyfile(run.records.shard_paths(rec, "train")[0], shard)   # other content/size
    with pytest.raises(errors.WorkdirError, match="data set changed"):
        training.train(config)
