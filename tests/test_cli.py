"""The command line, `ddpm-pipelines` (run in-process through `cli.main`)."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard

from ddpm_pipelines import DDPMPipeline
from ddpm_pipelines.cli import main
from ddpm_pipelines.evaluation import frechet_distance
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


def test_evaluate_quality_against_steps_writes_a_table_and_a_plot(trained, tmp_path, capsys):
    args = [
        "evaluate",
        str(trained),
        "--dataset",
        "swiss-roll",
        "--out",
        str(tmp_path),
        "--num-samples",
        "60",
    ]
    kept = ["--samples", str(tmp_path / "samples")]
    assert main([*args, *kept, "--sampler", "ddim,unipc", "--steps", "3,6", "--batch-size", "60"]) == 0
    rows = json.loads((tmp_path / "quality_vs_steps.json").read_text())
    assert [(r["sampler"], r["num_inference_steps"], r["model_calls"]) for r in rows] == [
        ("ddim", 3, 3),
        ("ddim", 6, 6),
        ("unipc", 3, 3),
        ("unipc", 6, 6),
    ]
    assert all(r["energy_distance"] > 0 and "nll_bits_per_dim" not in r for r in rows)
    table = (tmp_path / "quality_vs_steps.md").read_text()
    assert table.startswith("| sampler | steps | model calls | energy_distance | floor | ratio |")
    assert table in capsys.readouterr().out
    assert (tmp_path / "quality_vs_steps.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "ddim-3",
        "ddim-6",
        "unipc-3",
        "unipc-6",
    ]
    with pytest.raises(SystemExit) as exit:
        main([*args, "--sampler", "ddim,euler"])
    assert (
        exit.value.code == 2
        and "'euler' is not one of ddpm, ddim, dpm-solver++, unipc" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit:
        main([*args, "--steps", "10,0"])
    assert (
        exit.value.code == 2
        and "'10,0' is not a comma-separated list of whole numbers ≥ 1" in capsys.readouterr().err
    )


def test_evaluate_fid_reads_shards_of_sample_and_a_reference(tmp_path, capsys, monkeypatch):
    """FID and precision/recall of the shipped digits, the samples drawn by `sample` first, the
    real side a saved reference; the Inception weights random (tests/test_fid.py's fixture)."""
    from test_fid import random_inception_weights

    from ddpm_pipelines.evaluation import FeatureStatistics, InceptionFeatures
    from ddpm_pipelines.shards import read_shards

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = random_inception_weights(tmp_path / "inception.safetensors")
    inception = InceptionFeatures(weights, device="cpu")
    reference = tmp_path / "reference.npz"
    FeatureStatistics.of(inception(torch.rand(8, 1, 8, 8) * 2 - 1), inception.name).save(reference)
    digits = str(PRETRAINED_DIR / "digits")
    drawn = ["--num-samples", "6", "--steps", "4", "--sampler", "ddim", "--seed", "1"]
    assert main(["sample", digits, "--out", str(tmp_path / "s"), *drawn]) == 0
    shards = read_shards(tmp_path / "s")
    args = [
        "evaluate",
        digits,
        "--dataset",
        "digits",
        "--out",
        str(tmp_path / "e"),
        "--samples",
        str(tmp_path / "s"),
    ]
    more = [
        "--fid",
        "--inception-weights",
        str(weights),
        "--reference",
        str(reference),
        "--nll-examples",
        "0",
    ]
    assert main([*args, *drawn, *more]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    fake = inception(torch.from_numpy(shards).permute(0, 3, 1, 2) / 127.5 - 1)
    saved = FeatureStatistics.load(reference)
    assert metrics["fid"] == pytest.approx(frechet_distance(fake, saved), rel=1e-6)
    assert {"fid_floor", "precision_inception", "recall_inception_floor"} <= set(metrics)
    assert not (tmp_path / "e" / "vlb_terms.png").exists()  # no likelihood asked for
    # The real train images' statistics went to the cache, for the next run.
    assert len(list((tmp_path / "cache" / "ddpm-pipelines" / "statistics").glob("inception-*.npz"))) == 1
    assert main([*args, *drawn, *more, "--num-samples", "7"]) == 2  # the folder holds 6 samples
    assert "num_samples: 6 there, 7 now" in capsys.readouterr().err


def test_push_uploads_a_saved_folder(trained, hub):
    """The weights as saved; the card retitled for the repo (training wrote it for the local
    folder), its training section kept, the local card left as it was."""
    repo_id = f"{hub.user}/cli-push"
    local_card = (trained / "README.md").read_text()
    local_name = local_card.split("\n# ", 1)[1].split("\n", 1)[0]  # the run's folder
    assert local_name.startswith(str(trained.parent)) and f'from_pretrained("{local_name}")' in local_card
    assert main(["push", str(trained), repo_id]) == 0
    pipe = DDPMPipeline.from_pretrained(repo_id)
    saved = DDPMPipeline.from_pretrained(trained)
    assert all(
        torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), saved.unet.parameters(), strict=True)
    )
    card = ModelCard.load(repo_id)
    assert card.text.lstrip().startswith(f"# {repo_id}\n")
    assert f'pipe = DDPMPipeline.from_pretrained("{repo_id}")' in card.text
    assert local_name not in card.text.split("## Training")[0]
    assert card.text.split("## Training")[1] == local_card.split("## Training")[1]
    assert card.data.license == "apache-2.0" and (trained / "README.md").read_text() == local_card


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
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["scheduler"], manifest["num_inference_steps"]) == ("DDIMScheduler", 5)
    # --num-inference-steps is --steps by its long name: the same run, nothing drawn again
    assert main([*args[:-2], "--num-inference-steps", "5", "--sampler", "ddim"]) == 0
    assert main([*args, "--sampler", "unipc"]) == 2  # the folder holds DDIM's samples
    assert "scheduler: 'DDIMScheduler' there, 'UniPCMultistepScheduler' now" in capsys.readouterr().err
    assert main(["sample", roll, "--out", str(tmp_path / "u.png"), "--sampler", "unipc", "--steps", "5"]) == 0
    assert PIL.Image.open(tmp_path / "u.png").size == (256, 256)
    with pytest.raises(SystemExit) as exit:
        main([*args, "--sampler", "euler"])
    assert exit.value.code == 2 and "invalid choice: 'euler'" in capsys.readouterr().err


def test_the_shipped_pipelines_by_name_and_no_writes_in_the_package(tmp_path, monkeypatch, capsys):
    """The names "digits" and "swiss-roll", as load_pretrained takes them; evaluate's results go to the
    current folder, never into the installed package; an image model evaluated without
    --fid and --dino says which numbers it skipped."""
    monkeypatch.chdir(tmp_path)
    package = {p for p in PRETRAINED_DIR.rglob("*")}
    assert main(["sample", "digits", "--out", "digits.png", "--batch-size", "4", "--steps", "2"]) == 0
    assert PIL.Image.open(tmp_path / "digits.png").size[0] > 0
    roll = ["--dataset", "swiss-roll", "--num-samples", "20", "--batch-size", "20", "--steps", "2"]
    assert main(["evaluate", "swiss-roll", *roll, "--nll-examples", "0"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["energy_distance"] > 0
    (tmp_path / "metrics.json").unlink()
    assert main(["evaluate", str(PRETRAINED_DIR / "swiss-roll"), *roll, "--nll-examples", "0"]) == 0
    assert (tmp_path / "metrics.json").exists()
    capsys.readouterr()
    assert main(["evaluate", "digits", "--dataset", "digits", "--nll-examples", "0", "--out", "e"]) == 0
    assert "skipped FID, precision/recall and FD_DINOv2" in capsys.readouterr().err
    assert {p for p in PRETRAINED_DIR.rglob("*")} == package
