"""The benchmarks run and report ratios (their figures are for people, not assertions)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

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


def test_sampling_benchmark_runs(tmp_path):
    out = tmp_path / "sampling.json"
    cmd = [sys.executable, "benchmarks/sampling.py", "--rounds", "1", "--steps-unet", "2", "--steps-mlp", "3"]
    cmd += ["--no-compile", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "diffusers/ours" in result.stdout and "max abs diff" in result.stdout
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert {(r["case"], r["variant"]) for r in rows} == {
        ("unet small-32, 16×3×32×32", "diffusers DDPMPipeline"),
        ("unet small-32, 16×3×32×32", "ours, eager"),
        ("mlp, 10000×2 points", "diffusers loop"),
        ("mlp, 10000×2 points", "ours, eager"),
    }
    assert all(r["seconds"] > 0 and r["ms_per_step"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(r["agrees"] and 0 <= r["max_abs_diff"] < 1e-3 for r in rows)  # the same computation
    assert {r["steps"] for r in rows} == {2, 3}
    parts = {r["component"]: r["ms_per_step"] for r in results["components"]}
    assert "MLP forward, eager" in parts and "diffusers DDPMScheduler.step" in parts
    assert all(ms > 0 for ms in parts.values())
    assert "its 6 hidden matmuls alone, in blocks of 1000 rows" in parts
    ceiling = results["ceiling"]
    assert ceiling["max_ratio"] > 0 and ceiling["blocked_max_ratio"] > 0 and "in cache" in result.stdout
    assert results["compile"] == [] and results["meta"]["compile_mode"] is None


def test_training_benchmark_runs(tmp_path):
    out = tmp_path / "training.json"
    cmd = [sys.executable, "benchmarks/training.py", "--sizes", "8", "--images", "8", "--batch-size", "2"]
    cmd += ["--steps", "2", "--warmup", "1", "--rounds", "1", "--step-rounds", "2", "--no-compile"]
    cmd += ["--memory-images", "12", "--memory-few", "4", "--memory-size", "8", "--memory-repeats", "1"]
    cmd += ["--out", str(out)]
    # One torch thread: two would wait on each other whenever another process takes a core.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "loader / in memory" in result.stdout and "Peak PSS" in result.stdout
    results = json.loads(out.read_text())
    rows = results["rows"]
    variants = ["diffusers recipe", "diffusers recipe, heap kept", "ours, in memory", "ours, loader"]
    assert [r["variant"] for r in rows] == variants
    assert all(r["examples_per_second"] > 0 and r["mfu"] > 0 and len(r["rounds"]) == 1 for r in rows)
    assert results["meta"]["forward_flops_per_sample"]["8"] > 0 and results["meta"]["peak_flops"] > 0
    (ratios,) = results["ratios"]
    assert ratios["loader_over_in_memory"] > 0 and ratios["eager_over_diffusers"] > 0
    assert ratios["compiled_over_diffusers"] is None and ratios["compiled_over_diffusers_heap_kept"] is None
    (turn,) = results["steps_in_turn"]
    assert [r["variant"] for r in turn["rows"]] == ["recipe's step", "ours, eager"]
    assert turn["rows"][0]["speed_over_recipe"] == 1 and turn["rows"][1]["speed_over_recipe"] > 0
    assert all(r["ms_per_step"] > 0 for r in turn["rows"]) and 0 < turn["convolution_share"] < 1
    assert "The step alone" in result.stdout
    assert [m["data"] for m in results["memory"]] == ["loader", "memory"]
    assert all(m["few_bytes"] > 0 and m["many_bytes"] > 0 for m in results["memory"])


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("scheduler_step", ["--rounds", "0"], "--rounds=0"),
        ("sampling", ["--rounds", "0"], "--rounds=0"),
        ("sampling", ["--steps-mlp", "0"], "--steps-mlp=0"),
        ("sampling", ["--steps-unet", "1001"], "--steps-unet=1001"),
        ("sampling", ["--device", "tpu"], "--device"),
        ("training", ["--device", "tpu"], "--device"),
    ],
)
def test_benchmarks_reject_bad_arguments(script, args, message):
    cmd = [sys.executable, f"benchmarks/{script}.py", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--warmup", "0"], "--warmup=0"),
        (["--rounds", "0"], "--rounds=0"),
        (["--images", "10", "--batch-size", "16"], "--images=10"),
        (["--memory-few", "600", "--memory-images", "600"], "--memory-images=600"),
        (["--sizes", "32,12"], "--sizes: 12"),
    ],
)
def test_training_benchmark_checks_its_arguments(args, message, capsys, monkeypatch):
    """In this process (the subprocess cases above cover the command itself)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from training import parse_args

    with pytest.raises(SystemExit) as exit:
        parse_args(args)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given without a CUDA device")
@pytest.mark.parametrize("script", ["sampling", "training"])
def test_benchmarks_refuse_cuda_without_a_gpu(script):
    cmd = [sys.executable, f"benchmarks/{script}.py", "--device", "cuda"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--device cuda" in result.stderr and "no CUDA device" in result.stderr
