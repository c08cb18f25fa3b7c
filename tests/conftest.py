"""Shared test helpers: the option lists of DESIGN.md and the Gaussian-data oracle of
MATH.md §6."""

from __future__ import annotations

import torch

# The allowed choices, as DESIGN.md lists them (not imported from the library: the tests
# check the library against the design).
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2", "sigmoid")
VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "posterior_mean")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class GaussianOracle:
    """The optimal model for data x_0 ~ N(m, s² I) (MATH.md §6), in any parameterisation.

    E[ε | x_t] = √(1−ᾱ_t) (x_t − √ᾱ_t m) / (ᾱ_t s² + 1 − ᾱ_t); the other outputs follow
    from MATH.md §3 with ᾱ_{t−1} from `alphas_cumprod` (full T-step chain).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, m, s, prediction_type: str = "epsilon"):
        self.ab = alphas_cumprod.to(torch.float64)
        self.m = torch.as_tensor(m, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)
        self.prediction_type = prediction_type

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        shape = (-1,) + (1,) * (x_t.dim() - 1) if t.dim() else ()
        a = self.ab[t].reshape(shape)
        a_prev = torch.where(t > 0, self.ab[(t - 1).clamp(min=0)], torch.ones_like(self.ab[t])).reshape(shape)
        x = x_t.to(torch.float64)
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.m) / (a * self.s**2 + 1 - a)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "v_prediction":
            out = a.sqrt() * eps - (1 - a).sqrt() * x0
        else:  # posterior_mean, MATH.md §2
            beta = 1 - a / a_prev
            out = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x
        return out.to(x_t.dtype)
