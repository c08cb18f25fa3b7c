"""push_to_hub and from_pretrained against the local Hub (tests/hub_server.py) with the real
huggingface_hub client: files, model card, revisions, the offline cache, and errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants

from ddpm_pipelines import DDPMPipeline, MLPModel, UNetModel
from schedulers import DDPMScheduler

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_id(hub, request):
    return f"{hub.user}/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")


def _pipe(seed=0):
    torch.manual_seed(seed)
    pipe = DDPMPipeline(unet=UNetModel.from_preset("tiny-8").eval(), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


def test_push_uploads_safetensors_configs_and_a_model_card(repo_id):
    pipe = _pipe()
    commit = pipe.push_to_hub(repo_id)
    files = set(HfApi().list_repo_files(repo_id))
    assert {
        "README.md",
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    } <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    assert HfApi().model_info(repo_id).sha == commit.oid

    card = ModelCard.load(repo_id)
    assert card.data.license == "apache-2.0" and card.data.library_name == "diffusers"
    assert {"ddpm", "unconditional-image-generation"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert f'DDPMPipeline.from_pretrained("{repo_id}")' in card.text

    np.testing.assert_array_equal(_images(DDPMPipeline.from_pretrained(repo_id)), _images(pipe))
    theirs = diffusers.DDPMPipeline.from_pretrained(repo_id)  # diffusers reads it from the Hub too
    theirs.set_progress_bar_config(disable=True)
    assert np.abs(_images(theirs) - _images(pipe)).max() < 2e-3


def test_a_second_push_is_a_new_revision_and_the_old_one_still_loads(repo_id):
    first, second = _pipe(seed=0), _pipe(seed=1)
    old = first.push_to_hub(repo_id, commit_message="first")
    new = second.push_to_hub(repo_id, commit_message="second")
    assert old.oid != new.oid
    np.testing.assert_array_equal(_images(DDPMPipeline.from_pretrained(repo_id)), _images(second))
    np.testing.assert_array_equal(
        _images(DDPMPipeline.from_pretrained(repo_id, revision=old.oid)), _images(first)
    )
    assert [c.title for c in HfApi().list_repo_commits(repo_id)][:2] == ["second", "first"]


def test_models_push_and_load_alone(repo_id):
    torch.manual_seed(0)
    mlp = MLPModel(hidden_features=16, num_blocks=1).eval()
    mlp.push_to_hub(repo_id)
    card = ModelCard.load(repo_id)
    assert "ddpm" in card.data.tags and "unconditional-image-generation" not in card.data.tags
    assert card.data.pipeline_tag is None and f'MLPModel.from_pretrained("{repo_id}")' in card.text
    x = torch.randn(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(MLPModel.from_pretrained(repo_id)(x, 3).sample, mlp(x, 3).sample)

    unet = UNetModel.from_preset("tiny-8").eval()
    unet.push_to_hub(repo_id + "-unet")
    assert HfApi().list_repo_files(repo_id + "-unet").count("diffusion_pytorch_model.safetensors") == 1
    loaded = UNetModel.from_pretrained(repo_id + "-unet")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in unet.parameters())
    # A pipeline's component alone, by subfolder.
    _pipe().push_to_hub(repo_id + "-pipe")
    assert isinstance(UNetModel.from_pretrained(repo_id + "-pipe", subfolder="unet"), UNetModel)


def _run_offline(script: str, *args: str) -> subprocess.CompletedProcess:
    """`script` in a separate Python with HF_HUB_OFFLINE=1 and no server at all; it must succeed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # port 9: nothing there
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_loads_offline_from_the_cache(repo_id, tmp_path):
    """A separate process with HF_HUB_OFFLINE=1, the same HF_HOME and no server at all."""
    pipe = _pipe()
    pipe.push_to_hub(repo_id)
    DDPMPipeline.from_pretrained(repo_id)  # fills the cache
    script = (
        "import sys, numpy as np, torch\n"
        "from ddpm_pipelines import DDPMPipeline\n"
        "pipe = DDPMPipeline.from_pretrained(sys.argv[1])\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "out = pipe(batch_size=2, num_inference_steps=5, generator=g, output_type='np')\n"
        "np.save(sys.argv[2], out.images)\n"
        "try:\n"
        "    DDPMPipeline.from_pretrained(sys.argv[1] + '-never-downloaded')\n"
        "except OSError as err:\n"
        "    print(err)\n"
    )
    out = tmp_path / "images.npy"
    result = _run_offline(script, repo_id, str(out))
    np.testing.assert_array_equal(np.load(out), _images(pipe))
    assert "-never-downloaded' is not in the Hugging Face cache" in result.stdout
    assert "HF_HUB_OFFLINE=1" in result.stdout


def test_offline_a_partly_cached_repo_names_what_is_missing(repo_id):
    """A separate process with HF_HUB_OFFLINE=1: a repo whose model_index.json alone is in the
    cache, and one whose components are but not its model_index.json."""
    _pipe().push_to_hub(repo_id)
    _pipe().push_to_hub(repo_id + "-no-index")
    HfApi().hf_hub_download(repo_id, "model_index.json")
    for name in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        HfApi().hf_hub_download(repo_id + "-no-index", name)
    script = (
        "import sys\n"
        "from ddpm_pipelines import DDPMPipeline\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        DDPMPipeline.from_pretrained(name)\n"
        "    except OSError as err:\n"
        "        print(err)\n"
    )
    result = _run_offline(script, repo_id, repo_id + "-no-index")
    first, second = result.stdout.splitlines()
    assert f"'{repo_id}' is not fully in the Hugging Face cache" in first
    assert "unet/diffusion_pytorch_model.safetensors" in first and "HF_HUB_OFFLINE=1" in first
    assert f"'{repo_id}-no-index' is not fully in the Hugging Face cache" in second
    assert "lacks model_index.json" in second


def test_local_files_only_without_a_cached_copy(repo_id):
    _pipe().push_to_hub(repo_id)
    with pytest.raises(OSError, match=rf"'{repo_id}' is not in the Hugging Face cache"):
        DDPMPipeline.from_pretrained(repo_id, local_files_only=True)


def test_a_hub_repo_with_only_pickle_weights_is_refused_and_not_downloaded(repo_id, tmp_path):
    pipe = _pipe()
    pipe.save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # stands in for a pickle file; never opened
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=tmp_path)
    with pytest.raises(OSError, match=r"safetensors weights \(pickle weights such as .bin files are never"):
        DDPMPipeline.from_pretrained(repo_id)
    cached = list(Path(constants.HF_HUB_CACHE).rglob("*.bin"))
    assert cached == []


def test_missing_repo_revision_and_bad_ids(repo_id):
    with pytest.raises(OSError, match=rf"'{repo_id}' is not a local folder, and the Hub at .* has no repo"):
        DDPMPipeline.from_pretrained(repo_id)
    _pipe().push_to_hub(repo_id)
    with pytest.raises(OSError, match=rf"revision 'v9' does not exist in the Hub repo '{repo_id}'"):
        DDPMPipeline.from_pretrained(repo_id, revision="v9")
    with pytest.raises(OSError, match=r"'not a//valid id' is neither a local folder nor a valid Hub repo id"):
        DDPMPipeline.from_pretrained("not a//valid id")


def test_push_card_and_index_for_points(repo_id):
    torch.manual_seed(0)
    pipe = DDPMPipeline(unet=MLPModel(hidden_features=16, num_blocks=1), scheduler=DDPMScheduler())
    pipe.push_to_hub(repo_id)
    card = ModelCard.load(repo_id)
    assert "points = pipe(batch_size=1000).images" in card.text and card.data.pipeline_tag is None
    index = json.loads(Path(HfApi().hf_hub_download(repo_id, "model_index.json")).read_text())
    assert index["unet"] == ["ddpm_pipelines", "MLPModel"]


def test_write_file_atomically_keeps_the_old_file_when_the_write_fails(tmp_path):
    from ddpm_pipelines.hub import write_file_atomically

    path = tmp_path / "card.md"
    write_file_atomically(path, lambda tmp: tmp.write_text("old"))

    def torn(tmp):
        tmp.write_text("half of the new")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_file_atomically(path, torn)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["card.md"]


# ---- file permissions ----------------------------------------------------------------------


@pytest.fixture
def umask_022():
    """The umask 022 of most systems, for the test's duration (os.umask is process-wide)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    """The permission bits of `root` and of everything below it, by relative path, in octal."""
    return {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def test_saved_files_are_world_readable_like_diffusers(tmp_path, umask_022):
    """0644 files and 0755 folders under umask 022, as diffusers and open() make them: a
    pipeline and its model card, a model alone, a scheduler alone, and .npz shards."""
    from ddpm_pipelines import load_pretrained
    from ddpm_pipelines.hub import write_text_atomically
    from ddpm_pipelines.shards import sample_to_shards

    out, pipe = tmp_path / "out", _pipe()
    pipe.save_pretrained(out / "pipe")
    write_text_atomically(out / "pipe" / "README.md", pipe._model_card("someone/pipe"))
    MLPModel(hidden_features=16, num_blocks=1).save_pretrained(out / "model")
    pipe.scheduler.save_pretrained(out / "scheduler")
    sample_to_shards(load_pretrained("swiss-roll"), out / "shards", 2, num_inference_steps=2, progress=False)
    modes = _modes(out)
    assert "pipe/unet/diffusion_pytorch_model.safetensors" in modes and "shards/shard-000000.npz" in modes
    assert "scheduler/scheduler_config.json" in modes
    assert modes == _world_readable(out, modes)


def _world_readable(root: Path, modes: dict[str, str]) -> dict[str, str]:
    """`modes` as they should be under umask 022: 0755 folders, 0644 files."""
    return {name: "0o755" if (root / name).is_dir() else "0o644" for name in modes}


def test_checkpoints_are_world_readable_like_diffusers(tmp_path, umask_022):
    from ddpm_pipelines.checkpoints import save_checkpoint
    from ddpm_pipelines.training import TrainingConfig

    model = MLPModel(hidden_features=16, num_blocks=1)
    optimizer = torch.optim.AdamW(model.parameters())
    config = TrainingConfig(output_dir=str(tmp_path))
    save_checkpoint(tmp_path, 1, 0, model, optimizer, None, None, config, processes=1, seconds=0.0, loss=0.0)
    modes = _modes(tmp_path / "checkpoints")
    assert "step-00000001/model.safetensors" in modes
    assert modes == _world_readable(tmp_path / "checkpoints", modes)
