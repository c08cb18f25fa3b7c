"""diffusers' own scheduler tests, the checks that user code relies on, run against ours.

Read from diffusers' repository (tests/schedulers/test_scheduler_ddpm.py,
test_scheduler_ddim.py and test_schedulers.py, which the installed package does not carry)
and written anew here. Where diffusers' tests pin a number, ours is compared with the
installed diffusers scheduler run side by side on the same inputs and generator. Where ours
deliberately differs from diffusers, the test holds our documented behaviour and says why.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings

import diffusers
import numpy as np
import pytest
import torch

from schedulers import DDIMScheduler, DDPMScheduler

SCHEDULERS = [DDPMScheduler, DDIMScheduler]
THEIRS = {DDPMScheduler: diffusers.DDPMScheduler, DDIMScheduler: diffusers.DDIMScheduler}
SHAPE = (4, 3, 8, 8)
INFERENCE_STEPS = 50  # DDIM steps along a 50-step chain, as diffusers' DDIM tests do

# diffusers' test config: the defaults, with the schedule spelled out.
BASE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}

# diffusers options ours accepts but does not implement, each with values that mean "off":
# dynamic_thresholding_ratio and sample_max_value act only with thresholding on.
OFF_VALUES = [
    ("thresholding", False),
    ("thresholding", 0),
    ("rescale_betas_zero_snr", False),
    ("dynamic_thresholding_ratio", 0.995),
    ("dynamic_thresholding_ratio", 0.5),
    ("sample_max_value", 1.0),
    ("sample_max_value", 3.0),
]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |a − b| / (1 + |b|): diffusers keeps ᾱ in float32, ours in float64."""
    return ((ours.double() - theirs.double()).abs() / (1 + theirs.double().abs())).max().item()


def random_sample(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ramp_sample() -> torch.Tensor:
    """A deterministic (4, 3, 8, 8) sample with values evenly spread over [0, 1)."""
    n = math.prod(SHAPE)
    return (torch.arange(n, dtype=torch.float32) / n).reshape(SHAPE)


def toy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A stand-in network whose output depends on x_t and t: x_t · t/(t + 1)."""
    t = torch.as_tensor(t, dtype=sample.dtype)
    return sample * t / (t + 1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def step_kwargs(cls, eta: float | None) -> dict:
    return {} if cls is DDPMScheduler else {"eta": 0.0 if eta is None else eta}


def chain_points(scheduler) -> list[int]:
    """The first, a middle and the last timestep of the scheduler's chain."""
    chain = scheduler.timesteps.tolist()
    return sorted({chain[0], chain[len(chain) // 2], chain[-1]}, reverse=True)


# ---- diffusers' check_over_configs / check_over_forward ------------------------------------


def check_config(cls, tmp_path, *, num_inference_steps=None, eta=None, timesteps=None, **options):
    """diffusers' check_over_configs, made stronger: the scheduler saved with save_config and
    read back with from_pretrained keeps its config and steps identically, and both step as
    diffusers' scheduler built from the same options does (so an option that is saved but
    not acted on fails too). Steps at `timesteps` (default: first, middle and last of the
    chain) with diffusers' residual 0.1 · x_t."""
    config = {**BASE, **options}
    ours = cls(**config)
    ours.save_config(tmp_path)
    reloaded = cls.from_pretrained(tmp_path)
    theirs = THEIRS[cls](**config)
    assert {k: v for k, v in reloaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")
    }
    if cls is DDIMScheduler or num_inference_steps is not None:
        for s in (ours, reloaded, theirs):
            s.set_timesteps(num_inference_steps or INFERENCE_STEPS)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()

    sample = random_sample()
    residual = 0.1 * sample
    for t in chain_points(ours) if timesteps is None else timesteps:
        kw = step_kwargs(cls, eta)
        a = ours.step(residual, t, sample, generator=seeded(0), **kw)
        b = reloaded.step(residual, t, sample, generator=seeded(0), **kw)
        c = theirs.step(residual, t, sample, generator=seeded(0), **kw)
        assert torch.equal(a.prev_sample, b.prev_sample), t
        assert torch.equal(a.pred_original_sample, b.pred_original_sample), t
        assert relative_error(a.prev_sample, c.prev_sample) < 1e-4, t
        assert relative_error(a.pred_original_sample, c.pred_original_sample) < 1e-4, t


DDPM_CONFIGS = [
    # test_timesteps
    *[pytest.param({"num_train_timesteps": n}, id=f"T={n}") for n in (1, 5, 100, 1000)],
    # test_betas (diffusers' fourth pair, beta_end=2, is refused by ours: see below)
    *[
        pytest.param({"beta_start": b0, "beta_end": b1}, id=f"betas={b0},{b1}")
        for b0, b1 in [(0.0001, 0.002), (0.001, 0.02)]
    ],
    # ᾱ_999 ≈ e^−105 underflows diffusers' float32 table there (see test_tiny_alpha_bar)
    pytest.param({"beta_start": 0.01, "beta_end": 0.2, "timesteps": [500, 0]}, id="betas=0.01,0.2"),
    # test_schedules
    *[
        pytest.param({"beta_schedule": s}, id=s)
        for s in ("linear", "squaredcos_cap_v2", "scaled_linear", "sigmoid")
    ],
    # test_variance_type (diffusers' "other" is refused by ours: see below; learned_range,
    # whose model output has twice the channels, in test_ddpm_learned_range_config)
    *[pytest.param({"variance_type": v}, id=v) for v in ("fixed_small", "fixed_small_log", "fixed_large")],
    # test_clip_sample
    *[pytest.param({"clip_sample": c}, id=f"clip_sample={c}") for c in (True, False)],
    # test_prediction_type
    *[pytest.param({"prediction_type": p}, id=p) for p in ("epsilon", "sample", "v_prediction")],
    # test_thresholding, its "off" half: sample_max_value has no effect while thresholding is off
    *[
        pytest.param(
            {"thresholding": False, "sample_max_value": m, "prediction_type": p},
            id=f"thresholding=False-max={m}-{p}",
        )
        for m in (0.5, 2.0)
        for p in ("epsilon", "sample", "v_prediction")
    ],
]


@pytest.mark.parametrize("options", DDPM_CONFIGS)
def test_ddpm_config(tmp_path, options):
    check_config(DDPMScheduler, tmp_path, **options)


def test_ddpm_learned_range_config(tmp_path):
    ours = DDPMScheduler(variance_type="learned_range")
    ours.save_config(tmp_path)
    reloaded = DDPMScheduler.from_pretrained(tmp_path)
    theirs = diffusers.DDPMScheduler(variance_type="learned_range")
    sample = random_sample()
    residual = torch.cat([0.1 * sample, sample.clamp(0, 1) * 2 - 1], dim=1)  # (4, 6, 8, 8)
    for t in (999, 500, 1):
        a = ours.step(residual, t, sample, generator=seeded(0)).prev_sample
        b = reloaded.step(residual, t, sample, generator=seeded(0)).prev_sample
        c = theirs.step(residual, t, sample, generator=seeded(0)).prev_sample
        assert torch.equal(a, b)
        assert relative_error(a, c) < 1e-4


def test_tiny_alpha_bar():
    """With β from 0.01 to 0.2, ᾱ_999 ≈ e^−105 is 0 in diffusers' float32 table, and its step
    there gives NaN; ours keeps ᾱ in float64 and steps to finite values."""
    options = {"beta_start": 0.01, "beta_end": 0.2}
    ours, theirs = DDPMScheduler(**options), diffusers.DDPMScheduler(**options)
    assert 0 < ours.alphas_cumprod[999] < 1e-40
    x = random_sample()
    assert torch.isfinite(ours.step(0.1 * x, 999, x, generator=seeded(0)).prev_sample).all()
    assert torch.isnan(theirs.step(0.1 * x, 999, x, generator=seeded(0)).prev_sample).all()


@pytest.mark.parametrize("t", [0, 500, 999])
def test_ddpm_time_indices(tmp_path, t):
    check_config(DDPMScheduler, tmp_path, timesteps=[t])


DDIM_CONFIGS = [
    # test_timesteps
    *[pytest.param({"num_train_timesteps": n}, id=f"T={n}") for n in (100, 500, 1000)],
    # test_steps_offset
    *[pytest.param({"steps_offset": k}, id=f"steps_offset={k}") for k in (0, 1)],
    # test_betas
    *[
        pytest.param({"beta_start": b0, "beta_end": b1}, id=f"betas={b0},{b1}")
        for b0, b1 in [(0.0001, 0.002), (0.001, 0.02)]
    ],
    # ᾱ at 980 underflows diffusers' float32 table (see test_tiny_alpha_bar)
    pytest.param({"beta_start": 0.01, "beta_end": 0.2, "timesteps": [500, 0]}, id="betas=0.01,0.2"),
    # test_schedules
    *[pytest.param({"beta_schedule": s}, id=s) for s in ("linear", "squaredcos_cap_v2", "scaled_linear")],
    # test_prediction_type
    *[pytest.param({"prediction_type": p}, id=p) for p in ("epsilon", "v_prediction", "sample")],
    # test_clip_sample
    *[pytest.param({"clip_sample": c}, id=f"clip_sample={c}") for c in (True, False)],
    # test_timestep_spacing (linspace: see test_ddim_linspace_steps_along_its_chain)
    *[pytest.param({"timestep_spacing": s}, id=s) for s in ("trailing", "leading")],
    # test_rescale_betas_zero_snr and test_thresholding, their "off" halves
    pytest.param({"rescale_betas_zero_snr": False}, id="rescale_betas_zero_snr=False"),
    *[
        pytest.param(
            {"thresholding": False, "sample_max_value": m, "prediction_type": p},
            id=f"thresholding=False-max={m}-{p}",
        )
        for m in (0.5, 2.0)
        for p in ("epsilon", "v_prediction")
    ],
    pytest.param({"set_alpha_to_one": False}, id="set_alpha_to_one=False"),
]


@pytest.mark.parametrize("options", DDIM_CONFIGS)
def test_ddim_config(tmp_path, options):
    check_config(DDIMScheduler, tmp_path, **options)


# diffusers' DDIM test_time_indices and test_inference_steps step at timesteps such as 1, 10
# and 49 of a 50-step chain (980, 960, ..., 0), which that chain does not hold; diffusers
# steps from them all the same. Ours refuses a timestep outside the chain set by
# set_timesteps (tests/test_errors.py checks the message), so these step at timesteps of
# the chain, and the off-chain ones are checked to be refused.
@pytest.mark.parametrize("num_inference_steps", [10, 50, 500])
def test_ddim_inference_steps(tmp_path, num_inference_steps):
    check_config(DDIMScheduler, tmp_path, num_inference_steps=num_inference_steps)


@pytest.mark.parametrize("index", [1, 10, 49])
def test_ddim_time_indices(tmp_path, index):
    s = DDIMScheduler(**BASE)
    s.set_timesteps(INFERENCE_STEPS)
    check_config(DDIMScheduler, tmp_path, timesteps=[int(s.timesteps[index])])
    off_chain = index  # diffusers' time index used as a timestep
    assert off_chain not in s.timesteps.tolist()
    x = random_sample()
    with pytest.raises(ValueError, match="not in the sampling chain"):
        s.step(0.1 * x, off_chain, x, eta=0.0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta(tmp_path, eta):
    check_config(DDIMScheduler, tmp_path, eta=eta)


def test_ddim_steps_offset_timesteps():
    ours, theirs = DDIMScheduler(steps_offset=1), diffusers.DDIMScheduler(steps_offset=1)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    # "leading" with T // 5 = 200 between steps, shifted by steps_offset
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert ours.timesteps.dtype == torch.int64


def test_ddim_linspace_steps_along_its_chain():
    """With "linspace" spacing (not in diffusers' DDIM tests) the gaps between timesteps are
    uneven: diffusers' DDIM step goes back T // n from t wherever the chain goes, ours goes to
    the chain's next timestep (docs/math.md §4), so the chains agree but not the steps."""
    ours = DDIMScheduler(timestep_spacing="linspace")
    theirs = diffusers.DDIMScheduler(timestep_spacing="linspace")
    ours.set_timesteps(7)
    theirs.set_timesteps(7)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    t, t_next = ours.timesteps[4].item(), ours.timesteps[5].item()
    assert t - t_next != 1000 // 7
    # given the exact ε of x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, an η = 0 step gives x at t_next
    x0, eps = random_sample(), random_sample(1) - 0.5
    x_t = ours.add_noise(x0, eps, t)
    expected = ours.add_noise(x0, eps, t_next)
    assert relative_error(ours.step(eps, t, x_t, eta=0.0).prev_sample, expected) < 1e-5
    assert relative_error(theirs.step(eps, t, x_t, eta=0.0).prev_sample, expected) > 1e-3


# ---- options diffusers tests that ours refuses ---------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_beta_end_above_one_is_refused(cls):
    """diffusers' test_betas also builds beta_start=0.1, beta_end=2, whose β > 1 make ᾱ
    negative; ours refuses every β outside (0, 1) (tests/test_errors.py checks the message)."""
    with pytest.raises(ValueError, match="beta_end=2"):
        cls(beta_start=0.1, beta_end=2)


def test_unknown_variance_type_is_refused():
    """diffusers' test_variance_type passes variance_type="other", which its step silently
    treats as no known variance; ours names the allowed ones (DESIGN.md, "Options are checked")."""
    with pytest.raises(ValueError, match="variance_type='other'"):
        DDPMScheduler(variance_type="other")


# ---- diffusers' off values ----------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_constructor_takes_every_diffusers_argument_with_its_default(cls):
    """Code written for diffusers' constructor runs with ours: every parameter of diffusers'
    __init__ is one of ours, with the same default (ours has more, e.g. eta, analytic_gamma)."""
    theirs = inspect.signature(THEIRS[cls].__init__).parameters
    ours = inspect.signature(cls.__init__).parameters
    missing = [name for name in theirs if name not in ours]
    assert missing == []
    for name, parameter in theirs.items():
        if name != "self":
            assert ours[name].default == parameter.default, name


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("option, value", OFF_VALUES)
def test_constructor_accepts_off_values(cls, option, value):
    """The off values are accepted, saved in the config (as diffusers saves them) and change
    nothing."""
    s = cls(**{option: value})
    assert s.config[option] == value
    default = cls()
    assert torch.equal(s.alphas_cumprod, default.alphas_cumprod)
    for scheduler in (s, default):
        scheduler.set_timesteps(10)
    x = random_sample()
    kw = step_kwargs(cls, 1.0)
    a = s.step(0.5 * x, 900, 3 * x, generator=seeded(0), **kw)  # 3x: clipping acts
    b = default.step(0.5 * x, 900, 3 * x, generator=seeded(0), **kw)
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert torch.equal(a.pred_original_sample, b.pred_original_sample)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_from_config_accepts_off_values_as_overrides(cls):
    overrides = {
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.9,
        "sample_max_value": 2.0,
        "rescale_betas_zero_snr": False,
    }
    s = cls.from_config(THEIRS[cls]().config, **overrides)
    assert type(s) is cls
    for key, value in overrides.items():
        assert s.config[key] == value, key


# ---- variances at given timesteps ----------------------------------------------------------


def added_noise_std(scheduler, model_output, t, sample, **kwargs) -> torch.Tensor:
    """The σ a step adds, measured: the step's z is one randn of the sample's shape from the
    generator, so two seeds give x_a − x_b = σ (z_a − z_b). Returns σ (a 0-d tensor) and
    checks that the step is that affine function of z."""
    a = scheduler.step(model_output, t, sample, generator=seeded(1), **kwargs).prev_sample
    b = scheduler.step(model_output, t, sample, generator=seeded(2), **kwargs).prev_sample
    za = torch.randn(sample.shape, generator=seeded(1), dtype=sample.dtype)
    zb = torch.randn(sample.shape, generator=seeded(2), dtype=sample.dtype)
    dz = za - zb
    std = ((a - b) * dz).sum() / (dz * dz).sum()
    assert (a - b - std * dz).abs().max() < 1e-9
    return std


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_variance(variance_type):
    """diffusers' test_variance pins σ² at t = 0, 487 and 999 (0, 0.00979 and 0.02 for
    fixed_small); here the σ that ours and diffusers' step add are measured and compared with
    diffusers' _get_variance."""
    ours = DDPMScheduler(variance_type=variance_type)
    theirs = diffusers.DDPMScheduler(variance_type=variance_type)
    x = random_sample(dtype=torch.float64)
    out = 0.1 * x
    for t in (487, 999):
        expected = theirs._get_variance(t).double()
        assert abs(added_noise_std(ours, out, t, x) ** 2 / expected - 1) < 1e-5, t
        assert abs(added_noise_std(theirs, out, t, x) ** 2 / expected - 1) < 1e-5, t
    # at t = 0 neither adds noise; β̃ there is 0, as diffusers' _get_variance(0) ≈ 0 for fixed_small
    assert added_noise_std(ours, out, 0, x) == 0
    assert added_noise_std(theirs, out, 0, x) == 0
    assert ours.q_posterior(x, x, 0)[1].abs().max() == 0
    assert float(diffusers.DDPMScheduler()._get_variance(0)) < 1e-19
    assert abs(float(diffusers.DDPMScheduler()._get_variance(487)) - 0.00979) < 1e-5


def test_ddpm_fixed_large_log_variance_at_t0():
    """Where ours deliberately differs: fixed_large's *log variance* at t = 0, which only the
    likelihood's decoder reads, is log β̃ of t = 1 (Ho et al.'s code, docs/math.md §4), where
    diffusers' _get_variance(0) gives β at t = 0. Sampling is unaffected (no noise at t = 0,
    test_ddpm_variance); at t > 0 both are β_t."""
    ours = DDPMScheduler(variance_type="fixed_large")
    theirs = diffusers.DDPMScheduler(variance_type="fixed_large")
    x = random_sample(dtype=torch.float64)
    variance_at_0 = ours.p_mean_variance(x, x, 0)[1]
    beta_tilde_at_1 = ours.q_posterior(x, x, 1)[1]
    torch.testing.assert_close(variance_at_0, beta_tilde_at_1)
    assert abs(float(variance_at_0.flatten()[0]) - float(theirs._get_variance(0))) > 1e-5
    for t in (1, 487, 999):
        v = float(ours.p_mean_variance(x, x, t)[1].flatten()[0])
        assert abs(v / float(theirs._get_variance(t)) - 1) < 1e-4, t  # diffusers' β_t: float32


def test_ddim_variance():
    """diffusers' DDIM test_variance pins β̃ for the step pairs (t, t_prev) below. Ours steps
    from a timestep to the next one of its chain, so the pairs form one chain set with
    set_timesteps(timesteps=...); the σ an η = 1 step adds is β̃'s square root."""
    pairs = [(999, 998), (980, 960), (487, 486), (420, 400)]
    chain = [t for pair in pairs for t in pair] + [0]
    ours = DDIMScheduler()
    ours.set_timesteps(timesteps=chain)
    theirs = diffusers.DDIMScheduler()
    x = random_sample(dtype=torch.float64)
    for t, prev in pairs:
        expected = theirs._get_variance(t, prev).double()
        assert abs(added_noise_std(ours, 0.1 * x, t, x, eta=1.0) ** 2 / expected - 1) < 1e-5, t
        variance = ours.q_posterior(x, x, t, respaced=True)[1]
        assert abs(float(variance.flatten()[0]) / expected - 1) < 1e-5, t
    # the chain's last step (t = 0, ᾱ_prev = 1) adds none, as diffusers' _get_variance(0, 0) = 0
    assert added_noise_std(ours, 0.1 * x, 0, x, eta=1.0) == 0
    assert float(theirs._get_variance(0, 0)) == 0
    assert abs(float(theirs._get_variance(420, 400)) - 0.14771) < 1e-5


# ---- full loops ----------------------------------------------------------------------------


def ddpm_loop(scheduler, generator, sample=None, timesteps=None) -> torch.Tensor:
    sample = ramp_sample() if sample is None else sample
    for t in scheduler.timesteps if timesteps is None else timesteps:
        sample = scheduler.step(toy_model(sample, t), t, sample, generator=generator).prev_sample
    return sample


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_full_loop(prediction_type):
    """diffusers' test_full_loop_no_noise / _with_v_prediction: all 1000 steps with one
    generator, its int timesteps in reverse order, against diffusers side by side."""
    ours = DDPMScheduler(prediction_type=prediction_type)
    theirs = diffusers.DDPMScheduler(prediction_type=prediction_type)
    timesteps = list(reversed(range(len(ours))))
    a = ddpm_loop(ours, seeded(0), timesteps=timesteps)
    b = ddpm_loop(theirs, seeded(0), timesteps=timesteps)
    assert a.shape == SHAPE and torch.isfinite(a).all()
    assert relative_error(a, b) < 1e-3
    assert abs(a.abs().sum() / b.abs().sum() - 1) < 1e-4
    # deterministic with a generator: the same seed gives the same sample, another seed another
    assert torch.equal(ddpm_loop(ours, seeded(0), timesteps=timesteps), a)
    assert (ddpm_loop(ours, seeded(1), timesteps=timesteps) - a).abs().max() > 1e-2


def test_ddpm_full_loop_with_noise():
    """diffusers' test_full_loop_with_noise: noise the sample to the chain's second-last
    timestep (a (1,) timesteps tensor broadcast over the batch), then finish the chain."""
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
    noise = torch.randn(SHAPE, generator=seeded(3))
    results = []
    for s in (ours, theirs):
        timesteps = s.timesteps[len(s) - 2 :]
        assert timesteps.tolist() == [1, 0]
        noisy = s.add_noise(ramp_sample(), noise, timesteps[:1])
        assert noisy.shape == SHAPE
        results.append(ddpm_loop(s, seeded(0), noisy, timesteps))
    assert relative_error(*results) < 1e-4


def ddim_loop(scheduler, sample=None, timesteps=None, eta=0.0) -> torch.Tensor:
    sample = ramp_sample() if sample is None else sample
    for t in scheduler.timesteps if timesteps is None else timesteps:
        sample = scheduler.step(toy_model(sample, t), t, sample, eta).prev_sample  # eta positional
    return sample


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="epsilon"),
        pytest.param({"prediction_type": "v_prediction"}, id="v_prediction"),
        # beta_start=0.01: ᾱ at t = 0 is 0.99, so set_alpha_to_one makes a difference
        pytest.param({"set_alpha_to_one": True, "beta_start": 0.01}, id="set_alpha_to_one"),
        pytest.param({"set_alpha_to_one": False, "beta_start": 0.01}, id="no_set_alpha_to_one"),
    ],
)
def test_ddim_full_loop(options):
    ours, theirs = DDIMScheduler(**options), diffusers.DDIMScheduler(**options)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    a, b = ddim_loop(ours), ddim_loop(theirs)
    assert torch.isfinite(a).all()
    assert relative_error(a, b) < 1e-4


def test_ddim_set_alpha_to_one_changes_the_last_step():
    a = DDIMScheduler(set_alpha_to_one=True, beta_start=0.01)
    b = DDIMScheduler(set_alpha_to_one=False, beta_start=0.01)
    for s in (a, b):
        s.set_timesteps(10)
    assert (ddim_loop(a) - ddim_loop(b)).abs().max() > 1e-3


def test_ddim_full_loop_with_noise():
    ours, theirs = DDIMScheduler(), diffusers.DDIMScheduler()
    noise = torch.randn(SHAPE, generator=seeded(3))
    results = []
    for s in (ours, theirs):
        s.set_timesteps(10)
        timesteps = s.timesteps[8:]
        assert timesteps.tolist() == [100, 0]
        noisy = s.add_noise(ramp_sample(), noise, timesteps[:1])
        results.append(ddim_loop(s, noisy, timesteps))
    assert relative_error(*results) < 1e-4


# ---- custom timesteps ----------------------------------------------------------------------


def test_ddpm_custom_timesteps():
    """diffusers' test_custom_timesteps checks previous_timestep along [100, 87, 50, 1, 0];
    ours has no previous_timestep, so each step is checked to land where diffusers' does
    (ᾱ of the next custom timestep), with the same generator."""
    custom = [100, 87, 50, 1, 0]
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
    ours.set_timesteps(timesteps=custom)
    theirs.set_timesteps(timesteps=custom)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == custom
    x = random_sample()
    for t in custom:
        a = ours.step(toy_model(x, t), t, x, generator=seeded(t)).prev_sample
        b = theirs.step(toy_model(x, t), t, x, generator=seeded(t)).prev_sample
        assert relative_error(a, b) < 1e-4, t
    assert relative_error(ddpm_loop(ours, seeded(0)), ddpm_loop(theirs, seeded(0))) < 1e-4


# Our messages are our own (tests/test_errors.py checks them in full); diffusers' tests only
# ask for a ValueError.
@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"timesteps": [100, 87, 50, 51, 0]}, "descending", id="increasing"),
        pytest.param({"num_inference_steps": 5, "timesteps": [100, 87, 50, 1, 0]}, "exactly one", id="both"),
        pytest.param({"timesteps": [1000]}, r"\[0, 999\]", id="too_large"),
        pytest.param({"num_inference_steps": 0}, r"\[1, 1000\]", id="zero_steps"),
        pytest.param({"num_inference_steps": 1001}, r"\[1, 1000\]", id="too_many_steps"),
    ],
)
@pytest.mark.parametrize("cls", SCHEDULERS)
def test_set_timesteps_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls().set_timesteps(**kwargs)
    # diffusers refuses the same call (0.42 by dividing by zero for num_inference_steps=0)
    theirs = THEIRS[cls]()
    if "timesteps" in kwargs and cls is DDIMScheduler:
        return  # diffusers' DDIM takes no custom timesteps
    with pytest.raises((ValueError, ZeroDivisionError)):
        theirs.set_timesteps(**kwargs)


# ---- SchedulerCommonTest -------------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_from_pretrained(tmp_path, cls):
    """A saved and reloaded scheduler has the same config; diffusers' _use_default_values
    (the keys left at their defaults when built) is not carried by a loaded one."""
    s = cls(num_train_timesteps=200, beta_schedule="scaled_linear", steps_offset=1)
    s.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    config = dict(s.config)
    assert "thresholding" in config["_use_default_values"]
    del config["_use_default_values"]
    assert dict(loaded.config) == config


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_compatibles(cls):
    """Every compatible class reads this config, and this class reads theirs back to the same
    config; keys only the other adds are none of this class's arguments."""
    s = cls(num_train_timesteps=300, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    compatibles = [*s.compatibles, *SCHEDULERS]
    names = {c.__name__ for c in s.compatibles}
    assert {"DDPMScheduler", "DDIMScheduler"} <= names
    init_keys = set(inspect.signature(cls.__init__).parameters)
    for other_cls in compatibles:
        assert other_cls is not None
        other = other_cls.from_config(s.config)
        assert type(other) is other_cls
        back = cls.from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in s.config} == dict(s.config), other_cls
        assert not ({k for k in back.config if k not in s.config} & init_keys), other_cls
        assert torch.equal(back.alphas_cumprod, s.alphas_cumprod)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_step_shape(cls):
    s = cls()
    s.set_timesteps(INFERENCE_STEPS)
    x = random_sample()
    kw = step_kwargs(cls, 0.0)
    outputs = [s.step(0.1 * x, t, x, generator=seeded(0), **kw).prev_sample for t in chain_points(s)]
    assert all(o.shape == x.shape for o in outputs)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("where", ["first", "last"])
def test_step_tuple_equals_output(cls, where):
    """return_dict=False gives the tuple (prev_sample, pred_original_sample)."""
    s = cls()
    s.set_timesteps(INFERENCE_STEPS)
    t = s.timesteps[0] if where == "first" else s.timesteps[-1]
    x = random_sample()
    kw = step_kwargs(cls, 1.0)  # η = 1: DDIM draws noise too
    as_dict = s.step(0.1 * x, t, x, generator=seeded(0), **kw)
    as_tuple = s.step(0.1 * x, t, x, generator=seeded(0), return_dict=False, **kw)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_tuple[0], as_dict.prev_sample)
    assert torch.equal(as_tuple[1], as_dict.pred_original_sample)
    if where == "first":  # the order is (prev_sample, pred_original_sample), not the reverse
        assert not torch.equal(as_tuple[0], as_tuple[1])


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_public_api(cls):
    s = cls()
    assert s.init_noise_sigma == THEIRS[cls]().init_noise_sigma == 1.0
    assert s.order == 1
    assert len(s) == s.config.num_train_timesteps == 1000
    assert len(cls(num_train_timesteps=37)) == 37
    x = random_sample()
    for t in (0, 0.0, 500, torch.tensor(999), None):
        scaled = s.scale_model_input(x, t)
        assert scaled.shape == x.shape
        assert torch.equal(scaled, x)  # DDPM and DDIM do not scale the model input


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_add_noise(cls, dtype):
    """add_noise takes timesteps as a (1,) tensor (diffusers' test_add_noise_device:
    `scheduler.timesteps[5][None]`), one per example (B,), a 0-d tensor or an int; it keeps
    the sample's shape and dtype and agrees with diffusers."""
    ours, theirs = cls(), THEIRS[cls]()
    ours.set_timesteps(100)
    theirs.set_timesteps(100)
    x = random_sample(dtype=dtype)
    noise = torch.randn(SHAPE, generator=seeded(1)).to(dtype)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5  # both round ᾱ's roots to bfloat16
    for t in (ours.timesteps[5][None], torch.tensor([0, 250, 500, 999]), ours.timesteps[5], 17):
        a = ours.add_noise(x, noise, t)
        b = theirs.add_noise(x, noise, torch.as_tensor(t))
        assert a.shape == SHAPE and a.dtype == dtype
        assert relative_error(a, b) < tol, t
    # the (B,) timesteps really act per example
    per_example = ours.add_noise(x, noise, torch.tensor([0, 0, 999, 999]))
    assert relative_error(per_example[:2], ours.add_noise(x[:2], noise[:2], 0)) < tol
    assert relative_error(per_example[2:], ours.add_noise(x[2:], noise[2:], 999)) < tol


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_no_catch_all_keyword_arguments(cls):
    """diffusers' test_deprecated_kwargs: no **kwargs in __init__ unless deprecated keywords
    are listed. Ours has neither, so a misspelt option is an error, never silently dropped."""
    kinds = {p.kind for p in inspect.signature(cls.__init__).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert cls._deprecated_kwargs == []
    with pytest.raises(TypeError, match="varience_type"):
        cls(varience_type="fixed_small")


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_trained_betas_round_trip(tmp_path, cls):
    """diffusers' test_trained_betas passes two betas (a NumPy array) with
    num_train_timesteps=1000; ours requires one β per train timestep (tests/test_errors.py),
    so the two come with num_train_timesteps=2."""
    s = cls(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3]))
    s.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.betas.tolist() == s.betas.tolist() == pytest.approx([0.1, 0.3], abs=1e-15)
    theirs = THEIRS[cls].from_pretrained(tmp_path)
    torch.testing.assert_close(theirs.betas.double(), s.betas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_getattr(cls):
    """Attributes read as usual, a config key read as an attribute warns as in diffusers,
    and a missing one raises AttributeError naming it."""
    s = cls()
    s.dummy_attribute = 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s.dummy_attribute == 5
        assert callable(s.save_pretrained)
    s.register_to_config(test_attribute=5)
    with pytest.warns(FutureWarning):
        assert s.test_attribute == 5
    with pytest.raises(AttributeError, match=f"'{cls.__name__}' object has no attribute 'does_not_exist'"):
        s.does_not_exist  # noqa: B018


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_unexpected_config_key_is_ignored_with_a_warning(tmp_path, cls):
    """diffusers' SchedulerBaseTests: a config key no class expects loads, with a warning
    naming it."""
    config = {**cls(num_train_timesteps=64).config, "unexpected": True}
    handler = _Records()
    logger = logging.getLogger("diffusers.configuration_utils")
    logger.addHandler(handler)
    try:
        s = cls.from_config(config)
    finally:
        logger.removeHandler(handler)
    assert s.config.num_train_timesteps == 64
    assert any("{'unexpected': True}" in m and cls.__name__ in m for m in handler.messages)
