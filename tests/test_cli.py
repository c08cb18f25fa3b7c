"""The command line, `ddpm-pipelines` (run in-process through `cli.main`)."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch

from ddpm_pipelines import DDPMPipeline
from ddpm_pipelines.cli import main
from ddpm_pipelines.pipeline import PRETRAINED_DIR

TRAIN = ["--num-samples", "300", "--batch-size", "32", "--num-train-timesteps", "20", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A pipeline trained by `ddpm-pipelines train` (10 steps on the Swiss roll)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--output-dir", str(out), "--max-steps", "10", *TRAIN]) == 0
    return out / "pipeline"


def test_train_writes_a_pipeline_whose_card_holds_the_command(trained):
    card = (trained / "README.md").read_text()
    assert f"ddpm-pipelines train --output-dir {trained.parent} --max-steps 10" in card
    assert DDPMPipeline.from_pretrained(trained).scheduler.config.num_train_timesteps == 20


def test_sample_saves_a_picture(trained, tmp_path):
    out = tmp_path / "roll.png"
    assert main(["sample", str(trained), "--out", str(out), "--batch-size", "50", "--steps", "5"]) == 0
    assert PIL.Image.open(out).size == (256, 256)


def test_evaluate_writes_the_metrics_and_the_plot(trained, tmp_path, capsys):
    args = ["evaluate", str(trained), "--dataset", "swiss-roll", "--out", str(tmp_path)]
    assert main([*args, "--num-samples", "100", "--nll-examples", "8", "--batch-size", "100"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["kind"] == "points" and len(metrics["nll_terms_bits_per_dim"]) == 20
    assert metrics["energy_distance"] > 0 and metrics["energy_distance_floor"] > 0
    assert (tmp_path / "vlb_terms.png").read_bytes().startswith(b"\x89PNG")
    assert '"nll_bits_per_dim"' in capsys.readouterr().out


def test_push_uploads_a_saved_folder(trained, hub):
    assert main(["push", str(trained), f"{hub.user}/cli-push"]) == 0
    pipe = DDPMPipeline.from_pretrained(f"{hub.user}/cli-push")
    saved = DDPMPipeline.from_pretrained(trained)
    assert all(
        torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), saved.unet.parameters(), strict=True)
    )


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "x"), "--batch-size", "0"]) == 2
    assert "ddpm-pipelines train: error: batch_size=0 must be an integer ≥ 1" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "someone/x"]) == 2
    assert "holds no model_index.json or config.json" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "y"), "--dataset", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err
    digits = str(PRETRAINED_DIR / "digits")
    assert main(["sample", digits, "--out", str(tmp_path / "s"), "--num-samples", "0"]) == 2
    assert "ddpm-pipelines sample: error: num_samples=0 must be a positive integer" in capsys.readouterr().err
    assert (
        main(["sample", digits, "--out", str(tmp_path / "s"), "--num-samples", "4", "--shard-size", "-1"])
        == 2
    )
    assert "shard_size=-1 must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["train", "--output-dir", str(tmp_path), "--loss", "l1"])
    assert exit.value.code == 2 and "invalid choice: 'l1'" in capsys.readouterr().err


def test_sample_takes_a_sampler_by_name(tmp_path, capsys):
    roll = str(PRETRAINED_DIR / "swiss-roll")
    args = ["sample", roll, "--out", str(tmp_path / "s"), "--num-samples", "6", "--steps", "5"]
    assert main([*args, "--sampler", "ddim"]) == 0
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["scheduler"] == "DDIMScheduler"
    assert main([*args, "--sampler", "unipc"]) == 2  # the folder holds DDIM's samples
    assert "scheduler: 'DDIMScheduler' there, 'UniPCMultistepScheduler' now" in capsys.readouterr().err
    assert main(["sample", roll, "--out", str(tmp_path / "u.png"), "--sampler", "unipc", "--steps", "5"]) == 0
    assert PIL.Image.open(tmp_path / "u.png").size == (256, 256)
    with pytest.raises(SystemExit) as exit:
        main([*args, "--sampler", "euler"])
    assert exit.value.code == 2 and "invalid choice: 'euler'" in capsys.readouterr().err
