"""The β/ᾱ math of docs/math.md §1, §2 and §4, computed once in float64.

Everything a scheduler needs at a timestep is one row of a *chain table*: a float64
tensor of shape (T, len(COLUMNS)) whose row t holds the coefficients of the reverse step
that starts at train timestep t and ends at the next timestep of the chain. The full
chain (every train timestep) serves training and likelihood; a respaced chain (docs/math.md
§4, "fewer steps") serves sampling. Rows of timesteps outside the chain are NaN, so a
step from a timestep the chain does not hold cannot pass unnoticed.

Code index t runs 0..T-1; paper step is t + 1 (docs/math.md, "Notation and conventions").
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch

BetaSchedule = Literal["linear", "scaled_linear", "cosine", "squaredcos_cap_v2", "sigmoid"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)

# iDDPM's cap on the cosine schedule's β (docs/math.md §1).
COSINE_MAX_BETA = 0.999
COSINE_OFFSET = 0.008


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_1..β_T of a named schedule (docs/math.md §1), float64, shape (T,)."""
    T = num_train_timesteps
    if schedule == "linear":  # DDPM: β linear from beta_start to beta_end
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "scaled_linear":  # √β linear (latent diffusion)
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if schedule == "sigmoid":  # GeoDiff: β = start + (end − start) · sigmoid(linspace(−6, 6))
        x = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)
        return torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    if schedule in ("cosine", "squaredcos_cap_v2"):
        # iDDPM eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) · π/2), and
        # β_t = 1 − f(t)/f(t−1), capped at 0.999. cos²a − cos²b = sin(b − a)·sin(b + a)
        # avoids the cancellation of 1 − f(t)/f(t−1) when β is tiny.
        i = torch.arange(T + 1, dtype=torch.float64)
        angle = (i / T + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (math.pi / 2)  # (T+1,)
        a, b = angle[:-1], angle[1:]
        betas = torch.sin(b - a) * torch.sin(b + a) / torch.cos(a) ** 2
        return betas.clamp(max=COSINE_MAX_BETA)
    raise ValueError(f"beta_schedule={schedule!r} is not one of {BETA_SCHEDULES}")


def log_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """log ᾱ_t = Σ_{s≤t} log(1 − β_s) (docs/math.md §1), float64, shape (T,)."""
    return torch.cumsum(torch.log1p(-betas.to(torch.float64)), dim=0)


class Coefficients(NamedTuple):
    """One chain-table row, unpacked; each field broadcasts against the sample."""

    sqrt_alpha_bar: torch.Tensor  # √ᾱ_t
    sqrt_one_minus_alpha_bar: torch.Tensor  # √(1 − ᾱ_t)
    sqrt_recip_alpha_bar: torch.Tensor  # 1/√ᾱ_t
    sqrt_recipm1_alpha_bar: torch.Tensor  # √(1/ᾱ_t − 1)
    sqrt_alpha_bar_prev: torch.Tensor  # √ᾱ_prev (ᾱ at the chain's next timestep)
    one_minus_alpha_bar_prev: torch.Tensor  # 1 − ᾱ_prev
    posterior_mean_coef_x0: torch.Tensor  # √ᾱ_prev β'_t / (1 − ᾱ_t)           (§2)
    posterior_mean_coef_xt: torch.Tensor  # √α'_t (1 − ᾱ_prev) / (1 − ᾱ_t)      (§2)
    posterior_variance: torch.Tensor  # β̃'_t = (1 − ᾱ_prev)/(1 − ᾱ_t) · β'_t   (§2)
    posterior_log_variance_clipped: torch.Tensor  # log β̃'_t, log β̃' of the next row at the end
    log_beta: torch.Tensor  # log β'_t (learned_range's upper end)
    large_log_variance: (
        torch.Tensor
    )  # fixed_large's log σ²: log β'_t, log β̃' of the next row at the end (§4.1)
    noise_std_small: torch.Tensor  # σ_t = √β̃'_t, and 0 at the chain's last step (§4)
    noise_std_large: torch.Tensor  # σ_t = √β'_t, and 0 at the chain's last step (§4)
    is_not_last: torch.Tensor  # 1, or 0 at the chain's last step: no noise there (§4)
    is_second_to_last: torch.Tensor  # 1 at the step whose noise the last (noiseless) step keeps (§8)
    gamma: torch.Tensor  # Γ_t = E‖ε_θ(x_t, t)‖²/d of Analytic-DPM (§8), NaN without an estimate


COLUMNS: tuple[str, ...] = Coefficients._fields


def chain_table(
    log_alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    final_alpha_bar: float = 1.0,
    gamma: torch.Tensor | None = None,
) -> torch.Tensor:
    """The chain table (module docstring) for descending train `timesteps`, float64.

    Respacing (docs/math.md §4): ᾱ is kept at the chain's timesteps and
    β'_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i+1}}; after the last one comes ᾱ_prev = `final_alpha_bar`
    (ᾱ_0 = 1 in the papers). For the full chain β' is β, to float64 rounding. `gamma`:
    Analytic-DPM's Γ at every train timestep (T,), or None.
    """
    T = log_alpha_bar.shape[0]
    S = timesteps.to(device="cpu", dtype=torch.long)  # (n,) descending
    log_ab = log_alpha_bar[S]  # (n,) log ᾱ_t
    final = torch.tensor([math.log(final_alpha_bar)], dtype=torch.float64)
    log_ab_prev = torch.cat([log_ab[1:], final])  # (n,) log ᾱ_prev
    alpha_bar, alpha_bar_prev = log_ab.exp(), log_ab_prev.exp()
    one_minus_ab = -torch.expm1(log_ab)  # 1 − ᾱ_t, without cancellation
    one_minus_ab_prev = -torch.expm1(log_ab_prev)
    log_alpha = log_ab - log_ab_prev  # log α'_t = log(ᾱ_t/ᾱ_prev)
    beta = -torch.expm1(log_alpha)  # β'_t = 1 − α'_t

    # §2: the posterior q(x_prev | x_t, x_0) = N(μ̃, β̃ I).
    post_var = one_minus_ab_prev / one_minus_ab * beta
    post_c0 = alpha_bar_prev.sqrt() * beta / one_minus_ab
    post_ct = (0.5 * log_alpha).exp() * one_minus_ab_prev / one_minus_ab
    # β̃ is 0 at the last step when ᾱ_prev = 1; like iDDPM, use the previous row's β̃ in
    # its log (docs/math.md §2), a variance that only a decoder reads, never the sampler. A
    # one-step chain has no previous row: there β' stands in.
    clipped = post_var.clone()
    clipped[-1] = post_var[-2] if len(S) > 1 else beta[-1]
    post_logvar = clipped.log()

    # fixed_large: σ² = β'_t, but at the chain's last step (a decoder's variance, since no
    # noise is added there) the same stand-in as above, as Ho et al.'s code and iDDPM do
    # (docs/math.md §4), so that bits/dim compare with the papers'.
    large_logvar = beta.log()
    large_logvar[-1] = post_logvar[-1]

    not_last = torch.ones_like(beta)
    not_last[-1] = 0.0
    second_to_last = torch.zeros_like(beta)
    second_to_last[-2:-1] = 1.0  # none in a one-step chain
    columns = {
        "sqrt_alpha_bar": alpha_bar.sqrt(),
        "sqrt_one_minus_alpha_bar": one_minus_ab.sqrt(),
        "sqrt_recip_alpha_bar": (-0.5 * log_ab).exp(),
        "sqrt_recipm1_alpha_bar": torch.expm1(-log_ab).sqrt(),
        "sqrt_alpha_bar_prev": alpha_bar_prev.sqrt(),
        "one_minus_alpha_bar_prev": one_minus_ab_prev,
        "posterior_mean_coef_x0": post_c0,
        "posterior_mean_coef_xt": post_ct,
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_logvar,
        "log_beta": beta.log(),
        "large_log_variance": large_logvar,
        "noise_std_small": not_last * (0.5 * post_logvar).exp(),
        "noise_std_large": not_last * beta.sqrt(),
        "is_not_last": not_last,
        "is_second_to_last": second_to_last,
        "gamma": torch.full_like(beta, math.nan) if gamma is None else gamma.to(torch.float64)[S],
    }
    table = torch.full((T, len(COLUMNS)), math.nan, dtype=torch.float64)
    table[S] = torch.stack([columns[name] for name in COLUMNS], dim=1)  # (n, K)
    return table


def analytic_variance(
    c: Coefficients, lambda_sq: torch.Tensor, data_half_range: float | None
) -> torch.Tensor:
    """Analytic-DPM's optimal reverse variance (docs/math.md §8; Bao et al. 2022, Theorems 1–2):

        σ*² = λ² + (√(β̄_t/α'_t) − √(β̄_prev − λ²))² · (1 − Γ_t),

    for a step whose forward posterior has variance λ² (DDPM: β̃'_t; DDIM: η² β̃'_t), with
    β̄ = 1 − ᾱ and α'_t = ᾱ_t/ᾱ_prev. 1 − Γ_t is clipped to [0, 1] (Theorem 2's bounds) and,
    for data in [−r, r] (r = `data_half_range`, or None for unbounded data), to r² ᾱ_t/β̄_t,
    Theorem 2's bound for bounded data. Shapes broadcast as `c`'s fields do."""
    reach = c.sqrt_one_minus_alpha_bar * c.sqrt_alpha_bar_prev * c.sqrt_recip_alpha_bar  # √(β̄_t/α'_t)
    direction = (c.one_minus_alpha_bar_prev - lambda_sq).clamp(min=0).sqrt()  # √(β̄_prev − λ²)
    missing = (1 - c.gamma).clamp(0, 1)  # 1 − Γ_t, the model's share of E‖ε − ε_θ‖²/d
    if data_half_range is not None:  # ᾱ_t/β̄_t = (√ᾱ_t/√β̄_t)²
        snr = (c.sqrt_alpha_bar / c.sqrt_one_minus_alpha_bar) ** 2
        missing = torch.minimum(missing, data_half_range**2 * snr)
    return lambda_sq + (reach - direction) ** 2 * missing
