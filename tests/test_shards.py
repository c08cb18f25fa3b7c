"""Many samples to .npz shards (ddpm_pipelines.shards): the same set for any batch size and
number of processes, resumable after a kill, checked against another run's folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddpm_pipelines import load_pretrained, shards
from ddpm_pipelines.pipeline import PRETRAINED_DIR
from ddpm_pipelines.shards import read_shards, sample_to_shards

ROOT = Path(__file__).resolve().parents[1]
# 10 samples in shards of 4 (the last holds 2), a 10-step chain: quick on either pipeline.
RUN = dict(num_samples=10, shard_size=4, num_inference_steps=10, progress=False)


def _draw_in(out: Path, name: str, num_samples: int, batch_size: int, shard_size: int, launcher: list[str]):
    """`ddpm-pipelines sample` of the shipped pipeline `name` into `out`, started by `launcher`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["sample", str(PRETRAINED_DIR / name), "--out", str(out), "--num-samples", str(num_samples)]
    args += ["--batch-size", str(batch_size), "--shard-size", str(shard_size), "--steps", "10"]
    command = [*launcher, "-m", "ddpm_pipelines", *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )


@pytest.mark.parametrize("name", ["swiss-roll", "digits"])
def test_the_set_does_not_depend_on_the_batch_size(tmp_path, name):
    pipe = load_pretrained(name)
    a = read_shards(sample_to_shards(pipe, tmp_path / "a", batch_size=3, **RUN))
    b = read_shards(sample_to_shards(pipe, tmp_path / "b", batch_size=10, **RUN))
    if name == "digits":
        np.testing.assert_array_equal(a, b)
    else:  # the same draws; a matmul of 3 rows may round unlike one of 10 (measured: 1 ulp)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    if name == "digits":  # uint8 NHWC, the layout of improved-diffusion's and ADM's scripts
        assert a.dtype == np.uint8 and a.shape == (10, 8, 8, 1) and 0 < a.mean() < 255
    else:
        assert a.dtype == np.float32 and a.shape == (10, 2)
    shard_sizes = [len(np.load(tmp_path / "a" / f"shard-{k:06d}.npz")["arr_0"]) for k in range(3)]
    assert shard_sizes == [4, 4, 2] and len(list((tmp_path / "a").iterdir())) == 4  # + the manifest
    # sample i is the chain from generators of (seed, i): the first 4 of a run of 10 are a run of 4
    c = read_shards(sample_to_shards(pipe, tmp_path / "c", batch_size=4, **{**RUN, "num_samples": 4}))
    np.testing.assert_allclose(c, a[:4], rtol=0, atol=1e-6)
    d = read_shards(sample_to_shards(pipe, tmp_path / "d", batch_size=4, seed=1, **RUN))
    assert np.abs(d.astype(float) - a).max() > 0.1  # another seed: other samples


def test_two_processes_draw_what_one_does(tmp_path):
    one = _draw_in(tmp_path / "one", "digits", 10, 4, 3, [sys.executable])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two = _draw_in(tmp_path / "two", "digits", 10, 2, 3, command)
    for process in (one, two):
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors[-3000:]
    np.testing.assert_array_equal(read_shards(tmp_path / "one"), read_shards(tmp_path / "two"))


def test_a_killed_run_continues_where_it_stopped(tmp_path):
    """Killed (SIGKILL) once its first shards are written, started again with the same
    arguments: it draws only the missing shards, clears what the kill left half-written, and
    ends where an uninterrupted run does."""
    out = tmp_path / "killed"
    process = _draw_in(out, "digits", 100, 2, 2, [sys.executable])
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.npz"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "no shard before the kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert 2 <= len(written) < 50
    (out / ".shard-000049.npz.torn.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    pipe = load_pretrained("digits")
    sample_to_shards(pipe, out, 100, batch_size=2, shard_size=2, num_inference_steps=10, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz") if p.name in written} == written
    assert len(list(out.glob("shard-*.npz"))) == 50 and not list(out.glob(".*"))
    whole = sample_to_shards(
        pipe, tmp_path / "whole", 100, batch_size=25, shard_size=2, num_inference_steps=10
    )
    np.testing.assert_array_equal(read_shards(out), read_shards(whole))


def test_a_folder_of_another_run_is_refused(tmp_path):
    pipe = load_pretrained("swiss-roll")
    sample_to_shards(pipe, tmp_path, **RUN)
    with pytest.raises(ValueError, match=r"holds the samples of another run \(seed: 0 there, 1 now\)"):
        sample_to_shards(pipe, tmp_path, seed=1, **RUN)
    with pytest.raises(ValueError, match=r"num_inference_steps: 10 there, 20 now"):
        sample_to_shards(pipe, tmp_path, **{**RUN, "num_inference_steps": 20})
    other = load_pretrained("swiss-roll")
    next(other.unet.parameters()).data[0] += 1  # other weights, the same everything else
    with pytest.raises(ValueError, match=r"weights: '[0-9a-f]{64}' there"):
        sample_to_shards(other, tmp_path, **RUN)
    manifest = json.loads((tmp_path / shards.MANIFEST).read_text())
    assert manifest["weights"] == shards.fingerprint(pipe.unet) and manifest["num_samples"] == 10


def test_missing_shards_are_named(tmp_path):
    sample_to_shards(load_pretrained("swiss-roll"), tmp_path, **RUN)
    (tmp_path / "shard-000001.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 1 of its 3 shards \(first: shard-000001.npz\)"):
        read_shards(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_samples=0), r"num_samples=0 must be a positive integer"),
        (dict(num_samples=4, batch_size=0), r"batch_size=0 must be a positive integer"),
        (dict(num_samples=4, shard_size=2.5), r"shard_size=2.5 must be a positive integer"),
        (dict(num_samples=4, rank=2, world=2), r"rank=2 must be in \[0, world=2\)"),
    ],
)
def test_bad_arguments_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        sample_to_shards(load_pretrained("swiss-roll"), tmp_path, progress=False, **options)
