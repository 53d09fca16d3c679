"""benchmarks/utility_summary.py: the utility targets of one run and their spread over repeated
runs, checked against the statistics module; bad result files are refused by name."""
import json
import os
import re
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import utility_summary as us  # noqa: E402

TEST = "/cache/phantom-abc/nifti"


def _run(real, threshold, inf, eps3, eps1, fid=150.0, floor=30.0, extra=()):
    rows = [{"row": us.REAL, "dsc_mean": real, "hd95_mean_mm": 9.0, "fid": None},
            {"row": us.THRESHOLD, "dsc_mean": threshold, "hd95_mean_mm": 8.5, "fid": None},
            {"row": us.INF, "dsc_mean": inf, "hd95_mean_mm": 8.0, "fid": fid,
             "fid_real_floor": floor},
            {"row": us.EPS3, "dsc_mean": eps3, "hd95_mean_mm": 8.1, "fid": 160.0},
            {"row": us.EPS1, "dsc_mean": eps1, "hd95_mean_mm": 8.4, "fid": 170.0},
            *extra]
    return [dict(r, test_data=TEST) for r in rows]


def test_targets_of_one_run():
    t = us.targets(_run(0.65, 0.60, 0.62, 0.59, 0.63, fid=150.0, floor=30.0))
    assert t["dsc_ratio_inf_over_real"] == pytest.approx(0.62 / 0.65)
    assert t["dsc_ratio_eps3_over_inf"] == pytest.approx(0.59 / 0.62)
    assert t["dsc_eps1_minus_threshold"] == pytest.approx(0.03)
    assert t["fid_ratio_inf_over_floor"] == pytest.approx(5.0)
    missing = us.targets([r for r in _run(0.65, 0.6, 0.62, 0.59, 0.63) if r["row"] != us.EPS1])
    assert missing["dsc_eps1_minus_threshold"] is None


def test_summary_is_the_mean_and_sample_sd_over_runs():
    runs = [_run(0.65, 0.60, 0.66, 0.60, 0.64),
            _run(0.66, 0.60, 0.62, 0.63, 0.55, extra=[{"row": "ε = 10 per patch",
                                                        "dsc_mean": 0.655}])]
    text = us.summary(runs, ["a.json", "b.json"])
    inf = re.search(r"^ε = inf per patch\s+2\s+([0-9.]+) ± ([0-9.]+)", text, re.M)
    assert float(inf.group(1)) == pytest.approx(statistics.mean([0.66, 0.62]), abs=1e-3)
    assert float(inf.group(2)) == pytest.approx(statistics.stdev([0.66, 0.62]), abs=1e-3)
    assert re.search(r"^ε = 10 per patch\s+1\s+0\.655 ", text, re.M), text   # one run has it
    margin = re.search(r"^dsc_eps1_minus_threshold (\S+) ± (\S+) \(runs: (\S+) (\S+); "
                       r"target > 0: met in (\d) of (\d)\)", text, re.M)
    assert [float(margin.group(i)) for i in (3, 4)] == pytest.approx([0.04, -0.05])
    assert float(margin.group(1)) == pytest.approx(-0.005, abs=1e-3)
    assert margin.group(5, 6) == ("1", "2")
    assert "fid_ratio_inf_over_floor 5.00 ± 0.00" in text
    assert "target ≤ 3: met in 0 of 2" in text


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def test_runs_on_other_test_volumes_are_refused(tmp_path):
    a = _write(tmp_path, "a.json", _run(0.65, 0.6, 0.62, 0.59, 0.63))
    b = _write(tmp_path, "b.json", [dict(r, test_data="/other/nifti")
                                    for r in _run(0.65, 0.6, 0.62, 0.59, 0.63)])
    with pytest.raises(us.errors.InputDataError, match="different test volumes"):
        us.load_runs([a, b])
    unnamed = _write(tmp_path, "c.json", [{"row": us.REAL, "dsc_mean": 0.6}])
    with pytest.raises(us.errors.InputDataError, match="c.json.*test_data"):
        us.load_runs([unnamed])


EVALUATION = {"num_synthetic": 4000, "repeats": 1, "grid": "lr=3e-4,1e-3",
              "selection": "synthetic_val", "unet_epochs": 8, "unet_steps_per_epoch": 30,
              "fid_samples": 1000}
HOST = {"cpu": "CPU A", "isa": "avx2", "cores": 2, "machine": "x86_64", "tensorflow": "2.15.1"}


def _with(rows, **fields):
    return [dict(r, **fields) for r in rows]


def test_runs_with_other_evaluation_settings_are_refused(tmp_path):
    base = _run(0.65, 0.6, 0.62, 0.59, 0.63)
    a = _write(tmp_path, "a.json", _with(base, evaluation=EVALUATION, host=HOST))
    longer = dict(EVALUATION, unet_epochs=32)
    b = _write(tmp_path, "b.json", _with(base, evaluation=longer, host=HOST))
    with pytest.raises(us.errors.InputDataError, match="different settings.*unet_epochs"):
        us.load_runs([a, b])
    unrecorded = _write(tmp_path, "c.json", base)
    with pytest.raises(us.errors.InputDataError, match="null = not recorded"):
        us.load_runs([a, unrecorded])
    mixed = _write(tmp_path, "d.json", _with(base[:2], evaluation=EVALUATION) + base[2:])
    with pytest.raises(us.errors.InputDataError, match="d.json.*not one run"):
        us.load_runs([mixed])


def test_summary_states_the_evaluation_and_the_hosts_of_each_run(tmp_path):
    base = _run(0.65, 0.6, 0.62, 0.59, 0.63)
    other = dict(HOST, cpu="CPU B", isa="avx512f")
    runs = [_with(base, evaluation=EVALUATION, host=host) for host in (HOST, other, HOST)]
    text = us.summary(runs, ["a.json", "b.json", "c.json"])
    assert "Evaluation: 4000 synthetic pairs, 1 U-Net(s) per row of 8 x 30 steps" in text
    assert ("Computed on: CPU A (avx2, 2 cores, TensorFlow 2.15.1): runs 1, 3; "
            "CPU B (avx512f, 2 cores, TensorFlow 2.15.1): run 2.") in text
    old = us.summary([_with(base, evaluation=EVALUATION)], ["old.json"])
    assert "Computed on: not recorded: run 1." in old


def test_the_command_names_a_bad_file_and_writes_nothing(tmp_path):
    good = _write(tmp_path, "good.json", _run(0.65, 0.6, 0.62, 0.59, 0.63))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = tmp_path / "summary.txt"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "utility_summary.py"),
                           f"--output={out}", good, str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bad.json: not a utility result JSON" in proc.stderr
    assert not out.exists() and proc.stdout == ""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "utility_summary.py"),
                           f"--output={out}", good, good],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == proc.stdout and "target > 0: met in 2 of 2" in proc.stdout


def test_utility_rows_record_the_settings_of_the_evaluation_that_scored_them():
    # benchmarks/utility.py defines absl flags at import: run it in its own interpreter
    code = """
import dataclasses, json, sys
sys.path.insert(0, 'benchmarks')
import utility
from tfdpgan.evaluation.config import EvalConfig
config = EvalConfig(workdir='w', num_synthetic=123, repeats=2, fid=False)
config = dataclasses.replace(config, unet=dataclasses.replace(config.unet, epochs=32))
report = {'settings': {'flags': json.loads(json.dumps(dataclasses.asdict(config)))},
          'host': {'cpu': 'X'}}
print(json.dumps(utility._provenance(report)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    from tfdpgan.evaluation import config as eval_config
    assert got == {"evaluation": dict(EVALUATION, num_synthetic=123, repeats=2, unet_epochs=32,
                                      unet_steps_per_epoch=eval_config.DEFAULT_UNET
                                      .steps_per_epoch, grid=eval_config.DEFAULT_GRID,
                                      fid_samples=0),
                   "host": {"cpu": "X"}}
