"""UNetModel and MLPModel: presets, diffusers' files, strict safetensors-only loading with
clear errors, and atomic saves."""

from __future__ import annotations

import json
import pickle

import diffusers
import pytest
import safetensors.torch
import torch

from ddpm_pipelines import MLPModel, UNetModel
from ddpm_pipelines.models import UNET_PRESETS


def _count(name: str, **kwargs) -> int:
    with torch.device("meta"):  # shapes only: the 114M-parameter preset costs no memory
        return sum(p.numel() for p in UNetModel.from_preset(name, **kwargs).parameters())


def test_ddpm_paper_presets():
    """Ho et al. 2020, Appendix B: 35.7M parameters for CIFAR-10, 114M for 256×256."""
    assert _count("ddpm-cifar10-32") == 35_746_307
    assert round(_count("ddpm-256") / 1e6) == 114
    with torch.device("meta"):
        cifar = UNetModel.from_preset("ddpm-cifar10-32")
    assert cifar.config.block_out_channels == (128, 256, 256, 256)
    assert cifar.config.dropout == 0.1 and cifar.config.layers_per_block == 2
    # Attention at 16×16: the second resolution of 32×32.
    assert cifar.config.down_block_types[1] == "AttnDownBlock2D"
    assert cifar.config.down_block_types.count("AttnDownBlock2D") == 1


@pytest.mark.parametrize("name", list(UNET_PRESETS))
def test_learned_variance_doubles_the_output_channels(name):
    with torch.device("meta"):
        model = UNetModel.from_preset(name, learned_variance=True)
    assert model.config.out_channels == 2 * model.config.in_channels


def test_small_presets_run_and_take_overrides():
    model = UNetModel.from_preset("tiny-8", in_channels=3, learned_variance=True)
    x = torch.randn(2, 3, 8, 8)
    assert model(x, 10).sample.shape == (2, 6, 8, 8)
    assert UNetModel.from_preset("small-32")(torch.randn(1, 3, 32, 32), 5).sample.shape == (1, 3, 32, 32)


def test_preset_errors():
    with pytest.raises(ValueError, match=r"preset='cifar' is not known; allowed values: \('ddpm-cifar10-32'"):
        UNetModel.from_preset("cifar")
    with pytest.raises(ValueError, match="learned_variance=True needs out_channels=2"):
        UNetModel.from_preset("tiny-8", learned_variance=True, out_channels=1)


def _check_same_outputs(a, b, sample, t=7):
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(sample, t).sample, b(sample, t).sample, rtol=0, atol=0)


def test_unet_files_are_diffusers_own(tmp_path):
    torch.manual_seed(0)
    model = UNetModel.from_preset("tiny-8")
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "UNet2DModel"
    x = torch.randn(2, 1, 8, 8)
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path)
    _check_same_outputs(model, theirs, x)
    _check_same_outputs(model, UNetModel.from_pretrained(tmp_path), x)
    # ... and what diffusers saves, ours loads.
    theirs.save_pretrained(tmp_path / "theirs")
    _check_same_outputs(theirs, UNetModel.from_pretrained(tmp_path / "theirs"), x)


def test_mlp_round_trip_and_dtype(tmp_path):
    torch.manual_seed(0)
    model = MLPModel(in_features=3, hidden_features=32, num_blocks=2, time_embedding_dim=16)
    model.save_pretrained(tmp_path)
    loaded = MLPModel.from_pretrained(tmp_path)
    assert loaded.config.hidden_features == 32 and not loaded.training
    _check_same_outputs(model, loaded, torch.randn(5, 3))
    assert MLPModel.from_pretrained(tmp_path, torch_dtype=torch.float64).dtype == torch.float64


def test_mlp_timesteps_shared_or_per_example():
    torch.manual_seed(0)
    model = MLPModel(out_features=4).eval()
    x = torch.randn(6, 2)
    with torch.no_grad():
        shared = model(x, 17).sample
        assert shared.shape == (6, 4)
        torch.testing.assert_close(shared, model(x, torch.tensor(17)).sample)
        torch.testing.assert_close(shared, model(x, torch.full((6,), 17)).sample)
        per_example = model(x, torch.arange(6)).sample
    assert not torch.allclose(per_example[0], per_example[5])


def test_mlp_errors():
    with pytest.raises(ValueError, match=r"sample has shape \(4, 3\); MLPModel needs \(batch, 2\)"):
        MLPModel()(torch.randn(4, 3), 0)
    with pytest.raises(ValueError, match="hidden_features=0 must be a positive integer"):
        MLPModel(hidden_features=0)
    with pytest.raises(ValueError, match="time_embedding_dim=15 must be an even integer"):
        MLPModel(time_embedding_dim=15)


# ---- loading is strict and safetensors-only ---------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = MLPModel(hidden_features=16, num_blocks=1, time_embedding_dim=8)
    model.save_pretrained(tmp_path)
    return tmp_path, model


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_pickle_weights_are_refused_never_unpickled(saved, no_unpickling):
    folder, _ = saved
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with open(folder / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"proj_in.weight": [1.0]}, f)
    with pytest.raises(OSError, match=r"only pickle weights \(diffusion_pytorch_model.bin\).*never loaded"):
        MLPModel.from_pretrained(folder)


def test_missing_weights_file(saved):
    folder, _ = saved
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(OSError, match=r"diffusion_pytorch_model.safetensors not found"):
        MLPModel.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_safetensors_names_the_file(saved, damage):
    folder, _ = saved
    path = folder / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(
        OSError, match=r"diffusion_pytorch_model.safetensors is not a readable safetensors file"
    ):
        MLPModel.from_pretrained(folder)


def test_missing_unexpected_and_misshapen_weights(saved):
    folder, model = saved
    path = folder / "diffusion_pytorch_model.safetensors"
    state = {k: v.clone() for k, v in model.state_dict().items()}

    safetensors.torch.save_file({k: v for k, v in state.items() if k != "proj_in.bias"}, path)
    with pytest.raises(ValueError, match=r"1 missing weights \['proj_in.bias'\], 0 unexpected"):
        MLPModel.from_pretrained(folder)

    safetensors.torch.save_file({**state, "extra.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"0 missing weights \[\], 1 unexpected weights \['extra.weight'\]"):
        MLPModel.from_pretrained(folder)

    safetensors.torch.save_file({**state, "proj_in.bias": torch.zeros(3)}, path)
    with pytest.raises(
        ValueError, match=r"weight 'proj_in.bias' has shape \(3,\), the model expects \(16,\)"
    ):
        MLPModel.from_pretrained(folder)


def test_config_errors(saved):
    folder, _ = saved
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_class_name": "StableDiffusion3Model"}))
    with pytest.raises(
        ValueError, match=r"config for the class 'StableDiffusion3Model'; this loads only \('MLPModel',\)"
    ):
        MLPModel.from_pretrained(folder)
    with pytest.raises(
        ValueError, match=r"config for the class 'StableDiffusion3Model'.*'UNet2DModel', 'UNetModel'"
    ):
        UNetModel.from_pretrained(folder)
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        MLPModel.from_pretrained(folder)
    config_path.unlink()
    with pytest.raises(OSError, match=r"config.json not found"):
        MLPModel.from_pretrained(folder)


def test_path_errors(saved):
    folder, _ = saved
    with pytest.raises(ValueError, match="is a file; pass the folder that holds it"):
        MLPModel.from_pretrained(folder / "config.json")
    with pytest.raises(ValueError, match=r"revision='v1' selects a Hub commit, but .* is a local folder"):
        MLPModel.from_pretrained(folder, revision="v1")


def test_an_interrupted_save_leaves_the_previous_files_intact(saved, monkeypatch):
    folder, model = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    original_save = safetensors.torch.save_file

    def crash_midway(tensors, filename, metadata=None):
        original_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a torn write, then the process "dies"
            f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash_midway)
    changed = MLPModel(hidden_features=16, num_blocks=1, time_embedding_dim=8, in_features=5)
    with pytest.raises(KeyboardInterrupt):
        changed.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in folder.parent.iterdir() if ".saving-" in p.name]  # no temporary left
    monkeypatch.undo()
    _check_same_outputs(model, MLPModel.from_pretrained(folder), torch.randn(3, 2))
