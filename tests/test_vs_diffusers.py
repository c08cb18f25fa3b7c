"""Against diffusers, an independent implementation: for every option the two share, ᾱ
within 1e-4 relative and `step` within 1e-3 (relative to 1 + |value|) given the same
generator, over all timesteps and with respacing. The bounds are diffusers' float32
rounding (it keeps ᾱ in float32 and recomputes β_t = 1 − ᾱ_t/ᾱ_{t−1} in float32). Where
diffusers is wrong, a test shows the difference."""

from __future__ import annotations

import diffusers
import pytest
import torch

from schedulers import DDIMScheduler, DDPMScheduler

SHAPE = (2, 3, 4, 4)


def _compare_steps(ours, theirs, *, channels=3, transform=None, skip_last=False, **step_kwargs):
    """Step both from the same x_t and model output at every timestep of the chain."""
    assert torch.equal(ours.timesteps, theirs.timesteps)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=g)
    output = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=g).clamp(-1, 1)
    timesteps = ours.timesteps[:-1] if skip_last else ours.timesteps
    worst = 0.0
    for t in timesteps:
        a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(int(t)), **step_kwargs)
        their_output = transform(output) if transform else output
        b = theirs.step(
            their_output, t, sample, generator=torch.Generator().manual_seed(int(t)), **step_kwargs
        )
        for x, y in ((a.prev_sample, b.prev_sample), (a.pred_original_sample, b.pred_original_sample)):
            worst = max(worst, ((x - y).abs() / (1 + y.abs())).max().item())
    assert worst < 1e-3, worst


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_alphas_cumprod(schedule):
    ours, theirs = DDPMScheduler(beta_schedule=schedule), diffusers.DDPMScheduler(beta_schedule=schedule)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=1e-4, atol=0)


def test_cosine_is_squaredcos_cap_v2():
    ours = DDPMScheduler(beta_schedule="cosine")
    theirs = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=1e-4, atol=0)


def test_trained_betas():
    betas = torch.linspace(1e-4, 0.05, 300).tolist()
    ours = DDPMScheduler(num_train_timesteps=300, trained_betas=betas)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=300, trained_betas=betas)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=1e-4, atol=0)
    _compare_steps(ours, theirs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned_range"])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_ddpm_step_every_timestep(prediction_type, variance_type, clip_sample):
    kw = dict(prediction_type=prediction_type, variance_type=variance_type, clip_sample=clip_sample)
    _compare_steps(
        DDPMScheduler(**kw),
        diffusers.DDPMScheduler(**kw),
        channels=6 if variance_type == "learned_range" else 3,
    )


@pytest.mark.parametrize("schedule", ["scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_ddpm_step_other_schedules(schedule):
    kw = dict(beta_schedule=schedule, variance_type="fixed_large", clip_sample=False)
    _compare_steps(DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw))


@pytest.mark.parametrize(
    "chain", [("leading", 50), ("leading", 7), ("linspace", 50), ("trailing", 50), [900, 500, 120, 40, 3, 0]]
)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_ddpm_step_respaced(chain, variance_type):
    kw = dict(variance_type=variance_type, clip_sample=False)
    ours, theirs = DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
    if isinstance(chain, list):
        ours.set_timesteps(timesteps=chain)
        theirs.set_timesteps(timesteps=chain)
    else:
        ours.register_to_config(timestep_spacing=chain[0])
        theirs.register_to_config(timestep_spacing=chain[0])
        ours.set_timesteps(chain[1])
        theirs.set_timesteps(chain[1])
    # diffusers adds noise at a last step that is not timestep 0 (trailing): compared below.
    skip_last = ours.timesteps[-1] != 0
    _compare_steps(ours, theirs, channels=6 if variance_type == "learned_range" else 3, skip_last=skip_last)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_one_generator_through_a_whole_chain(variance_type):
    """A sampling loop driven by one generator gives the same samples as diffusers and
    leaves the generator in the same state (no draw at the last step, t = 0), so that the
    next batch drawn from that generator matches too."""
    kw = dict(variance_type=variance_type)
    ours, theirs = DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    output = torch.randn((SHAPE[0], 6 if variance_type == "learned_range" else 3, *SHAPE[2:])).clamp(-1, 1)
    results = []
    for scheduler in (ours, theirs):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SHAPE, generator=g)
        for t in scheduler.timesteps:
            model_output = 0.5 * output + 0.1 * x.repeat(1, output.shape[1] // 3, 1, 1)
            x = scheduler.step(model_output, t, x, generator=g).prev_sample
        results.append((x, g.get_state()))
    (a, state_a), (b, state_b) = results
    assert ((a - b).abs() / (1 + b.abs())).max() < 1e-3
    assert torch.equal(state_a, state_b)


def test_steps_offset_matches():
    ours, theirs = DDPMScheduler(steps_offset=1), diffusers.DDPMScheduler(steps_offset=1)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    _compare_steps(ours, theirs, skip_last=True)


def test_learned_is_log_variance_where_diffusers_takes_the_variance():
    """docs/math.md §4: "learned" outputs log σ² (iDDPM); diffusers reads that channel as σ²
    itself, so ours with output L matches diffusers with output e^L."""
    ours, theirs = DDPMScheduler(variance_type="learned"), diffusers.DDPMScheduler(variance_type="learned")

    def to_variance(output):
        return torch.cat([output[:, :3], output[:, 3:].exp()], dim=1)

    _compare_steps(ours, theirs, channels=6, transform=to_variance)


def test_fixed_large_log_is_fixed_large_where_diffusers_returns_nan():
    """diffusers issue 14569: its fixed_large_log scales the noise by √(log β) = NaN."""
    x, eps = torch.randn(SHAPE), torch.randn(SHAPE)
    ours = DDPMScheduler(variance_type="fixed_large_log").step(
        eps, 500, x, generator=torch.Generator().manual_seed(0)
    )
    large = DDPMScheduler(variance_type="fixed_large").step(
        eps, 500, x, generator=torch.Generator().manual_seed(0)
    )
    theirs = diffusers.DDPMScheduler(variance_type="fixed_large_log").step(
        eps, 500, x, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(ours.prev_sample).all()
    torch.testing.assert_close(ours.prev_sample, large.prev_sample)
    assert torch.isnan(theirs.prev_sample).all()


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_no_noise_at_the_last_step_of_a_trailing_chain(variance_type):
    """docs/math.md §4: no noise at the final step, whatever the spacing. With trailing spacing
    the last timestep is not 0, and diffusers adds noise there."""
    kw = dict(variance_type=variance_type, timestep_spacing="trailing", clip_sample=False)
    ours, theirs = DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
    ours.set_timesteps(50)
    theirs.set_timesteps(50)
    last = ours.timesteps[-1]
    assert last == 19
    x = torch.randn(SHAPE)
    out = torch.randn(SHAPE[0], 6 if variance_type == "learned_range" else 3, *SHAPE[2:]).clamp(-1, 1)
    a = ours.step(out, last, x, generator=torch.Generator().manual_seed(0))
    a2 = ours.step(out, last, x, generator=torch.Generator().manual_seed(1))
    b = theirs.step(out, last, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.prev_sample, a2.prev_sample, rtol=0, atol=0)  # deterministic: no noise
    torch.testing.assert_close(a.prev_sample, a.pred_original_sample)  # ᾱ_prev = 1: x_prev = x̂_0
    assert (b.prev_sample - a.prev_sample).abs().max() > 0.1


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_step(prediction_type, eta, spacing):
    kw = dict(prediction_type=prediction_type, timestep_spacing=spacing)
    ours, theirs = DDIMScheduler(**kw), diffusers.DDIMScheduler(**kw)
    ours.set_timesteps(50)
    theirs.set_timesteps(50)
    _compare_steps(ours, theirs, eta=eta)
    _compare_steps(ours, theirs, eta=eta, use_clipped_model_output=True)


def test_ddim_set_alpha_to_one_false():
    ours, theirs = DDIMScheduler(set_alpha_to_one=False), diffusers.DDIMScheduler(set_alpha_to_one=False)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    _compare_steps(ours, theirs, eta=0.0)
