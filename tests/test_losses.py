"""The training losses of docs/math.md §5 for every prediction and variance type."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import PREDICTION_TYPES, VARIANCE_TYPES

from ddpm_pipelines.losses import (
    HYBRID_LAMBDA,
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    training_losses,
    vlb_term,
    vlb_terms,
)
from schedulers import DDPMScheduler

T = 1000


def _batch(seed=0, shape=(16, 2, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(1, T, (shape[0],), generator=g)
    return x0, noise, t


def _perfect_model(scheduler, x0, noise, variance=None):
    """A model that knows x_0 and ε: it outputs the exact target of its parameterisation."""

    def model(x_t, t):
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            out = noise
        elif kind == "sample":
            out = x0
        elif kind == "v_prediction":
            out = scheduler.get_velocity(x0, noise, t)
        else:
            out = scheduler.q_posterior(x0, x_t, t)[0]
        return out if variance is None else torch.cat([out, variance], dim=1)

    return model


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_simple_loss_is_zero_for_the_exact_target_and_positive_otherwise(prediction_type, variance_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type, variance_type=variance_type, clip_sample=False)
    x0, noise, t = _batch()
    learned = variance_type in ("learned", "learned_range")
    variance = torch.zeros_like(x0) if learned else None
    model = _perfect_model(scheduler, x0, noise, variance)
    loss = training_losses(model, scheduler, x0, "simple", t=t, noise=noise)
    assert loss.shape == (16,)
    assert loss.abs().max() < 1e-20
    off = training_losses(lambda x, s: model(x, s) + 0.1, scheduler, x0, "simple", t=t, noise=noise)
    torch.testing.assert_close(off, torch.full((16,), 0.01, dtype=torch.float64))  # mean of 0.1² over dims


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_vlb_loss_with_the_exact_mean_is_the_variance_mismatch(prediction_type, variance_type):
    """With μ_θ = μ̃ exactly, L_t = KL(N(μ̃, β̃) ‖ N(μ̃, σ²)) = ½(log(σ²/β̃) + β̃/σ² − 1) per dim
    (docs/math.md §5): 0 for fixed_small, positive for fixed_large. The loss is T · L_t in bits/dim."""
    scheduler = DDPMScheduler(prediction_type=prediction_type, variance_type=variance_type, clip_sample=False)
    x0, noise, t = _batch(1)
    loss = training_losses(_perfect_model(scheduler, x0, noise), scheduler, x0, "vlb", t=t, noise=noise)
    beta = scheduler.betas[t]
    ab, ab_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t - 1]
    post_var = (1 - ab_prev) / (1 - ab) * beta
    sigma2 = post_var if variance_type == "fixed_small" else beta
    kl = 0.5 * (torch.log(sigma2 / post_var) + post_var / sigma2 - 1)  # nats per dim
    torch.testing.assert_close(loss, T * kl / math.log(2), rtol=1e-6, atol=1e-9)


def test_vlb_loss_at_t0_is_the_decoder_nll():
    scheduler = DDPMScheduler(prediction_type="sample", variance_type="fixed_large", clip_sample=False)
    x0, noise, _ = _batch(2)
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid
    t = torch.zeros(16, dtype=torch.long)
    loss = training_losses(_perfect_model(scheduler, x0, noise), scheduler, x0, "vlb", t=t, noise=noise)
    # μ_θ = x_0 exactly, σ² = β̃_2 (fixed_large at t = 1, as Ho et al.'s code; docs/math.md §4):
    # each interior pixel's bin holds P(|z| < (1/255)/σ).
    beta2_tilde = (scheduler.betas[0] / (1 - scheduler.alphas_cumprod[1]) * scheduler.betas[1]).item()
    p_bin = math.erf((1 / 255) / math.sqrt(2 * beta2_tilde))
    p_edge = 0.5 * (1 + p_bin)
    edge = (x0.abs() > 0.995).double()  # the two outermost bins, ±1
    nats = -(edge * math.log(p_edge) + (1 - edge) * math.log(p_bin)).flatten(1).sum(1)
    torch.testing.assert_close(loss, bits_per_dim(T * nats, x0[0].numel()))


def test_continuous_decoder_option():
    scheduler = DDPMScheduler(prediction_type="sample", variance_type="fixed_large", clip_sample=False)
    x0 = torch.tensor([[0.25, -0.5]], dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.long)
    x_t = scheduler.add_noise(x0, torch.zeros_like(x0), t)
    nats = vlb_term(scheduler, x0, x0, x_t, t, decoder="continuous")
    beta2_tilde = (scheduler.betas[0] / (1 - scheduler.alphas_cumprod[1]) * scheduler.betas[1]).item()
    expected = 2 * 0.5 * math.log(2 * math.pi * beta2_tilde)  # −log N(x0; x0, β̃_2) for 2 dims
    torch.testing.assert_close(nats, torch.tensor([expected], dtype=torch.float64))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_hybrid_trains_the_variance_only_through_the_vlb_term(prediction_type, variance_type):
    """L_hybrid = L_simple + λ T L_t with the mean detached in L_t (iDDPM §3.1): the mean's
    gradient is L_simple's alone, the variance's gradient is λ T L_t's alone."""
    scheduler = DDPMScheduler(prediction_type=prediction_type, variance_type=variance_type, clip_sample=False)
    x0, noise, t = _batch(3)
    mean_param = torch.zeros_like(x0, requires_grad=True)
    var_param = torch.full_like(x0, 0.1 if variance_type == "learned_range" else -6.0, requires_grad=True)
    base = _perfect_model(scheduler, x0, noise)

    def model(x_t, s):
        return torch.cat([base(x_t, s) + 0.3 + mean_param, var_param], dim=1)

    def grads(loss_type):
        loss = training_losses(model, scheduler, x0, loss_type, t=t, noise=noise).sum()
        return torch.autograd.grad(loss, [mean_param, var_param], allow_unused=True), loss

    (g_mean_h, g_var_h), hybrid = grads("hybrid")
    (g_mean_s, g_var_s), simple = grads("simple")
    (g_mean_v, g_var_v), vlb = grads("vlb")
    torch.testing.assert_close(hybrid, simple + HYBRID_LAMBDA * vlb)
    torch.testing.assert_close(g_mean_h, g_mean_s)
    assert g_var_s is None or g_var_s.abs().max() == 0
    torch.testing.assert_close(g_var_h, HYBRID_LAMBDA * g_var_v)
    assert g_var_h.abs().max() > 0 and g_mean_v.abs().max() > 0


@pytest.mark.parametrize("loss_type", ["simple", "vlb", "hybrid"])
def test_losses_draw_t_and_noise_from_the_generator(loss_type):
    scheduler = DDPMScheduler(variance_type="learned_range")
    x0 = torch.rand(8, 3, 4, 4) * 2 - 1

    def model(x_t, t):
        return torch.cat([0.5 * x_t, torch.zeros_like(x_t)], dim=1)

    a = training_losses(model, scheduler, x0, loss_type, generator=torch.Generator().manual_seed(5))
    b = training_losses(model, scheduler, x0, loss_type, generator=torch.Generator().manual_seed(5))
    c = training_losses(model, scheduler, x0, loss_type, generator=torch.Generator().manual_seed(6))
    assert a.shape == (8,) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_discretized_decoder_gradients_are_finite_far_from_the_mean():
    """Bins many standard deviations from the mean must still give finite gradients (a
    NaN from an unused branch of torch.where would poison L_vlb training)."""
    x = torch.linspace(-1, 1, 256, dtype=torch.float64).repeat(5)
    means = torch.tensor([-2.2, -0.5, 0.0, 0.7, 2.4], dtype=torch.float64).repeat_interleave(256)
    means.requires_grad_()
    log_scales = torch.full_like(x, -4.0, requires_grad=True)
    logp = discretized_gaussian_log_likelihood(x, means, log_scales)
    grad_means, grad_scales = torch.autograd.grad(logp.sum(), [means, log_scales])
    assert torch.isfinite(logp).all() and logp.min() < -1000
    assert torch.isfinite(grad_means).all() and torch.isfinite(grad_scales).all()


def test_vlb_terms_progress_bar(capsys):
    scheduler = DDPMScheduler(num_train_timesteps=20, clip_sample=False)
    x0 = torch.rand(4, 2, dtype=torch.float64)

    def model(x, t):
        return torch.zeros_like(x)

    quiet = vlb_terms(model, scheduler, x0, decoder="continuous", generator=torch.Generator().manual_seed(0))
    assert "L_vlb terms" not in capsys.readouterr().err
    shown = vlb_terms(
        model, scheduler, x0, decoder="continuous", generator=torch.Generator().manual_seed(0), progress=True
    )
    assert "L_vlb terms" in capsys.readouterr().err
    assert torch.equal(quiet.total, shown.total)


def _reference_bits_per_dim_fixed_large(eps_model, x0, noises):
    """L_vlb in bits/dim per example as Ho et al.'s diffusion_utils_2.py and improved-diffusion's
    GaussianDiffusion compute it for fixed_large, written here in numpy from their formulas:
    the model's log variance is log(append(posterior_variance[1], betas[1:])), so β̃_2 at the
    first step (docs/math.md §4); their exact-CDF equivalent of the discretised decoder (scipy)."""
    from scipy.stats import norm

    betas = np.linspace(1e-4, 0.02, T)
    ac = np.cumprod(1 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    model_logvar = np.log(np.append(post_var[1], betas[1:]))
    coef_x0, coef_xt = betas * np.sqrt(ac_prev) / (1 - ac), (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac)
    x0 = x0.numpy()
    total = np.zeros(x0.shape[0])
    for t in range(T):
        x_t = np.sqrt(ac[t]) * x0 + np.sqrt(1 - ac[t]) * noises[t].numpy()
        pred_x0 = np.sqrt(1 / ac[t]) * x_t - np.sqrt(1 / ac[t] - 1) * eps_model(x_t, t)
        mean = coef_x0[t] * pred_x0 + coef_xt[t] * x_t
        if t == 0:
            std = np.exp(0.5 * model_logvar[0])
            upper = np.where(x0 > 0.999, np.inf, x0 + 1 / 255)
            lower = np.where(x0 < -0.999, -np.inf, x0 - 1 / 255)
            nats = -np.log(norm.cdf((upper - mean) / std) - norm.cdf((lower - mean) / std))
        else:
            true_mean = coef_x0[t] * x0 + coef_xt[t] * x_t
            lv1, lv2 = post_logvar[t], model_logvar[t]
            nats = 0.5 * (lv2 - lv1 + np.exp(lv1 - lv2) + (true_mean - mean) ** 2 * np.exp(-lv2) - 1)
        total += nats.reshape(len(x0), -1).mean(1) / np.log(2)
    mean_T = np.sqrt(ac[-1]) * x0  # the prior term L_T
    prior = 0.5 * (-np.log(1 - ac[-1]) + (1 - ac[-1]) + mean_T**2 - 1)
    return total + prior.reshape(len(x0), -1).mean(1) / np.log(2)


def test_fixed_large_bits_per_dim_equal_ho_et_al_convention():
    """Our bits/dim of the same model, data and noise equal the reference computation of
    Ho et al.'s fixed_large convention (β̃_2 in the decoder), term by term summed."""
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 256, (3, 2, 3, 3), generator=g).double() / 127.5 - 1  # 8-bit images
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0  # both edge bins

    def eps_model(x_t, t):  # any deterministic function of (x_t, t) serves
        return 0.8 * x_t + 0.05 * np.sin(t / 50.0)

    scheduler = DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    noise_g = torch.Generator().manual_seed(3)
    noises = {t: torch.randn(x0.shape, generator=noise_g, dtype=torch.float64) for t in range(T - 1, -1, -1)}
    expected = _reference_bits_per_dim_fixed_large(eps_model, x0, noises)

    def model_fn(x_t, t):
        return torch.from_numpy(eps_model(x_t.numpy(), t[0].item()))

    ours = vlb_terms(model_fn, scheduler, x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        bits_per_dim(ours.total, x0[0].numel()), torch.from_numpy(expected), rtol=1e-9, atol=0
    )


def test_training_losses_never_clip_and_the_gradient_reaches_every_element():
    """With clip_sample on, the L_vlb term of training is still the unclipped one (docs/math.md §5),
    so an element whose x̂_0 lies outside [−1, 1] gets a gradient."""
    scheduler = DDPMScheduler(prediction_type="sample", variance_type="fixed_small", clip_sample=True)
    x0 = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([10])
    prediction = torch.tensor([[[[1.7, 0.2], [-2.5, 0.4]]]], dtype=torch.float64, requires_grad=True)
    loss = training_losses(lambda x_t, s: prediction, scheduler, x0, "vlb", t=t, noise=torch.zeros_like(x0))
    loss.sum().backward()
    assert (prediction.grad != 0).all(), prediction.grad  # 1.7 and −2.5 included
    unclipped = vlb_term(scheduler, prediction.detach(), x0, scheduler.add_noise(x0, x0, t), t, clip=False)
    clipped = vlb_term(scheduler, prediction.detach(), x0, scheduler.add_noise(x0, x0, t), t)
    torch.testing.assert_close(loss.detach(), bits_per_dim(T * unclipped, 4))
    assert clipped.item() < unclipped.item()  # clipping would have changed the term
