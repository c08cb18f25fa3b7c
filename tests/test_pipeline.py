"""DDPMPipeline: sampling options, diffusers' pipeline layout both ways with the same images
from the same generator, schedulers from either package, and every error."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import diffusers
import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch

from ddpm_pipelines import DDPMPipeline, MLPModel, Trajectory, UNetModel, load_pretrained
from ddpm_pipelines.pipeline import SAMPLERS, with_sampler
from schedulers import DDIMScheduler, DDPMScheduler


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNetModel.from_preset("tiny-8").eval()


@pytest.fixture
def pipe(unet):
    return _quiet(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


@pytest.fixture
def points_pipe():
    torch.manual_seed(0)
    return _quiet(
        DDPMPipeline(unet=MLPModel(hidden_features=32, num_blocks=1).eval(), scheduler=DDPMScheduler())
    )


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- same images as diffusers, both ways -------------------------------------------------------


@pytest.mark.parametrize("steps", [100, pytest.param(None, marks=pytest.mark.slow)])  # None: all 1000
def test_diffusers_loads_ours_and_we_load_diffusers_with_the_same_images(pipe, tmp_path, steps):
    """fp32 CPU, same generator: within half a grey level (2e-3 on [0, 1])."""
    ours = pipe(batch_size=2, num_inference_steps=steps, generator=_gen(), output_type="np").images
    pipe.save_pretrained(tmp_path / "ours")
    theirs_pipe = _quiet(diffusers.DDPMPipeline.from_pretrained(tmp_path / "ours"))
    assert type(theirs_pipe.unet) is diffusers.UNet2DModel
    assert type(theirs_pipe.scheduler) is diffusers.DDPMScheduler
    theirs = theirs_pipe(
        batch_size=2, num_inference_steps=steps or 1000, generator=_gen(), output_type="np"
    ).images
    assert ours.shape == theirs.shape == (2, 8, 8, 1)
    assert np.abs(ours - theirs).max() < 2e-3

    theirs_pipe.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    loaded = _quiet(DDPMPipeline.from_pretrained(tmp_path / "theirs"))
    assert type(loaded.unet) is UNetModel and type(loaded.scheduler) is DDPMScheduler
    again = loaded(batch_size=2, num_inference_steps=steps, generator=_gen(), output_type="np").images
    np.testing.assert_array_equal(again, ours)


GOOGLE_CIFAR10_UNET = {  # google/ddpm-cifar10-32's unet/config.json, as published
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.1.1",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
GOOGLE_CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_small",
}


def test_loads_the_layout_of_google_ddpm_cifar10_32(tmp_path):
    torch.manual_seed(0)
    config = {k: v for k, v in GOOGLE_CIFAR10_UNET.items() if not k.startswith("_")}
    diffusers.UNet2DModel(**config).save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "config.json").write_text(json.dumps(GOOGLE_CIFAR10_UNET))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(GOOGLE_CIFAR10_SCHEDULER))
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1"}
    index |= {"scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))

    ours = _quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert sum(p.numel() for p in ours.unet.parameters()) == 35_746_307  # the DDPM paper's network
    assert ours.scheduler.config.variance_type == "fixed_small" and ours.scheduler.config.clip_sample
    theirs = _quiet(diffusers.DDPMPipeline.from_pretrained(tmp_path))
    a = ours(generator=_gen(), num_inference_steps=3, output_type="np").images
    b = theirs(generator=_gen(), num_inference_steps=3, output_type="np").images
    assert a.shape == (1, 32, 32, 3) and np.abs(a - b).max() < 2e-3


def test_mlp_pipeline_round_trip(points_pipe, tmp_path):
    points_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["ddpm_pipelines", "MLPModel"] and index["scheduler"] == [
        "diffusers",
        "DDPMScheduler",
    ]
    loaded = _quiet(DDPMPipeline.from_pretrained(tmp_path))
    a = points_pipe(batch_size=50, num_inference_steps=20, generator=_gen()).images
    b = loaded(batch_size=50, num_inference_steps=20, generator=_gen()).images
    np.testing.assert_array_equal(a, b)


def test_pipeline_save_is_atomic(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        DDPMPipeline(unet=UNetModel.from_preset("tiny-8"), scheduler=DDIMScheduler()).save_pretrained(
            tmp_path
        )
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---- what a call returns ---------------------------------------------------------------------


def test_saving_logs_no_temporary_path(pipe, tmp_path, caplog):
    """The logs of a save name no .NAME.saving-XXXX folder (save_atomically's), which is gone
    once the save is done."""
    with caplog.at_level(logging.DEBUG):
        pipe.save_pretrained(tmp_path / "pipe")
    assert [r.getMessage() for r in caplog.records if ".saving-" in r.getMessage()] == []
    pipe.scheduler.save_pretrained(tmp_path / "scheduler")  # the same file as the scheduler writes
    name = "scheduler_config.json"
    assert (tmp_path / "pipe" / "scheduler" / name).read_text() == (tmp_path / "scheduler" / name).read_text()


def test_output_types(pipe):
    pil = pipe(batch_size=2, num_inference_steps=5, generator=_gen()).images  # default: PIL
    assert (
        len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (8, 8) and pil[0].mode == "L"
    )
    arr = pipe(batch_size=2, num_inference_steps=5, generator=_gen(), output_type="np").images
    assert arr.shape == (2, 8, 8, 1) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    np.testing.assert_array_equal(np.asarray(pil[1]), (arr[1, :, :, 0] * 255).round().astype(np.uint8))
    pt = pipe(batch_size=2, num_inference_steps=5, generator=_gen(), output_type="pt").images
    assert pt.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), arr)
    (as_tuple,) = pipe(
        batch_size=2, num_inference_steps=5, generator=_gen(), output_type="np", return_dict=False
    )
    np.testing.assert_array_equal(as_tuple, arr)


def test_points_output(points_pipe):
    points = points_pipe(batch_size=30, num_inference_steps=10, generator=_gen()).images  # default: np
    assert isinstance(points, np.ndarray) and points.shape == (30, 2)
    tensor = points_pipe(batch_size=30, num_inference_steps=10, generator=_gen(), output_type="pt").images
    np.testing.assert_array_equal(tensor.numpy(), points)


def test_same_generator_same_images_and_one_generator_per_sample(pipe):
    a = pipe(batch_size=2, num_inference_steps=10, generator=_gen(1), output_type="np").images
    np.testing.assert_array_equal(
        a, pipe(batch_size=2, num_inference_steps=10, generator=_gen(1), output_type="np").images
    )
    assert (
        np.abs(
            a - pipe(batch_size=2, num_inference_steps=10, generator=_gen(2), output_type="np").images
        ).max()
        > 0.1
    )
    pair = pipe(batch_size=2, num_inference_steps=10, generator=[_gen(5), _gen(6)], output_type="np").images
    alone = pipe(batch_size=1, num_inference_steps=10, generator=[_gen(6)], output_type="np").images
    np.testing.assert_allclose(pair[1], alone[0], atol=1e-5)


def test_trajectory(pipe):
    g = _gen(3)
    x_T = torch.randn(2, 1, 8, 8, generator=_gen(3))
    out = pipe(batch_size=2, num_inference_steps=10, generator=g, output_type="pt", trajectory_every=4)
    traj = out.trajectory
    assert isinstance(traj, Trajectory)
    assert traj.timesteps == [900, 500, 100, 0]  # steps 0, 4 and 8, and the last (leading spacing)
    assert traj.samples.shape == traj.pred_original_samples.shape == (4, 2, 1, 8, 8)
    torch.testing.assert_close(traj.samples[0], x_T, rtol=0, atol=0)  # x_T, the initial noise
    # At the last step there is no noise: x_0 is the posterior mean from x̂_0 with ᾱ_prev = 1, i.e. x̂_0.
    torch.testing.assert_close(out.images, (traj.pred_original_samples[-1] / 2 + 0.5).clamp(0, 1))
    _, again = pipe(
        batch_size=2, num_inference_steps=10, generator=_gen(3), trajectory_every=4, return_dict=False
    )
    assert again.timesteps == traj.timesteps
    assert pipe(batch_size=1, num_inference_steps=3).trajectory is None


def test_callback_sees_every_step(pipe):
    seen = []
    out = pipe(
        batch_size=1,
        num_inference_steps=6,
        generator=_gen(),
        output_type="pt",
        callback=lambda i, t, x, x0: seen.append((i, t, x.clone(), x0.shape)),
    )
    assert [(i, t) for i, t, _, _ in seen] == list(enumerate(pipe.scheduler.timesteps.tolist()))
    assert all(shape == (1, 1, 8, 8) for *_, shape in seen)
    torch.testing.assert_close(out.images, (seen[-1][2] / 2 + 0.5).clamp(0, 1))


def test_progress_bar_shows_and_can_be_turned_off(unet, capsys):
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe(num_inference_steps=4)
    assert "4/4" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=4)
    assert capsys.readouterr().err == ""


def test_half_precision_model_keeps_the_scheduler_in_float32(unet):
    pipe = _quiet(DDPMPipeline(unet=UNetModel.from_config(unet.config), scheduler=DDPMScheduler()))
    pipe.to(dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    dtypes = []
    out = pipe(
        num_inference_steps=5,
        generator=_gen(),
        output_type="pt",
        callback=lambda i, t, x, x0: dtypes.append(x.dtype),
    )
    assert set(dtypes) == {torch.float32} and torch.isfinite(out.images).all()


# ---- torch.compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["points", pytest.param("images", marks=pytest.mark.slow)])
def test_a_compiled_model_samples_the_same_in_one_graph(unet, kind):
    """`pipe.unet.compile()`, the README's speed-up: the whole model is one graph (fullgraph:
    a graph break is an error) that the loop reuses at every step (a recompile is an error),
    and the samples are the eager ones."""
    torch.manual_seed(0)
    points = kind == "points"
    model = MLPModel(hidden_features=32, num_blocks=1) if points else UNetModel.from_config(unet.config)
    eager = _quiet(DDPMPipeline(model.eval(), DDPMScheduler()))
    expected = eager(batch_size=3, num_inference_steps=6, generator=_gen(), output_type="pt").images
    compiled = copy.deepcopy(model)
    compiled.compile(fullgraph=True)
    pipe = _quiet(DDPMPipeline(compiled, DDPMScheduler()))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = pipe(batch_size=3, num_inference_steps=6, generator=_gen(), output_type="pt").images
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# ---- schedulers from either package ----------------------------------------------------------


@pytest.mark.parametrize(
    "theirs", [diffusers.DDIMScheduler(), diffusers.DDPMScheduler(variance_type="fixed_large")]
)
def test_diffusers_schedulers_plug_in(unet, theirs):
    ours = _quiet(DDPMPipeline(unet=unet, scheduler=theirs))
    reference = _quiet(diffusers.DDPMPipeline(unet=unet, scheduler=theirs))
    a = ours(batch_size=2, num_inference_steps=10, generator=_gen(), output_type="np").images
    b = reference(batch_size=2, num_inference_steps=10, generator=_gen(), output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_a_scheduler_that_scales_its_input_plugs_in(unet):
    """Euler scales x_T by init_noise_sigma and the model input by scale_model_input, and
    its step has no `generator`: the diffusers recipe, by hand."""
    scheduler = diffusers.EulerDiscreteScheduler()
    images = _quiet(DDPMPipeline(unet=unet, scheduler=scheduler))(
        num_inference_steps=8, generator=_gen(), output_type="pt"
    ).images
    scheduler.set_timesteps(8)
    x = torch.randn(1, 1, 8, 8, generator=_gen()) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1))


def test_learned_variance_model_with_learned_range(tmp_path):
    torch.manual_seed(0)
    unet = UNetModel.from_preset("tiny-8", learned_variance=True).eval()
    pipe = _quiet(DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="learned_range")))
    images = pipe(batch_size=2, num_inference_steps=10, generator=_gen(), output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    pipe.save_pretrained(tmp_path)
    loaded = _quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert loaded.scheduler.config.variance_type == "learned_range"
    np.testing.assert_array_equal(
        loaded(batch_size=2, num_inference_steps=10, generator=_gen(), output_type="np").images, images
    )


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(output_type="jpg"),
            r"output_type='jpg' is not supported; allowed values: \('pil', 'np', 'pt'\)",
        ),
        (dict(batch_size=0), r"batch_size=0 must be a positive integer"),
        (dict(batch_size=2.0), r"batch_size=2.0 must be a positive integer"),
        (dict(num_inference_steps=0), r"num_inference_steps=0 must be an integer in \[1, 1000\]"),
        (dict(num_inference_steps=1001), r"num_inference_steps=1001 must be an integer in \[1, 1000\]"),
        (dict(trajectory_every=0), r"trajectory_every=0 must be a positive integer"),
        (dict(batch_size=3, generator=[torch.Generator()] * 2), r"a list of 2 generators.*\(batch_size=3\)"),
    ],
)
def test_call_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_a_model_that_goes_non_finite_is_named_once_with_its_step(points_pipe):
    """The first step whose model output holds NaN or ±inf, by index and t, in one warning
    (found after the loop: a flag on the device, no host sync per step)."""
    calls = []

    def nan_from_the_third_call(module, args, output):
        calls.append(None)
        if len(calls) >= 3:
            output.sample.fill_(float("nan"))
        return output

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy run warns of nothing
        points_pipe(batch_size=4, num_inference_steps=5, generator=_gen())
    hook = points_pipe.unet.register_forward_hook(nan_from_the_third_call)
    try:
        with pytest.warns(RuntimeWarning) as record:
            out = points_pipe(batch_size=4, num_inference_steps=5, generator=_gen(), output_type="pt")
    finally:
        hook.remove()
    assert torch.isnan(out.images).all()
    messages = [str(w.message) for w in record if "NaN or infinite" in str(w.message)]
    assert len(messages) == 1, messages
    assert "step 2 of 5 (t=400)" in messages[0]
    assert [w.filename for w in record if "NaN or infinite" in str(w.message)] == [__file__]


def test_casting_a_model_does_not_warn_of_an_empty_float32_list(unet, tmp_path, caplog):
    """diffusers' "There are modules in UNetModel that should be kept in float32: []" on
    `.to(dtype)` is not shown: these models have no such modules. A list that is not empty is."""
    from diffusers.utils import logging as diffusers_logging

    pipe = DDPMPipeline(unet=UNetModel.from_config(unet.config), scheduler=DDPMScheduler())
    pipe.save_pretrained(tmp_path)
    diffusers_logging.enable_propagation()  # diffusers' loggers reach caplog's handler
    try:
        with caplog.at_level(logging.WARNING):
            pipe.to(torch.bfloat16)
            DDPMPipeline.from_pretrained(tmp_path, torch_dtype=torch.float16)
            assert [r.getMessage() for r in caplog.records if "float32" in r.getMessage()] == []
            logger = logging.getLogger("diffusers.models.modeling_utils")
            logger.warning("There are modules in X that should be kept in float32: ['norm']. Casting ...")
            assert "should be kept in float32: ['norm']" in caplog.text
    finally:
        diffusers_logging.disable_propagation()


def test_pil_is_for_images(points_pipe):
    with pytest.raises(ValueError, match="output_type='pil' is for images; this model makes points"):
        points_pipe(output_type="pil")


def test_construction_errors(unet):
    with pytest.raises(ValueError, match=r"outputs 1 channels .* variance_type='learned_range' needs 2"):
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match=r"outputs 2 channels .* variance_type='fixed_small' needs 1"):
        DDPMPipeline(unet=UNetModel.from_preset("tiny-8", learned_variance=True), scheduler=DDPMScheduler())
    with pytest.raises(TypeError, match="unet must be a diffusers-style model"):
        DDPMPipeline(unet=lambda x, t: x, scheduler=DDPMScheduler())
    with pytest.raises(TypeError, match="scheduler must have diffusers' scheduler interface"):
        DDPMPipeline(unet=unet, scheduler=object())


def test_folder_errors(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    cases = [
        ({**index, "_class_name": "StableDiffusionPipeline"}, r"'StableDiffusionPipeline'; this loads only"),
        ({k: v for k, v in index.items() if k != "scheduler"}, r"lacks the components \['scheduler'\]"),
        (
            {**index, "unet": ["diffusers", "UNet2DConditionModel"]},
            r"model class 'UNet2DConditionModel'; this loads",
        ),
        ({**index, "scheduler": ["diffusers", "Nonsense"]}, r"scheduler class 'Nonsense', which is neither"),
        (
            {**index, "unet": "UNet2DModel"},
            r"a component entry must be \[library, class\], not 'UNet2DModel'",
        ),
    ]
    for broken, message in cases:
        index_path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            DDPMPipeline.from_pretrained(tmp_path)
    index_path.unlink()
    with pytest.raises(OSError, match=r"model_index.json not found"):
        DDPMPipeline.from_pretrained(tmp_path)


# ---- samplers by name ----------------------------------------------------------------------------


def test_samplers_plug_in_and_the_multistep_solvers_need_fewer_steps():
    """On the shipped Swiss roll at 10 steps, the energy distance to held-out points over the
    real-vs-real floor: DDIM beats DDPM, DPM-Solver++ and UniPC beat DDPM by far (measured:
    DDPM 30×, DDIM 17×, DPM-Solver++ 9.2×, UniPC 8.3×)."""
    from ddpm_pipelines.data import load_dataset
    from ddpm_pipelines.evaluation import energy_distance

    roll = load_pretrained("swiss-roll")
    test = load_dataset("swiss-roll", "test", num_samples=2000)
    floor = energy_distance(load_dataset("swiss-roll", "train", num_samples=2000), test)
    ratios = {}
    for name in SAMPLERS:
        pipe = with_sampler(roll, name)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.unet is roll.unet and pipe.scheduler.config.beta_end == roll.scheduler.config.beta_end
        points = pipe(
            batch_size=2000, num_inference_steps=10, generator=torch.Generator().manual_seed(0)
        ).images
        ratios[name] = energy_distance(points, test) / floor
    assert ratios["ddim"] < ratios["ddpm"]
    assert max(ratios["dpm-solver++"], ratios["unipc"]) < ratios["ddpm"] / 3
    assert type(with_sampler(roll, "dpm-solver++").scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert with_sampler(roll, "dpm-solver++").scheduler.config.algorithm_type == "dpmsolver++"


@pytest.mark.parametrize("scheduler", ["dpm-solver++", "unipc", diffusers.DDIMScheduler])
def test_schedulers_that_take_the_prediction_alone_get_it_from_a_learned_variance_model(scheduler):
    """The shipped digits model outputs ε and the variance (2 channels for 1): diffusers'
    multistep solvers and DDIM step on ε alone (theirs would cut 3 channels, or none)."""
    digits = load_pretrained("digits")
    if isinstance(scheduler, str):
        pipe = with_sampler(digits, scheduler)
    else:
        pipe = DDPMPipeline(unet=digits.unet, scheduler=scheduler.from_config(digits.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda output, *args, **kwargs: (
        seen.append(output.shape[1]) or step(output, *args, **kwargs)
    )
    images = pipe(
        batch_size=4, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    assert images.images.shape == (4, 1, 8, 8) and seen == [1] * 10


@pytest.mark.parametrize("sampler", ["dpm-solver++", "unipc"])
def test_multistep_solvers_give_their_predicted_x0_to_the_trajectory_and_the_callback(sampler):
    """diffusers' solvers return x_{t−1} alone; the pipeline takes the step's x̂_0 from the model
    output they converted (the last of their model_outputs): the data prediction of this step,
    x_0 itself at the last step, and the same x̂_0 for the callback and the trajectory."""
    pipe = with_sampler(load_pretrained("swiss-roll"), sampler)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    out = pipe(
        batch_size=5,
        num_inference_steps=6,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        trajectory_every=1,
        callback=lambda i, t, x, x0: seen.append(x0.clone()),
    )
    assert len(seen) == 6
    torch.testing.assert_close(torch.stack(seen), out.trajectory.pred_original_samples, rtol=0, atol=0)
    torch.testing.assert_close(seen[-1], out.images, rtol=0, atol=0)  # the last step lands on x̂_0
    # Each x̂_0 is the data prediction of its x_t: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t.
    alphas = pipe.scheduler.alphas_cumprod
    for t, x_t, x0 in zip(out.trajectory.timesteps, out.trajectory.samples, seen, strict=True):
        eps = pipe.unet(x_t, torch.tensor([t])).sample
        expected = (x_t - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()
        torch.testing.assert_close(x0, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["dpm-solver++", "unipc"])
@pytest.mark.parametrize("steps", [10, 999, 1000])
def test_multistep_solvers_spread_their_steps_over_the_whole_chain(sampler, steps):
    """Their own "trailing" spacing: the first step at t = T − 1, every step a new t. (Their
    "leading", our default, divides T by steps + 1: 10 steps began at t = 900, and 1000 steps
    all had t = 0, which crashed DPM-Solver++ and made UniPC's samples NaN.)"""
    pipe = with_sampler(load_pretrained("swiss-roll"), sampler)
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps.tolist()
    assert timesteps[0] == 999 and len(set(timesteps)) == steps == len(timesteps)
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[-1] == 1000 // steps - 1


def test_an_unknown_sampler_is_named():
    with pytest.raises(
        ValueError, match=r"sampler='euler' is not supported; allowed values: \('ddpm', 'ddim'"
    ):
        with_sampler(load_pretrained("swiss-roll"), "euler")
