"""The float64 tables against a reference written here from docs/math.md §1–2 in 40-digit
arithmetic (mpmath): every table to 1e-12 relative."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch

from schedulers import DDIMScheduler, DDPMScheduler

mp.mp.dps = 40
T = 1000
RTOL = 1e-12


def reference_betas(schedule: str, n: int = T, start: float = 1e-4, end: float = 0.02) -> list:
    """docs/math.md §1, in mpmath."""
    if schedule == "linear":
        return [mp.mpf(start) + (mp.mpf(end) - start) * i / (n - 1) for i in range(n)]
    if schedule == "scaled_linear":
        a, b = mp.sqrt(start), mp.sqrt(end)
        return [(a + (b - a) * i / (n - 1)) ** 2 for i in range(n)]
    if schedule == "sigmoid":
        return [
            mp.mpf(start) + (mp.mpf(end) - start) / (1 + mp.exp(-(-6 + mp.mpf(12) * i / (n - 1))))
            for i in range(n)
        ]
    # cosine: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) π/2), β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999)
    f = [mp.cos((mp.mpf(i) / n + mp.mpf("0.008")) / mp.mpf("1.008") * mp.pi / 2) ** 2 for i in range(n + 1)]
    return [min(1 - f[i + 1] / f[i], mp.mpf("0.999")) for i in range(n)]


def reference_chain(betas: list, chain: list[int]) -> dict[str, list]:
    """ᾱ, β', β̃' and μ̃'s coefficients along a descending chain (docs/math.md §1, §2, §4)."""
    alpha_bar, acc = [], mp.mpf(1)
    for b in betas:
        acc *= 1 - b
        alpha_bar.append(acc)
    out = {k: [] for k in ("alpha_bar", "beta", "post_var", "c0", "ct")}
    for i, t in enumerate(chain):
        a = alpha_bar[t]
        a_prev = alpha_bar[chain[i + 1]] if i + 1 < len(chain) else mp.mpf(1)
        beta = 1 - a / a_prev
        out["alpha_bar"].append(a)
        out["beta"].append(beta)
        out["post_var"].append((1 - a_prev) / (1 - a) * beta)
        out["c0"].append(mp.sqrt(a_prev) * beta / (1 - a))
        out["ct"].append(mp.sqrt(1 - beta) * (1 - a_prev) / (1 - a))
    return out


def assert_close(actual: torch.Tensor, expected: list) -> None:
    expected = torch.tensor([float(v) for v in expected], dtype=torch.float64)
    torch.testing.assert_close(actual.to(torch.float64), expected, rtol=RTOL, atol=0)


SCHEDULES = ["linear", "scaled_linear", "sigmoid", "cosine"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_forward_tables(schedule):
    scheduler = DDPMScheduler(beta_schedule=schedule, beta_start=1e-4, beta_end=0.02)
    betas = reference_betas(schedule)
    ref = reference_chain(betas, list(range(T - 1, -1, -1)))
    assert_close(scheduler.betas, betas)
    assert_close(scheduler.alphas_cumprod.flip(0), ref["alpha_bar"])
    t = torch.arange(T)
    one, zero = torch.ones(T, 1, dtype=torch.float64), torch.zeros(T, 1, dtype=torch.float64)
    # x_t = √ᾱ x_0 + √(1−ᾱ) ε, read off with x_0, ε ∈ {0, 1}
    assert_close(scheduler.add_noise(one, zero, t)[:, 0], [mp.sqrt(a) for a in reversed(ref["alpha_bar"])])
    assert_close(
        scheduler.add_noise(zero, one, t)[:, 0], [mp.sqrt(1 - a) for a in reversed(ref["alpha_bar"])]
    )
    # v = √ᾱ ε − √(1−ᾱ) x_0
    assert_close(
        scheduler.get_velocity(one, zero, t)[:, 0], [-mp.sqrt(1 - a) for a in reversed(ref["alpha_bar"])]
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_posterior_tables(schedule):
    scheduler = DDPMScheduler(beta_schedule=schedule)
    ref = reference_chain(reference_betas(schedule), list(range(T - 1, -1, -1)))
    t = torch.arange(T - 1, -1, -1)
    one, zero = torch.ones(T, 1, dtype=torch.float64), torch.zeros(T, 1, dtype=torch.float64)
    c0, var, log_var = scheduler.q_posterior(one, zero, t)
    ct, _, _ = scheduler.q_posterior(zero, one, t)
    assert_close(c0[:, 0], ref["c0"])
    assert_close(ct[:, 0], ref["ct"])
    assert_close(var[:-1, 0], ref["post_var"][:-1])
    assert var[-1, 0] == 0  # β̃_1 = 0 ...
    assert_close(
        log_var[:, 0], [mp.log(v) for v in ref["post_var"][:-1]] + [mp.log(ref["post_var"][-2])]
    )  # §2


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_large", "fixed_small_log", "fixed_large_log"]
)
def test_reverse_variances(variance_type):
    scheduler = DDPMScheduler(variance_type=variance_type)
    ref = reference_chain(reference_betas("linear"), list(range(T - 1, -1, -1)))
    t = torch.arange(T - 1, -1, -1)
    x = torch.zeros(T, 1, dtype=torch.float64)
    _, variance, log_variance, _ = scheduler.p_mean_variance(x, x, t)
    if variance_type.startswith(
        "fixed_large"
    ):  # σ² = β_t, but β̃_2 at t = 1 as Ho et al.'s code (docs/math.md §4)
        expected = [*ref["beta"][:-1], ref["post_var"][-2]]
    else:  # σ² = β̃_t, with β̃_2 standing in for β̃_1 = 0 (docs/math.md §2)
        expected = [*ref["post_var"][:-1], ref["post_var"][-2]]
    assert_close(variance[:, 0], expected)
    assert_close(log_variance[:, 0], [mp.log(v) for v in expected])


@pytest.mark.parametrize(
    ("spacing", "n"), [("leading", 50), ("trailing", 50), ("linspace", 37), ("trailing", 1)]
)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_respaced_step(spacing, n, variance_type):
    """Respacing (docs/math.md §4): β'_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i+1}}; x_prev = μ̃'(x_t, x_0) + σ' z, no
    noise at the chain's last step. Read off from `step` with prediction_type="sample"."""
    scheduler = DDPMScheduler(
        timestep_spacing=spacing, prediction_type="sample", clip_sample=False, variance_type=variance_type
    )
    scheduler.set_timesteps(n)
    chain = scheduler.timesteps.tolist()
    ref = reference_chain(reference_betas("linear"), chain)
    x0, x_t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-1.1]], dtype=torch.float64)
    for i, t in enumerate(chain):
        z = torch.randn(1, 1, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        out = scheduler.step(x0, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
        var = ref["post_var"][i] if variance_type == "fixed_small" else ref["beta"][i]
        std = mp.sqrt(var) if i + 1 < len(chain) else 0
        expected = ref["c0"][i] * mp.mpf(0.3) + ref["ct"][i] * mp.mpf(-1.1) + std * mp.mpf(z.item())
        assert_close(out[0], [expected])


def test_trained_betas_and_ddim_share_the_tables():
    betas = [float(b) for b in reference_betas("cosine", 200)]
    ddpm = DDPMScheduler(num_train_timesteps=200, trained_betas=betas)
    ddim = DDIMScheduler(num_train_timesteps=200, trained_betas=betas)
    ref = reference_chain(reference_betas("cosine", 200), list(range(199, -1, -1)))
    assert_close(ddpm.alphas_cumprod.flip(0), ref["alpha_bar"])
    assert torch.equal(ddpm.alphas_cumprod, ddim.alphas_cumprod)
