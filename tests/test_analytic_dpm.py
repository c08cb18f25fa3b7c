"""Analytic-DPM (docs/math.md §8; Bao et al. 2022) against analytic truth: on Gaussian data the exact
Γ_t and the exact reverse conditionals are known, so the optimal variance is too."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import GaussianOracle

from ddpm_pipelines import DDPMPipeline, MLPModel, UNetModel
from ddpm_pipelines.analytic import estimate_gamma
from ddpm_pipelines.losses import prior_kl, vlb_term
from schedulers import DDIMScheduler, DDPMScheduler

M, S = 0.3, 0.5  # the data: x_0 ~ N(M, S²) in every dimension


def exact_gamma(alphas_cumprod: torch.Tensor, s: float = S) -> torch.Tensor:
    """Γ_t = E‖E[ε | x_t]‖²/d = (1 − ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t) (docs/math.md §6), (T,)."""
    return (1 - alphas_cumprod) / (alphas_cumprod * s * s + 1 - alphas_cumprod)


def _marginal_variance(alpha_bar: float, s: float = S) -> float:
    """v = Var(x_t) = ᾱ s² + 1 − ᾱ; ᾱ = 1 is the data itself."""
    return alpha_bar * s * s + 1 - alpha_bar


def _chain_alpha_bars(scheduler) -> list[tuple[float, float]]:
    """(ᾱ_t, ᾱ_prev) along the scheduler's sampling chain; ᾱ = 1 after its last step."""
    ab = scheduler.alphas_cumprod.tolist()
    chain = scheduler.timesteps.tolist()
    return [(ab[t], ab[chain[i + 1]] if i + 1 < len(chain) else 1.0) for i, t in enumerate(chain)]


def _analytic(scheduler_class=DDPMScheduler, **kwargs):
    config = dict(variance_type="analytic", clip_sample=False)
    return scheduler_class(
        **{**config, **kwargs, "analytic_gamma": exact_gamma(DDPMScheduler().alphas_cumprod)}
    )


@pytest.mark.parametrize(("spacing", "k"), [("leading", 10), ("trailing", 25), ("linspace", 7)])
def test_ddpm_analytic_variance_is_the_exact_reverse_conditional_variance(spacing, k):
    """With the exact Γ, σ*² of each step t → s of a respaced chain equals Var(x_s | x_t) of the
    Gaussian data by Bayes' rule: v_s − (ᾱ_t/ᾱ_s) v_s²/v_t; the last step's is Var(x_0 | x_t)."""
    scheduler = _analytic(timestep_spacing=spacing)
    scheduler.set_timesteps(k)
    x = torch.zeros(k, 1, dtype=torch.float64)
    _, variance, _, _ = scheduler.p_mean_variance(x, x, scheduler.timesteps, respaced=True)
    expected = []
    for a_t, a_s in _chain_alpha_bars(scheduler):
        v_s, v_t = _marginal_variance(a_s), _marginal_variance(a_t)
        expected.append(v_s - (a_t / a_s) * v_s**2 / v_t)
    torch.testing.assert_close(variance[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_ddim_analytic_noise_is_the_exact_conditional_std_of_ddim_forward_process():
    """DDIM η = 0: x_s = √ᾱ_s x_0 + √(1−ᾱ_s) ε with the same ε as x_t, so Var(x_s | x_t) =
    v_s − Cov(x_s, x_t)²/v_t, Cov = √(ᾱ_s ᾱ_t) s² + √((1−ᾱ_s)(1−ᾱ_t)). Read the step's noise
    scale off two draws; none at the last step."""
    scheduler = _analytic(DDIMScheduler, eta=0.0, prediction_type="sample")
    scheduler.set_timesteps(10)
    x_t, x0 = torch.full((1, 1), 0.4, dtype=torch.float64), torch.full((1, 1), 0.1, dtype=torch.float64)
    for (a_t, a_s), t in zip(_chain_alpha_bars(scheduler), scheduler.timesteps.tolist(), strict=True):
        out = [
            scheduler.step(x0, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample for i in (1, 2)
        ]
        z = [
            torch.randn(1, 1, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in (1, 2)
        ]
        std = ((out[0] - out[1]) / (z[0] - z[1])).item()
        v_s, v_t = _marginal_variance(a_s), _marginal_variance(a_t)
        cov = math.sqrt(a_s * a_t) * S * S + math.sqrt((1 - a_s) * (1 - a_t))
        expected = math.sqrt(v_s - cov**2 / v_t) if t != scheduler.timesteps[-1] else 0.0
        assert std == pytest.approx(expected, rel=1e-9, abs=1e-12), t


def test_analytic_variance_is_clipped_to_bao_et_al_bounds():
    """Theorem 2: Γ outside [0, 1] gives the bounds λ² and λ² + (√(β̄_t/α_t) − √(β̄_s − λ²))²; for
    data in [−r, r] (clip_sample) at most λ² + (√ᾱ_s − √(β̄_s − λ²)·√(ᾱ_t/β̄_t))² r²."""
    T = 1000
    ab = DDPMScheduler().alphas_cumprod
    x = torch.zeros(T, 1, dtype=torch.float64)
    t = torch.arange(T)
    ab_s = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    lam = (1 - ab_s) / (1 - ab) * (1 - ab / ab_s)  # β̃_t
    gap = ((1 - ab) * ab_s / ab).sqrt() - (1 - ab_s - lam).clamp(min=0).sqrt()

    def variance(gamma, **kwargs):
        scheduler = DDPMScheduler(variance_type="analytic", analytic_gamma=gamma, **kwargs)
        return scheduler.p_mean_variance(x, x, t)[1][:, 0]

    torch.testing.assert_close(
        variance(torch.full((T,), 1.5), clip_sample=False), lam, rtol=1e-12, atol=1e-300
    )
    torch.testing.assert_close(variance(torch.zeros(T), clip_sample=False), lam + gap**2, rtol=1e-12, atol=0)
    r = 0.05
    bounded = lam + (ab_s.sqrt() - (1 - ab_s - lam).clamp(min=0).sqrt() * (ab / (1 - ab)).sqrt()) ** 2 * r * r
    clipped = variance(torch.zeros(T), clip_sample=True, clip_sample_range=r)
    torch.testing.assert_close(clipped, torch.minimum(lam + gap**2, bounded), rtol=1e-9, atol=0)
    assert (clipped < lam + gap**2).sum() > 100  # the data bound binds at many steps


GH_NODES = torch.tensor([-math.sqrt(3.0), 0.0, math.sqrt(3.0)], dtype=torch.float64)
GH_WEIGHTS = torch.tensor([1 / 6, 2 / 3, 1 / 6], dtype=torch.float64)


def expected_chain_bound(scheduler, k: int) -> float:
    """E[L_vlb] of the k-step chain in nats per dimension for the oracle, exactly: every term is a
    quadratic in (x_0, x_t), so a 3×3 Gauss–Hermite rule over x_0 = M + S u, x_t = √ᾱ x_0 + √(1−ᾱ) v
    is exact."""
    scheduler.set_timesteps(k)
    oracle = GaussianOracle(scheduler.alphas_cumprod, M, S)
    u, v = torch.meshgrid(GH_NODES, GH_NODES, indexing="ij")
    w = torch.outer(GH_WEIGHTS, GH_WEIGHTS).reshape(-1)
    x0 = (M + S * u).reshape(-1, 1)
    chain = scheduler.timesteps.tolist()
    total = (w * prior_kl(scheduler, x0, chain[0])).sum()
    for t in chain:
        a = scheduler.alphas_cumprod[t]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * v.reshape(-1, 1)
        tt = torch.full((9,), t)
        term = vlb_term(scheduler, oracle(x_t, tt), x0, x_t, tt, "continuous", respaced=True)
        total = total + (w * term).sum()
    return total.item()


@pytest.mark.parametrize("k", [10, 25, 100])
def test_the_k_step_bound_with_the_analytic_variance_is_below_both_fixed_ones(k):
    exact_nll = 0.5 * math.log(2 * math.pi * math.e * S * S)
    bounds = {
        kind: expected_chain_bound(DDPMScheduler(variance_type=kind, clip_sample=False), k)
        for kind in ("fixed_small", "fixed_large")
    }
    analytic = expected_chain_bound(_analytic(), k)
    assert exact_nll <= analytic < min(bounds.values()), (analytic, bounds)


class _OracleModel(MLPModel):
    """An MLPModel whose output is the Gaussian oracle's ε (the pipeline wants a real model)."""

    def __init__(self, oracle: GaussianOracle):
        super().__init__(in_features=2, hidden_features=4, num_blocks=1, time_embedding_dim=4)
        self.oracle = oracle

    def forward(self, sample, timestep):
        return SimpleNamespace(sample=self.oracle(sample, timestep))


def test_estimate_gamma_of_the_oracle_is_the_exact_gamma():
    """The Monte-Carlo estimate from 4,000 data points lies within 5 standard errors of the exact
    Γ_t at every timestep (Var ‖ε̂‖²/d = 2Γ_t² for 2-D Gaussian ε̂)."""
    scheduler = DDPMScheduler(num_train_timesteps=100, clip_sample=False)
    pipe = DDPMPipeline(_OracleModel(GaussianOracle(scheduler.alphas_cumprod, M, S)).double(), scheduler)
    g = torch.Generator().manual_seed(0)
    n = 4000
    data = M + S * torch.randn(n, 2, generator=g, dtype=torch.float64)
    gamma = estimate_gamma(pipe, data, batch_size=1500, generator=g)
    exact = exact_gamma(scheduler.alphas_cumprod)
    assert gamma.shape == (100,) and gamma.dtype == torch.float64
    assert ((gamma - exact).abs() < 5 * (2 * exact**2 / n).sqrt()).all(), (gamma - exact).abs().max()


def test_estimate_gamma_checks_the_data():
    pipe = DDPMPipeline(MLPModel(hidden_features=4, num_blocks=1, time_embedding_dim=4), DDPMScheduler())
    with pytest.raises(ValueError, match=r"data must be a tensor \(N, 2\) for this model; got \(5, 3\)"):
        estimate_gamma(pipe, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        estimate_gamma(pipe, torch.zeros(5, 2), batch_size=0)


def test_analytic_gamma_is_saved_and_loaded_with_the_pipeline(tmp_path):
    gamma = exact_gamma(DDPMScheduler().alphas_cumprod)
    scheduler = DDPMScheduler(variance_type="analytic", analytic_gamma=gamma.tolist())
    unet = UNetModel.from_preset("tiny-8")
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.save_pretrained(tmp_path / "pipe")
    back = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert back.scheduler.config.variance_type == "analytic"
    torch.testing.assert_close(torch.tensor(back.scheduler.config.analytic_gamma, dtype=torch.float64), gamma)


def test_a_learned_variance_model_serves_the_analytic_variance():
    """Its variance channels are set aside: the step equals the same model's mean with the
    analytic σ, and a model with any other number of channels is still refused."""
    unet = UNetModel.from_preset("tiny-8", out_channels=2)
    scheduler = DDPMScheduler(variance_type="analytic", analytic_gamma=[0.5] * 1000)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    assert images.images.shape == (2, 1, 8, 8) and torch.isfinite(images.images).all()
    x = torch.randn(2, 1, 8, 8)
    out = torch.randn(2, 2, 8, 8)
    scheduler.set_timesteps(3)
    t = int(scheduler.timesteps[0])
    with_variance = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    alone = scheduler.step(out[:, :1], t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(with_variance, alone)
    with pytest.raises(ValueError, match=r"model_output has shape \(2, 3, 8, 8\)"):
        scheduler.step(torch.randn(2, 3, 8, 8), t, x)
    with pytest.raises(ValueError, match="the model outputs 3 channels for 1 input channels"):
        DDPMPipeline(unet=UNetModel.from_preset("tiny-8", out_channels=3), scheduler=scheduler)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"variance_type='analytic' needs analytic_gamma.*ddpm_pipelines\.analytic\.estimate_gamma"),
        ({"analytic_gamma": [0.5] * 999}, r"analytic_gamma has shape \(999,\); .* shape \(1000,\)"),
        ({"analytic_gamma": [0.5] * 999 + [-0.1]}, r"analytic_gamma\[999\]=-0\.1 must be finite and ≥ 0"),
        ({"analytic_gamma": [float("nan")] * 1000}, r"analytic_gamma\[0\]=nan must be finite and ≥ 0"),
    ],
)
@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_analytic_gamma_errors(scheduler_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        scheduler_class(variance_type="analytic", **kwargs)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_analytic_clip_pixels_limits_the_noise_before_the_last_step_only(scheduler_class):
    """With analytic_clip_pixels = y, the noise of the chain's second-to-last step is at most
    E|σ z| ≤ y · 2/255 (σ ≤ y · (2/255)/√(2/π)); every other step, and the likelihood's
    variance, are the unclipped analytic ones."""
    y = 0.5
    cap = y * (2 / 255) / math.sqrt(2 / math.pi)
    schedulers = [
        _analytic(scheduler_class, prediction_type="sample", analytic_clip_pixels=c) for c in (None, y)
    ]
    x_t, x0 = torch.full((1, 1), 0.4, dtype=torch.float64), torch.full((1, 1), 0.1, dtype=torch.float64)

    def noise_std(scheduler, t):
        out = [
            scheduler.step(x0, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample for i in (1, 2)
        ]
        z = [
            torch.randn(1, 1, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in (1, 2)
        ]
        return ((out[0] - out[1]) / (z[0] - z[1])).item()

    for scheduler in schedulers:
        scheduler.set_timesteps(10)
    chain = schedulers[0].timesteps.tolist()
    for t in chain[:-1]:
        free, clipped = noise_std(schedulers[0], t), noise_std(schedulers[1], t)
        if t == chain[-2]:
            assert free > cap and clipped == pytest.approx(cap, rel=1e-9)
        else:
            assert clipped == pytest.approx(free, rel=1e-12)
    x = torch.zeros(1, 1, dtype=torch.float64)
    for scheduler in schedulers:
        scheduler.set_timesteps(10)
    variances = [s.p_mean_variance(x, x, chain[-2], respaced=True)[1] for s in schedulers]
    torch.testing.assert_close(variances[0], variances[1], rtol=0, atol=0)


@pytest.mark.parametrize("value", [0, -1.0])
def test_analytic_clip_pixels_must_be_positive(value):
    with pytest.raises(ValueError, match=rf"analytic_clip_pixels={value!r} must be > 0 \(or None: no clip\)"):
        DDPMScheduler(analytic_clip_pixels=value)
