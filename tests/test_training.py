"""Training (ddpm_pipelines.training and `ddpm-pipelines train`): exact resume after a kill,
two processes computing what one does, every loss decreasing, checkpoints, pushes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ddpm_pipelines import DDPMPipeline, checkpoints, training
from ddpm_pipelines.losses import training_losses
from ddpm_pipelines.resample import LossSecondMomentSampler
from ddpm_pipelines.training import TrainingConfig, TrainingError, train

ROOT = Path(__file__).resolve().parents[1]
# A small, fast run: 500 Swiss-roll points, a 50-step chain.
SMALL = dict(num_samples=500, batch_size=32, num_train_timesteps=50, warmup_steps=5, progress=False)


def _config(tmp_path: Path, name: str = "run", **overrides) -> TrainingConfig:
    return TrainingConfig(output_dir=str(tmp_path / name), **{**SMALL, **overrides})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def _cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ddpm_pipelines", *args], cwd=ROOT, env=env, **popen)


def _flags(out: Path, **options) -> list[str]:
    flags = ["--output-dir", str(out)]
    for key, value in {**SMALL, **options}.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


# ---- resume and distributed ----------------------------------------------------------------------------


def test_resume_after_a_kill_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    """A run killed (SIGKILL) mid-way and resumed ends with exactly the weights, EMA and
    optimizer of one that was never stopped: the data order, the draws, the optimizer, the
    EMA and the importance sampler's history all continue where they were."""
    options = dict(
        max_steps=200, checkpoint_every=20, loss="vlb", timestep_sampler="importance", ema_decay=0.99
    )
    whole = _cli("train", *_flags(tmp_path / "whole", **options), stderr=subprocess.DEVNULL)

    killed = _cli("train", *_flags(tmp_path / "killed", **options), stderr=subprocess.DEVNULL)
    folder = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (folder / "step-00000040").exists() and killed.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint at step 40 within 2 minutes"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = checkpoints.checkpoint_dirs(tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL and left and left[-1].name < "step-00000200", left

    resumed = _cli("train", *_flags(tmp_path / "killed", resume=True, **options), stderr=subprocess.PIPE)
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    assert whole.wait() == 0
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors"):
        a = safetensors.torch.load_file(tmp_path / "whole" / "checkpoints" / "step-00000200" / name)
        b = safetensors.torch.load_file(folder / "step-00000200" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    a, b = _weights(tmp_path / "whole" / "pipeline"), _weights(tmp_path / "killed" / "pipeline")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_compute_what_one_process_does_with_the_double_batch(tmp_path, train_in_two_processes):
    """torchrun with 2 CPU processes (gloo, through accelerate) × batch 16 = 1 process × 32,
    and the card and the metrics say so: the batch over all processes, the loss averaged
    over them."""
    train_in_two_processes(_flags(tmp_path / "two", max_steps=20, batch_size=16, log_every=5))
    one = train(_config(tmp_path, "one", max_steps=20, batch_size=32, log_every=5))
    a, b = _weights(tmp_path / "two" / "pipeline"), _weights(one.pipeline_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # The two processes' metrics are written once, by the main process, with the loss of all.
    logs = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (tmp_path / "two", tmp_path / "one")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [5, 10, 15, 20]
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-5)
    card = (tmp_path / "two" / "pipeline" / "README.md").read_text()
    assert "20 steps of batch 32 (16 × 2 processes)" in card and "2 processes on the CPU" in card
    assert "20 steps of batch 32, " in (one.pipeline_dir / "README.md").read_text()


# ---- the losses learn ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["simple", "vlb", "hybrid"])
def test_each_loss_decreases_on_the_swiss_roll(tmp_path, loss):
    """The loss on a fixed evaluation batch (fixed t and noise) falls by a clear margin."""
    config = _config(tmp_path, max_steps=150, loss=loss, learning_rate=3e-3, ema_decay=0, checkpoint_every=0)
    scheduler = training.build_scheduler(config, (1, 2))
    g = torch.Generator().manual_seed(123)
    from ddpm_pipelines.data import load_dataset

    x0 = load_dataset("swiss-roll", "test", num_samples=2000)
    t = torch.randint(0, 50, (2000,), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    def evaluation_loss(model) -> float:
        with torch.no_grad():
            fn = lambda x, s: model(x, s).sample  # noqa: E731
            return float(
                training_losses(fn, scheduler, x0, loss, t=t, noise=noise, decoder="continuous").mean()
            )

    torch.manual_seed(config.seed)
    before = evaluation_loss(training.build_model(config, x0.shape))
    after = evaluation_loss(DDPMPipeline.from_pretrained(train(config).pipeline_dir).unet)
    assert after < 0.7 * before, (before, after)


def test_importance_sampler_is_uniform_until_full_then_follows_the_second_moment():
    sampler = LossSecondMomentSampler(4, history=2, uniform_prob=0.0)
    assert torch.equal(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    sampler.update(torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([1.0, 2, 3, 4, 1, 2, 3]))
    assert torch.equal(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # t=3 has 1
    sampler.update(torch.tensor([3, 3]), torch.tensor([4.0, 8.0]))  # t=3 keeps its last two: 4, 8
    rms = torch.tensor([1.0, 2.0, 3.0, (40.0) ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(sampler.probabilities(), rms / rms.sum())
    # The weights 1/(T p_t) keep the loss unbiased: E_p[w L] = mean over t of L.
    t, w = sampler.sample(200_000, torch.Generator().manual_seed(0))
    losses = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert abs(float((w * losses[t]).mean()) - float(losses.mean())) < 0.05


# ---- what a run writes -----------------------------------------------------------------------------------


def test_a_run_writes_metrics_samples_checkpoints_and_a_model_card(tmp_path):
    config = _config(
        tmp_path,
        max_steps=30,
        log_every=10,
        sample_every=15,
        sample_steps=5,
        checkpoint_every=10,
        keep_checkpoints=2,
    )
    result = train(config)
    out = Path(config.output_dir)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    assert {"loss", "lr", "grad_norm", "examples_per_second", "epoch"} <= records[0].keys()
    assert [p.name for p in checkpoints.checkpoint_dirs(out)] == ["step-00000020", "step-00000030"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000015.png", "step-00000030.png"]
    assert any((out / "tensorboard").iterdir())
    card = (result.pipeline_dir / "README.md").read_text()
    assert "## Training" in card and "30 steps of batch 32" in card and "library_name: diffusers" in card
    assert json.loads((out / "training_config.json").read_text())["max_steps"] == 30
    pipe = DDPMPipeline.from_pretrained(result.pipeline_dir)
    assert pipe(
        batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0)
    ).images.shape == (3, 2)


def test_digits_with_a_unet_and_a_learned_variance(tmp_path):
    config = TrainingConfig(
        output_dir=str(tmp_path / "digits"),
        dataset="digits",
        model="tiny-8",
        loss="hybrid",
        max_steps=3,
        batch_size=8,
        num_train_timesteps=20,
        sample_every=3,
        sample_steps=2,
        progress=False,
    )
    pipe = DDPMPipeline.from_pretrained(train(config).pipeline_dir)
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.unet.config.out_channels == 2
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_ones(tmp_path, monkeypatch):
    config = _config(tmp_path, max_steps=20, checkpoint_every=10)
    train(config)
    before = {
        p.name: (p / "model.safetensors").read_bytes() for p in checkpoints.checkpoint_dirs(config.output_dir)
    }

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints, "_write_text", crash)  # fails after the weights are written
    with pytest.raises(TrainingError, match=r"cannot save the checkpoint .*step-00000030: No space left"):
        train(_config(tmp_path, max_steps=30, checkpoint_every=10, resume=True))
    after = checkpoints.checkpoint_dirs(config.output_dir)
    assert {p.name: (p / "model.safetensors").read_bytes() for p in after} == before
    assert sorted(p.name for p in (Path(config.output_dir) / "checkpoints").iterdir()) == sorted(before)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []

    def losses(*args, **kwargs):
        calls.append(1)
        out = training_losses(*args, **kwargs)
        return out * float("nan") if len(calls) == 7 else out

    monkeypatch.setattr(training, "training_losses", losses)
    config = _config(tmp_path, max_steps=20, checkpoint_every=5)
    with pytest.raises(
        TrainingError, match=r"the loss is nan at step 7: .*last good checkpoint is .*step-00000005"
    ):
        train(config)
    (good,) = checkpoints.checkpoint_dirs(config.output_dir)
    weights = safetensors.torch.load_file(good / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


# ---- the Hub ------------------------------------------------------------------------------------------


def test_push_at_the_end_uploads_the_pipeline_and_its_training_card(tmp_path, hub):
    result = train(_config(tmp_path, max_steps=5, push_to_hub=f"{hub.user}/swiss-roll-run"))
    assert result.push_error is None
    pipe = DDPMPipeline.from_pretrained(f"{hub.user}/swiss-roll-run")
    a, b = _weights(result.pipeline_dir), pipe.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from huggingface_hub import hf_hub_download

    assert "## Training" in Path(hf_hub_download(f"{hub.user}/swiss-roll-run", "README.md")).read_text()


def test_push_every_checkpoint(tmp_path, hub, monkeypatch):
    pushes = []
    real = training.hub.push_folder

    def spy(folder, repo_id, **kwargs):
        pushes.append(kwargs["commit_message"])
        return real(folder, repo_id, **kwargs)

    monkeypatch.setattr(training.hub, "push_folder", spy)
    repo = f"{hub.user}/every-checkpoint"
    config = _config(tmp_path, max_steps=4, checkpoint_every=2, push_to_hub=repo, push_every_checkpoint=True)
    result = train(config)
    assert pushes == ["ddpm-pipelines: step 2", "ddpm-pipelines: step 4"] and result.push_error is None
    a, b = _weights(result.pipeline_dir), DDPMPipeline.from_pretrained(repo).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_push_keeps_everything_and_says_how_to_retry(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("the Hub is unreachable")

    monkeypatch.setattr(training.hub, "push_folder", offline)
    result = train(_config(tmp_path, max_steps=5, push_to_hub="someone/run"))
    assert "ConnectionError: the Hub is unreachable" in result.push_error
    assert f"Retry with: ddpm-pipelines push {result.pipeline_dir} someone/run" in result.push_error
    assert (result.pipeline_dir / "model_index.json").exists() and checkpoints.checkpoint_dirs(
        tmp_path / "run"
    )


# ---- errors ---------------------------------------------------------------------------------------------


def test_a_dataset_smaller_than_a_batch_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match=r"has 20 examples, fewer than one batch \(batch_size=32"):
        train(_config(tmp_path, num_samples=20))


def test_an_existing_run_needs_resume(tmp_path):
    train(_config(tmp_path, max_steps=2))
    with pytest.raises(TrainingError, match=r"already holds checkpoints .* pass resume=True"):
        train(_config(tmp_path, max_steps=2))


def test_the_model_must_fit_the_data(tmp_path):
    with pytest.raises(ValueError, match="model='mlp' is for points"):
        train(_config(tmp_path, dataset="digits", num_samples=None))
    with pytest.raises(ValueError, match="model='tiny-8' is a UNet for images"):
        train(_config(tmp_path, model="tiny-8"))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("model", "resnet", r"model='resnet'.*allowed.*'mlp'"),
        ("loss", "l1", r"loss='l1'.*allowed.*'simple', 'vlb', 'hybrid'"),
        ("timestep_sampler", "x", r"timestep_sampler='x'.*'uniform', 'importance'"),
        ("mixed_precision", "fp8", r"mixed_precision='fp8'.*'no', 'fp16', 'bf16'"),
        ("lr_schedule", "step", r"lr_schedule='step'.*'constant', 'cosine', 'linear'"),
        ("batch_size", 0, r"batch_size=0 must be an integer ≥ 1"),
        ("max_steps", 1.5, r"max_steps=1.5 must be an integer ≥ 1"),
        ("checkpoint_every", -1, r"checkpoint_every=-1 must be an integer ≥ 0"),
        ("learning_rate", 0.0, r"learning_rate=0.0 must be a positive number"),
        ("ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\)"),
        ("max_grad_norm", 0.0, r"max_grad_norm=0.0 must be positive"),
        ("push_every_checkpoint", True, r"push_every_checkpoint=True needs push_to_hub"),
        ("num_workers", -1, r"num_workers=-1 must be an integer ≥ 0"),
        ("shuffle_buffer", 0, r"shuffle_buffer=0 must be an integer ≥ 1"),
        ("center_crop", True, r"center_crop=True applies to a folder or hf:NAME, not 'swiss-roll'"),
        ("random_flip", True, r"random_flip=True applies to images; 'swiss-roll' holds points"),
        ("streaming", True, r"streaming=True reads an hf:NAME dataset, not 'swiss-roll'"),
    ],
)
def test_bad_options_are_named(tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **{option: value})


def test_streaming_reads_the_whole_stream(tmp_path):
    with pytest.raises(ValueError, match=r"num_samples=500 applies to a dataset read whole, not a stream"):
        _config(tmp_path, dataset="hf:some/images", streaming=True)


def test_the_importance_sampler_refuses_a_history_of_another_shape():
    sampler = LossSecondMomentSampler(10)
    state = LossSecondMomentSampler(20).state_dict()
    with pytest.raises(ValueError, match=r"history has shape \(20, 10\), this run needs \(10, 10\)"):
        sampler.load_state_dict(state)


HEAP_PROBE = """
import json, resource, sys, torch
from ddpm_pipelines import training

def faults_of_a_64_mb_tensor_after_another():
    counts = []
    for _ in range(3):  # the fewest of 3: where the heap places a chunk varies with its history
        torch.ones(2**24)  # written, then freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(2**24)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts)

seen, step = {"before": faults_of_a_64_mb_tensor_after_another(), "steps": []}, training._optimizer_step

def probed(run):
    seen["steps"].append(faults_of_a_64_mb_tensor_after_another())
    return step(run)

training._optimizer_step = probed
training.train(training.TrainingConfig(**json.loads(sys.argv[1])))
print(json.dumps(seen))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cpu_steps_reuse_the_heap_instead_of_faulting_in_fresh_pages(tmp_path):
    """From the second step of `train` on the CPU, a freed 64 MB tensor's pages serve the next
    one, as a step's activations reuse the last step's (the first step's heap may still be
    growing); before the run, glibc's defaults map fresh pages each time. In a fresh process:
    the test process's heap has a history. (After a run, glibc reuses what the heap holds
    before it maps fresh pages, so what "after" shows depends on that history too.)"""
    config = {**SMALL, "output_dir": str(tmp_path / "run"), "max_steps": 3}
    cmd = [sys.executable, "-c", HEAP_PROBE, json.dumps(config)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert len(seen["steps"]) == 3 and seen["steps"][1:] == [0, 0]
    assert seen["before"] >= 2**24 * 4 // 4096  # every page fresh
