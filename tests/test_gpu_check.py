"""benchmarks/gpu_check.sh runs on a machine without a GPU: it detects that, runs the CPU
subset (dp_step, critic steps with XLA and mixed precision, mirrored on 2 logical CPUs) and
writes its report."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_its_cpu_subset(tmp_path):
    out = tmp_path / "gpu_check.txt"
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), str(out)],
                          cwd=ROOT, env=dict(os.environ, GPU_CHECK_QUICK="1"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    assert "no GPU found: CPU subset" in report
    assert re.search(r"^dp_step_ratio \d+\.\d+", report, re.M), report
    rates = dict(re.findall(r"^critic_steps_per_sec (\S+) (\d+\.\d+)", report, re.M))
    assert set(rates) == {"plain", "xla", "mixed", "xla+mixed"}, report
    assert all(float(r) > 0 for r in rates.values())
    assert "strategy mirrored (2 replicas)" in report
    assert report.rstrip().endswith("== gpu_check done")
