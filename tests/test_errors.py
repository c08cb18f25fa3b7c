"""Every bad input is a ValueError whose message names the bad value and what is allowed
(DESIGN.md, "Options are checked"), and no public method changes the caller's tensors
(DESIGN.md, "Never change the caller's tensors in place")."""

from __future__ import annotations

import re

import diffusers
import pytest
import torch
from conftest import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES

from ddpm_pipelines import losses
from schedulers import DDIMScheduler, DDPMScheduler

SCHEDULERS = [DDPMScheduler, DDIMScheduler]
T = 50  # a short chain keeps construction cheap

DECODERS = ("discretized", "continuous")
LOSS_TYPES = ("simple", "vlb", "hybrid")

GE = r"(≥|>=)"  # "≥ 1" or ">= 1"


def names(*patterns: str) -> str:
    """A regex that matches a message containing every one of `patterns` (regexes), in any
    order: for pytest.raises(match=...), which uses re.search."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in patterns)


def quoted(*choices: str) -> list[str]:
    """Regexes for each choice as repr() writes it, e.g. 'linear'."""
    return [re.escape(repr(c)) for c in choices]


def make(cls, **kwargs):
    return cls(num_train_timesteps=T, **kwargs)


# ---- constructor options -------------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "option, bad, allowed",
    [
        ("beta_schedule", "quadratic", BETA_SCHEDULES),
        ("variance_type", "fixed_medium", VARIANCE_TYPES),
        ("prediction_type", "noise", PREDICTION_TYPES),
        ("timestep_spacing", "uniform", TIMESTEP_SPACINGS),
    ],
)
def test_unknown_choice_names_value_and_allowed(cls, option, bad, allowed):
    with pytest.raises(ValueError, match=names(re.escape(option), re.escape(repr(bad)), *quoted(*allowed))):
        make(cls, **{option: bad})


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "beta_start, beta_end",
    [
        (0.02, 0.0001),  # beta_end < beta_start
        (0.0, 0.02),  # beta_start = 0
        (-0.001, 0.02),  # beta_start < 0
        (0.0001, 1.0),  # beta_end = 1
        (0.0001, 1.5),  # beta_end > 1
    ],
)
def test_bad_beta_range(cls, beta_start, beta_end):
    allowed = r"0 < beta_start (≤|<=) beta_end < 1"
    with pytest.raises(
        ValueError,
        match=names(
            f"beta_start={re.escape(repr(beta_start))}", f"beta_end={re.escape(repr(beta_end))}", allowed
        ),
    ):
        make(cls, beta_start=beta_start, beta_end=beta_end)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_num_train_timesteps(cls, bad):
    with pytest.raises(
        ValueError, match=names(f"num_train_timesteps={re.escape(repr(bad))}", "integer", f"{GE} ?1")
    ):
        cls(num_train_timesteps=bad)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("length", [T - 1, T + 1])
def test_trained_betas_wrong_length(cls, length):
    with pytest.raises(
        ValueError, match=names("trained_betas", re.escape(f"({length},)"), f"num_train_timesteps={T}")
    ):
        make(cls, trained_betas=[0.01] * length)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_trained_betas_two_dimensional(cls):
    with pytest.raises(ValueError, match=names("trained_betas", re.escape(f"(1, {T})"), "1-D")):
        make(cls, trained_betas=[[0.01] * T])


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [1.0, 0.0, -0.2, 1.5])
def test_trained_betas_value_outside_unit_interval(cls, bad):
    betas = [0.01] * T
    betas[7] = bad
    with pytest.raises(ValueError, match=names("trained_betas", re.escape(repr(bad)), re.escape("(0, 1)"))):
        make(cls, trained_betas=betas)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [-1, -10, 1.5])
def test_bad_steps_offset(cls, bad):
    with pytest.raises(
        ValueError, match=names(f"steps_offset={re.escape(repr(bad))}", "integer", f"{GE} ?0")
    ):
        make(cls, steps_offset=bad)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_clip_sample_range(cls, bad):
    with pytest.raises(ValueError, match=names(f"clip_sample_range={re.escape(repr(bad))}", "> ?0")):
        make(cls, clip_sample_range=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_ddim_eta_outside_unit_interval_in_constructor(bad):
    with pytest.raises(ValueError, match=names(f"eta={re.escape(repr(bad))}", re.escape("[0, 1]"))):
        make(DDIMScheduler, eta=bad)


# ---- set_timesteps -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [0, -3, T + 1, 2.5, True])
def test_set_timesteps_bad_count(cls, bad):
    s = make(cls)
    with pytest.raises(
        ValueError, match=names(f"num_inference_steps={re.escape(repr(bad))}", re.escape(f"[1, {T}]"))
    ):
        s.set_timesteps(bad)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_set_timesteps_needs_exactly_one_argument(cls):
    s = make(cls)
    allowed = names("exactly one", "num_inference_steps", "timesteps")
    with pytest.raises(ValueError, match=allowed):
        s.set_timesteps()
    with pytest.raises(ValueError, match=allowed):
        s.set_timesteps(num_inference_steps=3, timesteps=[30, 20, 10])


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "timesteps, allowed",
    [
        ([10, 20, 30], "descending"),  # ascending
        ([30, 10, 20], "descending"),  # unordered
        ([30, 20, 20, 10], "descending"),  # duplicate
        ([], "non-empty"),
        ([30.0, 20.0], "integers"),
        ([T, 20, 10], re.escape(f"[0, {T - 1}]")),  # ≥ T
        ([T + 7, 20, 10], re.escape(f"[0, {T - 1}]")),
        ([30, 20, -1], re.escape(f"[0, {T - 1}]")),  # < 0
    ],
)
def test_set_timesteps_bad_list(cls, timesteps, allowed):
    s = make(cls)
    with pytest.raises(ValueError, match=names(re.escape(repr(timesteps)), allowed)):
        s.set_timesteps(timesteps=timesteps)
    # the list as a tensor is refused the same way
    if timesteps:
        with pytest.raises(ValueError, match=allowed):
            s.set_timesteps(timesteps=torch.tensor(timesteps))


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_set_timesteps_error_keeps_previous_chain(cls):
    s = make(cls)
    s.set_timesteps(5)
    before = s.timesteps.clone()
    with pytest.raises(ValueError):
        s.set_timesteps(timesteps=[10, 20])
    assert torch.equal(s.timesteps, before)
    assert s.num_inference_steps == 5


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_steps_offset_pushing_leading_chain_past_T(cls):
    s = make(cls, steps_offset=1, timestep_spacing="leading")
    with pytest.raises(ValueError, match=names("steps_offset=1", f"num_train_timesteps={T}")):
        s.set_timesteps(T)


# ---- step ----------------------------------------------------------------------------------


def _step(s, model_output, t, sample):
    return s.step(model_output, t, sample, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_step_at_timestep_not_in_chain(cls, as_tensor):
    s = make(cls)
    s.set_timesteps(10)  # leading: 45, 40, ..., 0
    assert 7 not in s.timesteps.tolist()
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor(7) if as_tensor else 7
    with pytest.raises(ValueError, match=names("timestep 7", "not in the sampling chain", "timesteps")):
        _step(s, torch.zeros_like(x), t, x)
    # a per-example (B,) tensor with one bad entry too
    with pytest.raises(ValueError, match=names("timestep 7", "not in the sampling chain")):
        _step(s, torch.zeros_like(x), torch.tensor([45, 7]), x)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [T, T + 100, -1])
@pytest.mark.parametrize("kind", ["int", "0-d", "batch"])
def test_step_at_timestep_outside_range(cls, bad, kind):
    s = make(cls)
    s.set_timesteps(10)
    x = torch.zeros(2, 3, 4, 4)
    t = {"int": bad, "0-d": torch.tensor(bad), "batch": torch.tensor([45, bad])}[kind]
    with pytest.raises(ValueError, match=names(f"timestep {bad}", re.escape(f"[0, {T - 1}]"))):
        _step(s, torch.zeros_like(x), t, x)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("bad", [T, -1])
def test_train_side_methods_refuse_timestep_outside_range(cls, bad):
    s = make(cls)
    x = torch.zeros(2, 3, 4, 4)
    match = names(f"timestep {bad}", re.escape(f"[0, {T - 1}]"))
    with pytest.raises(ValueError, match=match):
        s.add_noise(x, x, torch.tensor([3, bad]))
    with pytest.raises(ValueError, match=match):
        s.q_posterior(x, x, bad)
    with pytest.raises(ValueError, match=match):
        s.p_mean_variance(x, x, torch.tensor([bad, 3]))


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"]
)
@pytest.mark.parametrize("channels", [4, 6, 2])
def test_step_model_output_wrong_channels_fixed(cls, variance_type, channels):
    s = make(cls, variance_type=variance_type)
    s.set_timesteps(10)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(
        ValueError,
        match=names(
            re.escape(f"(2, {channels}, 4, 4)"), re.escape(repr(variance_type)), re.escape("(2, 3, 4, 4)")
        ),
    ):
        _step(s, torch.zeros(2, channels, 4, 4), 45, x)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_step_learned_variance_needs_twice_the_channels(cls, variance_type):
    s = make(cls, variance_type=variance_type)
    s.set_timesteps(10)
    x = torch.zeros(2, 3, 4, 4)
    match = names(
        re.escape("(2, 3, 4, 4)"),
        re.escape(repr(variance_type)),
        re.escape("(2, 6, 4, 4)"),
        "twice the channels",
    )
    with pytest.raises(ValueError, match=match):
        _step(s, torch.zeros_like(x), 45, x)  # same channels as the sample
    with pytest.raises(ValueError, match=names(re.escape("(2, 5, 4, 4)"), "twice the channels")):
        _step(s, torch.zeros(2, 5, 4, 4), 45, x)
    # and the right shape is accepted
    out = _step(s, torch.zeros(2, 6, 4, 4), 45, x)
    assert out.prev_sample.shape == x.shape


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_with_one_dimensional_sample_is_a_value_error(variance_type):
    s = make(DDPMScheduler, variance_type=variance_type)
    s.set_timesteps(10)
    x = torch.zeros(4)
    with pytest.raises(ValueError, match=names(re.escape(repr(variance_type)), "channels")):
        _step(s, torch.zeros(4), 45, x)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_p_mean_variance_learned_variance_needs_twice_the_channels(variance_type):
    s = make(DDPMScheduler, variance_type=variance_type)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=names(re.escape("(2, 6, 4, 4)"), "twice the channels")):
        s.p_mean_variance(torch.zeros_like(x), x, torch.tensor([3, 4]))


@pytest.mark.parametrize("bad", [-0.5, 1.01, float("nan")])
def test_ddim_step_eta_outside_unit_interval(bad):
    s = make(DDIMScheduler)
    s.set_timesteps(10)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=names(f"eta={re.escape(repr(bad))}", re.escape("[0, 1]"))):
        s.step(torch.zeros_like(x), 45, x, eta=bad)


# ---- losses --------------------------------------------------------------------------------


def _zero_model(x_t, t):
    return torch.zeros_like(x_t)


def test_vlb_term_unknown_decoder():
    s = make(DDPMScheduler)
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([3, 0])
    with pytest.raises(ValueError, match=names("decoder", re.escape("'gaussian'"), *quoted(*DECODERS))):
        losses.vlb_term(s, x, x, x, t, decoder="gaussian")


def test_vlb_terms_unknown_decoder():
    s = make(DDPMScheduler)
    with pytest.raises(ValueError, match=names("decoder", re.escape("'gaussian'"), *quoted(*DECODERS))):
        losses.vlb_terms(_zero_model, s, torch.zeros(2, 3, 4, 4), decoder="gaussian")


def test_training_losses_unknown_loss_type():
    s = make(DDPMScheduler)
    with pytest.raises(ValueError, match=names("loss_type", re.escape("'mse'"), *quoted(*LOSS_TYPES))):
        losses.training_losses(_zero_model, s, torch.zeros(2, 3, 4, 4), loss_type="mse")


def test_training_losses_unknown_decoder():
    s = make(DDPMScheduler)
    with pytest.raises(ValueError, match=names("decoder", re.escape("'gaussian'"), *quoted(*DECODERS))):
        losses.training_losses(_zero_model, s, torch.zeros(2, 3, 4, 4), loss_type="vlb", decoder="gaussian")


# ---- diffusers options we do not implement -------------------------------------------------

UNIMPLEMENTED = ["thresholding", "rescale_betas_zero_snr"]
DIFFUSERS_CLASSES = {DDPMScheduler: diffusers.DDPMScheduler, DDIMScheduler: diffusers.DDIMScheduler}


def unimplemented(option: str, value, cls) -> str:
    return names(
        f"{option}={re.escape(repr(value))}",
        "diffusers option",
        cls.__name__,
        "does not implement",
        "allowed: False",
    )


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("option", UNIMPLEMENTED)
@pytest.mark.parametrize("value", [True, 1, "yes"])
def test_constructor_refuses_unimplemented_diffusers_option(cls, option, value):
    with pytest.raises(ValueError, match=unimplemented(option, value, cls)):
        make(cls, **{option: value})


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_thresholding_on_is_refused_whatever_its_settings(cls):
    with pytest.raises(ValueError, match=unimplemented("thresholding", True, cls)):
        make(cls, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("option", UNIMPLEMENTED)
def test_from_config_refuses_unimplemented_diffusers_option(cls, option):
    source = DIFFUSERS_CLASSES[cls]
    config = source(num_train_timesteps=T, **{option: True}).config
    with pytest.raises(ValueError, match=unimplemented(option, True, cls)):
        cls.from_config(config)
    # the same option given as a keyword override
    plain = source(num_train_timesteps=T).config
    with pytest.raises(ValueError, match=unimplemented(option, True, cls)):
        cls.from_config(plain, **{option: True})
    # and "off" loads
    assert cls.from_config(plain).config.num_train_timesteps == T


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("option", UNIMPLEMENTED)
def test_from_pretrained_refuses_unimplemented_diffusers_option(tmp_path, cls, option):
    DIFFUSERS_CLASSES[cls](num_train_timesteps=T, **{option: True}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=unimplemented(option, True, cls)):
        cls.from_pretrained(tmp_path)


# ---- the caller's tensors are never changed ------------------------------------------------


def _inputs(channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = 3 * torch.randn(2, 3, 4, 4, generator=g)  # beyond ±1, so clipping acts
    model_output = 3 * torch.randn(2, channels, 4, 4, generator=g)
    return model_output, sample


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddpm_step_leaves_inputs_unchanged(variance_type, prediction_type):
    s = make(DDPMScheduler, variance_type=variance_type, prediction_type=prediction_type)
    s.set_timesteps(10)
    channels = 6 if variance_type in ("learned", "learned_range") else 3
    for t in (s.timesteps[0], int(s.timesteps[4]), int(s.timesteps[-1])):  # first, middle, last step
        model_output, sample = _inputs(channels)
        mo, sa = model_output.clone(), sample.clone()
        out = s.step(model_output, t, sample, generator=torch.Generator().manual_seed(1))
        assert torch.equal(model_output, mo)
        assert torch.equal(sample, sa)
        assert torch.isfinite(out.prev_sample).all()
        # the outputs are new tensors, not views of the inputs
        for y in (out.prev_sample, out.pred_original_sample):
            assert y.data_ptr() not in (model_output.data_ptr(), sample.data_ptr())


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("use_clipped_model_output", [False, True])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_step_leaves_inputs_unchanged(eta, use_clipped_model_output, prediction_type):
    s = make(DDIMScheduler, prediction_type=prediction_type)
    s.set_timesteps(10)
    for t in (s.timesteps[0], int(s.timesteps[4]), int(s.timesteps[-1])):
        model_output, sample = _inputs(3)
        mo, sa = model_output.clone(), sample.clone()
        out = s.step(
            model_output,
            t,
            sample,
            eta=eta,
            use_clipped_model_output=use_clipped_model_output,
            generator=torch.Generator().manual_seed(1),
        )
        assert torch.equal(model_output, mo)
        assert torch.equal(sample, sa)
        for y in (out.prev_sample, out.pred_original_sample):
            assert y.data_ptr() not in (model_output.data_ptr(), sample.data_ptr())


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddim_step_with_learned_variance_leaves_inputs_unchanged(variance_type):
    s = make(DDIMScheduler, variance_type=variance_type)
    s.set_timesteps(10)
    model_output, sample = _inputs(6)
    mo, sa = model_output.clone(), sample.clone()
    s.step(model_output, 45, sample, eta=1.0, use_clipped_model_output=True)
    assert torch.equal(model_output, mo)
    assert torch.equal(sample, sa)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_add_noise_leaves_inputs_unchanged(cls):
    s = make(cls)
    x0, noise = _inputs(3)
    t = torch.tensor([0, T - 1])
    x0c, nc, tc = x0.clone(), noise.clone(), t.clone()
    for timesteps in (t, 17, torch.tensor(17)):
        s.add_noise(x0, noise, timesteps)
        assert torch.equal(x0, x0c)
        assert torch.equal(noise, nc)
        assert torch.equal(t, tc)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_q_posterior_leaves_inputs_unchanged(cls):
    s = make(cls)
    x0, x_t = _inputs(3)
    t = torch.tensor([0, T - 1])
    x0c, xtc, tc = x0.clone(), x_t.clone(), t.clone()
    for timesteps in (t, 17):
        s.q_posterior(x0, x_t, timesteps)
        assert torch.equal(x0, x0c)
        assert torch.equal(x_t, xtc)
        assert torch.equal(t, tc)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_p_mean_variance_leaves_inputs_unchanged(variance_type, prediction_type):
    s = make(DDPMScheduler, variance_type=variance_type, prediction_type=prediction_type)
    channels = 6 if variance_type in ("learned", "learned_range") else 3
    model_output, x_t = _inputs(channels)
    t = torch.tensor([0, T - 1])
    mo, xtc, tc = model_output.clone(), x_t.clone(), t.clone()
    for timesteps in (t, 17):
        mean, variance, log_variance, x0 = s.p_mean_variance(model_output, x_t, timesteps)
        assert torch.equal(model_output, mo)
        assert torch.equal(x_t, xtc)
        assert torch.equal(t, tc)
        assert mean.shape == variance.shape == log_variance.shape == x0.shape == x_t.shape
