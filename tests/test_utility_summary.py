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
