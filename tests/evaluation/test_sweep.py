"""The ε sweep at tiny size on the session's tiny data set: results.csv/md/png,
resumability, flagfiles. The sweep trains its own two tiny runs (it is what is tested)."""
import csv
import math
import os

import pytest
from absl import flags as absl_flags

from tiny import TINY
from tfdpgan import errors, workdir as workdir_lib
from tfdpgan import sweep as sweep_command
from tfdpgan.evaluation import config as config_lib, inputs, sweep, unet
from tfdpgan.gan import run as run_lib, training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def swept(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    config = sweep.SweepConfig(
        sweep_dir=str(root / "sweep"), epsilons=(math.inf, 3.0),
        train=run_lib.TrainConfig(workdir="", data=tiny_dataset[1],
                                  **dict(TINY, critic_steps=4, summary_every=100,
                                         image_every=100, checkpoint_every=100)),
        evaluation=config_lib.EvalConfig(
            workdir="", num_synthetic=32, fid=False, selection="real_val", grid="",
            unet=unet.UNetConfig(base_filters=4, depth=2, learning_rate=3e-3, batch_size=16,
                                 epochs=1, steps_per_epoch=2, augment=False, max_restarts=0)))
    lines = []
    rows = sweep.run_sweep(config, "--batch_size=20\n", progress=lines.append)
    return config, rows, lines


def _read_csv(config):
    with open(os.path.join(config.sweep_dir, "results.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_results_files(swept):
    config, rows, lines = swept
    table = _read_csv(config)
    assert [(r["row"], r["epsilon_target"]) for r in table] == [
        ("synthetic", "inf"), ("synthetic", "3"), ("real_train", ""), ("threshold", "")]
    assert set(table[0]) == set(sweep.CSV_COLUMNS)
    inf, three = table[0], table[1]
    assert inf["epsilon_spent"] == "" and float(inf["noise_multiplier"]) == 0.0
    assert 2.7 <= float(three["epsilon_spent"]) <= 3.0 and float(three["noise_multiplier"]) > 0
    for r in table:
        assert 0.0 <= float(r["dsc_mean"]) <= 1.0 and r["test_set"] == "default"
        assert r["num_patients"] == "2" and r["selection"] == "real_val"
    text = open(os.path.join(config.sweep_dir, "results.md")).read()
    assert "| synthetic | ∞ |" in text and "| synthetic | 3 |" in text
    assert "upper bound" in text and "outside the DP guarantee" in text
    with open(os.path.join(config.sweep_dir, "results.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("eps_inf", "eps_3"):
        run = os.path.join(config.sweep_dir, name)
        assert os.path.isfile(os.path.join(run, "private", "eval", "report.json"))
        flags_txt = open(workdir_lib.path(run, workdir_lib.FLAGS_TXT)).read()
        assert flags_txt.startswith("--batch_size=20\n") and f"--workdir={run}" in flags_txt
    assert os.path.isfile(os.path.join(config.sweep_dir, "baselines", "private", "eval",
                                       "report.json"))
    assert any("ε=3: training into" in line for line in lines)
    assert lines[-1].startswith("[sweep] finished")


@pytest.mark.slow
def test_second_run_redoes_nothing(swept, monkeypatch):
    config, rows, _ = swept
    before = open(os.path.join(config.sweep_dir, "results.csv")).read()

    def forbidden(*args, **kwargs):
        raise AssertionError("redone")

    # training.train runs (it checks the finished run's settings) but trains and exports nothing
    monkeypatch.setattr(training, "_loop", forbidden)
    monkeypatch.setattr(training, "finish", forbidden)
    monkeypatch.setattr(unet, "train_unet", forbidden)
    monkeypatch.setattr(inputs, "test_cases", forbidden)   # no evaluation work at all
    lines = []
    assert sweep.run_sweep(config, "--batch_size=20\n", progress=lines.append) == rows
    assert open(os.path.join(config.sweep_dir, "results.csv")).read() == before
    assert sum("training finished earlier" in line for line in lines) == 2
    assert sum("finished earlier, not redone" in line for line in lines) == 5


@pytest.mark.slow
def test_changed_training_flags_are_not_silently_reused(swept, monkeypatch):
    config, _, _ = swept
    calls = []
    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append(a) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sweep.run_sweep(config, "--batch_size=21\n", progress=lambda line: None)
    assert len(calls) == 1     # went to training.train, which resumes or refuses other settings


@pytest.mark.parametrize("cfg", ["sweep_demo.cfg", "sweep_paper.cfg"])
def test_flagfiles(cfg, monkeypatch):
    fv = absl_flags.FlagValues()
    sweep_command.define_flags(fv)
    monkeypatch.chdir(ROOT)   # flagfiles include each other by repo-relative path
    fv(["sweep", f"--flagfile=flags/{cfg}"])
    config, text = sweep_command.config_from_flags(fv)
    config.evaluation.validate()
    assert config.epsilons[0] == math.inf and len(config.epsilons) >= 2
    assert "--epsilon=" not in text and "--workdir=" not in text
    assert f"--critic_steps={config.train.critic_steps}" in text
    if cfg == "sweep_paper.cfg":
        assert config.evaluation.unet.base_filters == 32 and config.evaluation.unet.depth == 4
        assert len(config_lib.parse_grid(config.evaluation.grid)) > 1
        assert config.train.phantom.patch_size == 96


def test_epsilon_parsing_and_plot_positions():
    assert sweep.parse_epsilons(["inf", "10", "0.5"]) == (math.inf, 10.0, 0.5)
    for bad in (["0"], ["x"], ["3", "3.0"], []):
        with pytest.raises(errors.SettingsError):
            sweep.parse_epsilons(bad)
    x = sweep.x_positions([1.0, 10.0, math.inf])
    assert x(1.0) == 0.0 and x(10.0) == 1.0 and x(math.inf) >= 2.0


def test_workdir_flag_is_refused():
    fv = absl_flags.FlagValues()
    sweep_command.define_flags(fv)
    fv(["sweep", "--workdir=somewhere"])
    with pytest.raises(errors.SettingsError, match="sweep_dir"):
        sweep_command.config_from_flags(fv)


def test_multi_worker_strategy_is_refused():
    fv = absl_flags.FlagValues()
    sweep_command.define_flags(fv)
    fv(["sweep", "--strategy=multi_worker"])
    with pytest.raises(errors.SettingsError, match="multi_worker"):
        sweep_command.config_from_flags(fv)
