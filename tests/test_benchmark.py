"""The step benchmark runs and reports ratios (its figures are for people, not assertions)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_scheduler_step_benchmark_runs(tmp_path):
    out = tmp_path / "step.json"
    cmd = [sys.executable, "benchmarks/scheduler_step.py", "--rounds", "1", "--steps", "5", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "diffusers/ours" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"] for r in rows} == {"points 10000×2", "images 16×3×32×32"}
    assert all(r["ratio"] > 0 and r["ours_us"] > 0 and r["diffusers_us"] > 0 for r in rows)


def test_scheduler_step_benchmark_rejects_bad_arguments():
    cmd = [sys.executable, "benchmarks/scheduler_step.py", "--rounds", "0"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--rounds=0" in result.stderr
