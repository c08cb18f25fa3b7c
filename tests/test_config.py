"""Scheduler configurations in diffusers' format: `scheduler_config.json` written here reads
in diffusers and back, saving is atomic, and our schedulers run inside diffusers' own
pipelines with the same images as diffusers' schedulers (DESIGN.md, "Public API")."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

import schedulers
from schedulers import DDIMScheduler, DDPMScheduler

CONFIG_NAME = "scheduler_config.json"
RTOL = 1e-4


def public(config) -> dict:
    """The constructor options of a config, without diffusers' private keys."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def assert_alphas_cumprod_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = RTOL) -> None:
    ours, theirs = ours.to(torch.float64), theirs.to(torch.float64)
    assert ours.shape == theirs.shape
    relative = ((ours - theirs).abs() / theirs.abs()).max().item()
    assert relative < rtol, f"alphas_cumprod differ by {relative:.3g} relative"


def read_json(directory) -> dict:
    with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
        return json.load(f)


TRAINED_BETAS = np.linspace(1e-3, 0.05, 200).tolist()

DDPM_OPTIONS = [
    pytest.param({}, id="defaults"),
    pytest.param({"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03}, id="linear"),
    pytest.param(
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "prediction_type": "v_prediction",
        },
        id="scaled_linear",
    ),
    pytest.param({"beta_schedule": "sigmoid", "beta_start": 1e-4, "beta_end": 0.02}, id="sigmoid"),
    pytest.param(
        {"beta_schedule": "squaredcos_cap_v2", "variance_type": "learned_range"}, id="squaredcos_cap_v2"
    ),
    pytest.param({"beta_schedule": "cosine", "num_train_timesteps": 4000}, id="cosine"),
    pytest.param(
        {
            "num_train_timesteps": len(TRAINED_BETAS),
            "trained_betas": TRAINED_BETAS,
            "variance_type": "fixed_large",
            "clip_sample": False,
            "clip_sample_range": 2.5,
            "prediction_type": "sample",
            "timestep_spacing": "trailing",
        },
        id="trained_betas",
    ),
    pytest.param(
        {"timestep_spacing": "linspace", "steps_offset": 1, "variance_type": "fixed_small_log"}, id="linspace"
    ),
]


# ---- ours → diffusers ----------------------------------------------------------------------


@pytest.mark.parametrize("options", DDPM_OPTIONS)
def test_ddpm_config_reads_in_diffusers(tmp_path, options):
    ours = DDPMScheduler(**options)
    ours.save_pretrained(tmp_path)
    saved = read_json(tmp_path)
    assert saved["_class_name"] == "DDPMScheduler"
    expected_schedule = options.get("beta_schedule", "linear")
    if expected_schedule == "cosine":  # saved under diffusers' name, which diffusers reads
        expected_schedule = "squaredcos_cap_v2"
    assert saved["beta_schedule"] == expected_schedule

    theirs = diffusers.DDPMScheduler.from_pretrained(tmp_path)
    assert type(theirs) is diffusers.DDPMScheduler
    for key, value in options.items():
        if key != "beta_schedule":
            assert theirs.config[key] == value, key
    assert theirs.config.beta_schedule == expected_schedule
    assert_alphas_cumprod_close(ours.alphas_cumprod, theirs.alphas_cumprod)


def test_cosine_is_the_same_schedule_as_squaredcos_cap_v2():
    a = DDPMScheduler(beta_schedule="cosine")
    b = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    assert a.config.beta_schedule == "squaredcos_cap_v2"
    assert torch.equal(a.alphas_cumprod, b.alphas_cumprod)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"set_alpha_to_one": False, "steps_offset": 1, "beta_schedule": "cosine"}, id="cosine"),
    ],
)
def test_ddim_config_reads_in_diffusers(tmp_path, options):
    ours = DDIMScheduler(**options)
    ours.save_pretrained(tmp_path)
    assert read_json(tmp_path)["_class_name"] == "DDIMScheduler"
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path)
    assert type(theirs) is diffusers.DDIMScheduler
    assert theirs.config.set_alpha_to_one == ours.config.set_alpha_to_one
    assert theirs.config.steps_offset == ours.config.steps_offset
    assert theirs.config.beta_schedule == ours.config.beta_schedule
    assert_alphas_cumprod_close(ours.alphas_cumprod, theirs.alphas_cumprod)


# ---- diffusers → ours ----------------------------------------------------------------------

COMMON_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "num_train_timesteps": 500,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "variance_type": "learned_range",
                "prediction_type": "v_prediction",
                "clip_sample": False,
                "clip_sample_range": 3.0,
                "timestep_spacing": "trailing",
                "steps_offset": 1,
            },
            id="scaled_linear",
        ),
        pytest.param(
            {
                "beta_schedule": "squaredcos_cap_v2",
                "variance_type": "fixed_large",
                "prediction_type": "sample",
            },
            id="squaredcos_cap_v2",
        ),
        pytest.param(
            {"beta_schedule": "sigmoid", "variance_type": "learned", "timestep_spacing": "linspace"},
            id="sigmoid",
        ),
        pytest.param(
            {"num_train_timesteps": len(TRAINED_BETAS), "trained_betas": TRAINED_BETAS}, id="trained_betas"
        ),
    ],
)
def test_diffusers_ddpm_config_reads_here(tmp_path, options):
    theirs = diffusers.DDPMScheduler(**options)
    theirs.save_pretrained(tmp_path)
    ours = DDPMScheduler.from_pretrained(tmp_path)
    assert type(ours) is DDPMScheduler
    for key in (*COMMON_KEYS, "variance_type"):
        assert ours.config[key] == theirs.config[key], key
    for key, value in options.items():
        assert ours.config[key] == value, key
    assert_alphas_cumprod_close(ours.alphas_cumprod, theirs.alphas_cumprod)
    # the options act, not only sit in the config: the same sampling chain
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"set_alpha_to_one": False, "steps_offset": 1}, id="offset"),
        pytest.param(
            {
                "set_alpha_to_one": False,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "prediction_type": "v_prediction",
                "timestep_spacing": "trailing",
                "clip_sample": False,
            },
            id="scaled_linear",
        ),
    ],
)
def test_diffusers_ddim_config_reads_here(tmp_path, options):
    theirs = diffusers.DDIMScheduler(**options)
    theirs.save_pretrained(tmp_path)
    ours = DDIMScheduler.from_pretrained(tmp_path)
    assert type(ours) is DDIMScheduler
    for key in (*COMMON_KEYS, "set_alpha_to_one"):
        assert ours.config[key] == theirs.config[key], key
    for key, value in options.items():
        assert ours.config[key] == value, key
    assert_alphas_cumprod_close(ours.alphas_cumprod, theirs.alphas_cumprod)

    # set_alpha_to_one acts: the chain's last deterministic step matches diffusers'
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = int(theirs.timesteps[-1])
    expected = theirs.step(model_output, t, sample, eta=0.0).prev_sample
    actual = ours.step(model_output, t, sample, eta=0.0).prev_sample
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# ---- our own round trip --------------------------------------------------------------------


@pytest.mark.parametrize("options", DDPM_OPTIONS)
def test_ddpm_round_trip(tmp_path, options):
    ours = DDPMScheduler(**options)
    ours.save_pretrained(tmp_path)
    loaded = DDPMScheduler.from_pretrained(tmp_path)
    assert type(loaded) is DDPMScheduler
    assert public(loaded.config) == public(ours.config)
    assert torch.equal(loaded.alphas_cumprod, ours.alphas_cumprod)
    # a second save of the loaded scheduler writes the same file
    second = tmp_path / "again"
    loaded.save_pretrained(second)
    assert public(read_json(second)) == public(read_json(tmp_path))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "num_train_timesteps": 300,
                "beta_schedule": "sigmoid",
                "set_alpha_to_one": False,
                "eta": 0.3,
                "steps_offset": 1,
                "prediction_type": "v_prediction",
                "variance_type": "learned_range",
                "clip_sample": False,
                "timestep_spacing": "trailing",
            },
            id="options",
        ),
    ],
)
def test_ddim_round_trip(tmp_path, options):
    ours = DDIMScheduler(**options)
    ours.save_pretrained(tmp_path)
    loaded = DDIMScheduler.from_pretrained(tmp_path)
    assert type(loaded) is DDIMScheduler
    assert public(loaded.config) == public(ours.config)
    for key, value in options.items():
        assert loaded.config[key] == value, key
    assert torch.equal(loaded.alphas_cumprod, ours.alphas_cumprod)


def test_ddim_from_ddpm_config():
    ddpm = DDPMScheduler(
        num_train_timesteps=400,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
        steps_offset=1,
    )
    ddim = DDIMScheduler.from_config(ddpm.config)
    assert type(ddim) is DDIMScheduler
    for key in COMMON_KEYS:
        assert ddim.config[key] == ddpm.config[key], key
    assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod)
    # and back
    again = DDPMScheduler.from_config(ddim.config)
    assert public(again.config) == public(ddpm.config)
    assert "DDIMScheduler" in [c.__name__ for c in ddpm.compatibles]


# ---- diffusers' options that ours accepts only "off" ---------------------------------------

DIFFUSERS_OFF_VALUES = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.9,
    "sample_max_value": 2.5,
    "rescale_betas_zero_snr": False,
}


@pytest.mark.parametrize(
    "cls, theirs_cls",
    [(DDPMScheduler, diffusers.DDPMScheduler), (DDIMScheduler, diffusers.DDIMScheduler)],
)
def test_diffusers_off_values_round_trip(tmp_path, cls, theirs_cls):
    """scheduler_config.json carries diffusers' thresholding and rescale_betas_zero_snr keys as
    diffusers' own does; ours → diffusers → ours keeps them and every other key."""
    ours = cls(num_train_timesteps=100, **DIFFUSERS_OFF_VALUES)
    ours.save_pretrained(tmp_path / "ours")
    saved = read_json(tmp_path / "ours")
    for key, value in DIFFUSERS_OFF_VALUES.items():
        assert saved[key] == value, key

    theirs = theirs_cls.from_pretrained(tmp_path / "ours")
    for key, value in DIFFUSERS_OFF_VALUES.items():
        assert theirs.config[key] == value, key
    theirs.save_pretrained(tmp_path / "theirs")
    back = cls.from_pretrained(tmp_path / "theirs")
    assert type(back) is cls
    assert public(back.config) == public(ours.config)

    # with the defaults, every key diffusers' own scheduler writes is written, with its value
    cls().save_pretrained(tmp_path / "ours-default")
    theirs_cls().save_pretrained(tmp_path / "theirs-default")
    ours_default, theirs_default = (
        read_json(tmp_path / "ours-default"),
        read_json(tmp_path / "theirs-default"),
    )
    assert {k: ours_default.get(k) for k in public(theirs_default)} == public(theirs_default)


# ---- atomic saving -------------------------------------------------------------------------


def _leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != CONFIG_NAME)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_save_is_atomic_when_rename_fails(tmp_path, monkeypatch, cls):
    cls(num_train_timesteps=100).save_pretrained(tmp_path)
    before = (tmp_path / CONFIG_NAME).read_bytes()
    assert json.loads(before)["num_train_timesteps"] == 100

    calls = []

    def failing_replace(src, dst, *args, **kwargs):
        calls.append((src, dst))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        cls(num_train_timesteps=200).save_pretrained(tmp_path)
    monkeypatch.undo()

    assert calls, "save_pretrained did not write through os.replace"
    assert (tmp_path / CONFIG_NAME).read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert cls.from_pretrained(tmp_path).config.num_train_timesteps == 100


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_save_is_atomic_when_write_fails_midway(tmp_path, monkeypatch, cls):
    cls(num_train_timesteps=100).save_pretrained(tmp_path)
    before = (tmp_path / CONFIG_NAME).read_bytes()
    real_write_text = Path.write_text

    def half_write_text(self, data, *args, **kwargs):
        """Writes half of what it is given, then fails."""
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("write failed midway")

    monkeypatch.setattr(Path, "write_text", half_write_text)
    with pytest.raises(OSError, match="write failed midway"):
        cls(num_train_timesteps=200).save_pretrained(tmp_path)
    monkeypatch.undo()

    assert (tmp_path / CONFIG_NAME).read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_save_overwrites_config(tmp_path):
    DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path)
    DDPMScheduler(num_train_timesteps=200, variance_type="fixed_large").save_pretrained(tmp_path)
    saved = read_json(tmp_path)
    assert saved["num_train_timesteps"] == 200
    assert saved["variance_type"] == "fixed_large"
    assert _leftovers(tmp_path) == []


# ---- inside diffusers' pipelines -----------------------------------------------------------


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return model.eval()


def _images(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        batch_size=2,
        num_inference_steps=20,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    )
    return out.images


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"variance_type": "fixed_small"}, id="fixed_small"),
        pytest.param({"variance_type": "fixed_large"}, id="fixed_large"),
        pytest.param({"variance_type": "fixed_small_log", "steps_offset": 1}, id="fixed_small_log-offset"),
        pytest.param(
            {"variance_type": "fixed_small", "prediction_type": "v_prediction", "clip_sample": False},
            id="v_prediction-unclipped",
        ),
    ],
)
def test_ddpm_in_diffusers_pipeline(unet, options):
    options = {"timestep_spacing": "leading", **options}
    ours = DDPMScheduler(**options)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=ours)
    assert isinstance(pipe.scheduler, schedulers.DDPMScheduler)
    actual = _images(pipe)

    theirs = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**options))
    assert type(theirs.scheduler) is diffusers.DDPMScheduler
    expected = _images(theirs)

    assert actual.shape == expected.shape == (2, 8, 8, 3)
    assert np.isfinite(actual).all()
    assert actual.std() > 1e-3  # not a constant image, which would agree trivially
    assert np.abs(actual - expected).max() < 2e-3
    # and the generator is what makes the images: another seed gives others
    other = pipe(
        batch_size=2, num_inference_steps=20, generator=torch.Generator().manual_seed(1), output_type="np"
    ).images
    assert np.abs(other - actual).max() > 1e-2


@pytest.fixture(scope="module")
def unet64(unet):
    return copy.deepcopy(unet).to(torch.float64)


# Deterministic DDIM (eta = 0) on an untrained UNet amplifies float32 rounding: diffusers'
# own float32 images drift ~7e-3 from its float64 ones over 20 steps, while its float64
# images and ours agree to ~1e-5. So eta = 0 runs the pipeline in float64 (the
# pipeline draws its noise in the UNet's dtype); eta = 1, which does not amplify it,
# runs in float32.
@pytest.mark.parametrize(
    "eta, options, dtype",
    [
        pytest.param(0.0, {}, torch.float64, id="eta0"),
        pytest.param(1.0, {}, torch.float32, id="eta1"),
        pytest.param(0.0, {"set_alpha_to_one": False, "steps_offset": 1}, torch.float64, id="eta0-offset"),
        pytest.param(1.0, {"set_alpha_to_one": False, "steps_offset": 1}, torch.float32, id="eta1-offset"),
    ],
)
def test_ddim_in_diffusers_pipeline(unet, unet64, eta, options, dtype):
    model = unet64 if dtype == torch.float64 else unet
    options = {"timestep_spacing": "leading", **options}
    ours = DDIMScheduler(**options)
    pipe = diffusers.DDIMPipeline(unet=model, scheduler=ours)
    # diffusers' DDIMPipeline converts any scheduler to its own DDIMScheduler in __init__;
    # put ours back so that the pipeline really runs it.
    pipe.scheduler = ours
    assert pipe.scheduler is ours
    actual = _images(pipe, eta=eta)

    theirs = diffusers.DDIMPipeline(unet=model, scheduler=diffusers.DDIMScheduler(**options))
    assert type(theirs.scheduler) is diffusers.DDIMScheduler
    expected = _images(theirs, eta=eta)

    assert actual.shape == expected.shape == (2, 8, 8, 3)
    assert actual.dtype == expected.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    assert np.isfinite(actual).all()
    assert actual.std() > 1e-3
    assert np.abs(actual - expected).max() < 2e-3


def test_ddim_eta_changes_pipeline_images(unet):
    """eta reaches our step from diffusers' DDIMPipeline (so the comparison above is not
    blind to it)."""
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.scheduler = DDIMScheduler()
    assert np.abs(_images(pipe, eta=0.0) - _images(pipe, eta=1.0)).max() > 1e-2
