"""The pretrained pipelines that ship inside the package load offline and are as good as
their model cards say."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_pipelines import PRETRAINED, DDPMPipeline, load_pretrained
from ddpm_pipelines.data import load_dataset
from ddpm_pipelines.evaluation import energy_distance
from ddpm_pipelines.pipeline import PRETRAINED_DIR
from schedulers import DDIMScheduler


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_folders_are_small_and_documented(name):
    folder = PRETRAINED_DIR / name
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 5_000_000
    card = (folder / "README.md").read_text()
    assert f"python examples/train_pretrained.py {name} --output-dir runs/{name} --ship" in card
    assert "CPU-minutes" in card and "bits/dim" in card
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["nll_bits_per_dim"] > 0 and metrics["train_cpu_seconds"] > 0


def test_swiss_roll_samples_are_as_close_to_held_out_data_as_real_data(monkeypatch):
    """The issue's measure: 5,000 samples against the held-out points, beside the floor of
    5,000 real training points against them (with 2,000 against 2,000 the ratio swings
    from 0.5 to 2.2 between seeds; at these sizes it stays within 0.33–0.38)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pretrained("swiss-roll")
    pipe.set_progress_bar_config(disable=True)
    points = pipe(batch_size=5000, generator=torch.Generator().manual_seed(0), output_type="pt").images
    test = load_dataset("swiss-roll", "test")
    floor = energy_distance(load_dataset("swiss-roll", "train", num_samples=5000), test)
    assert energy_distance(points, test) < 1.5 * floor


def test_digits_generate_8x8_grey_images_with_any_scheduler():
    pipe = load_pretrained("digits")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
    assert [im.size for im in images] == [(8, 8)] * 4 and images[0].mode == "L"
    ddim = DDPMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    assert ddim(batch_size=2, num_inference_steps=10, output_type="np").images.shape == (2, 8, 8, 1)


def test_an_unknown_name_is_an_error():
    with pytest.raises(
        ValueError, match=r"name='cifar10' is not a pretrained pipeline .* \('swiss-roll', 'digits'\)"
    ):
        load_pretrained("cifar10")
