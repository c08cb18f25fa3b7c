"""DDIM (Song et al. 2021, eq. 12; docs/math.md §4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from .base import DiffusionScheduler, PredictionType, TimestepSpacing, VarianceType, noise_like
from .tables import BetaSchedule


class DDIMScheduler(DiffusionScheduler):
    """DDIM's step x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z with
    σ = η √β̃_t: η = 0 is deterministic, η = 1 is DDPM's fixed_small step.

    Takes DDPMScheduler's arguments (a learned variance's channels are split off and
    ignored; variance_type="analytic" makes the noise Analytic-DDIM's optimal σ* for the
    step's η, Bao et al. 2022, added at every step but the last; diffusers' thresholding,
    dynamic_thresholding_ratio, sample_max_value and rescale_betas_zero_snr are accepted
    for diffusers' configs, only the off value allowed) and:
        eta: the default η in [0, 1]; `step(..., eta=...)` overrides it, as diffusers'
            DDIMPipeline does.
        set_alpha_to_one: ᾱ after the last step is 1 (True) or ᾱ at timestep 0 (False).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        eta: float = 0.0,
        analytic_gamma: Sequence[float] | None = None,
        analytic_clip_pixels: float | None = None,
        *,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_eta(eta)
        self._setup(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, variance_type,
            prediction_type, clip_sample_range, timestep_spacing, steps_offset, analytic_gamma,
            analytic_clip_pixels,
            thresholding=thresholding, rescale_betas_zero_snr=rescale_betas_zero_snr,
        )  # fmt: skip

    @staticmethod
    def _check_eta(eta: float) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta={eta!r} must lie in [0, 1]")

    def _final_alpha_bar(self) -> float:
        return 1.0 if self.config.set_alpha_to_one else float(self.alphas_cumprod[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float | None = None,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step from x_t = `sample` (Song et al. 2021, eq. 12).

        ε̂ is the model's own noise prediction (docs/math.md §3); with
        `use_clipped_model_output` it is recomputed from the clipped x̂_0.
        """
        eta = self.config.eta if eta is None else eta
        self._check_eta(eta)
        c = self._coefficients("sample", timestep, sample)
        prediction, _ = self.split_model_output(model_output, sample)  # a learned variance is unused
        x0 = self._predict_x0(prediction, sample, c)
        eps = self._predict_epsilon(prediction, sample, c, x0)
        x0 = self._clip(x0)
        if use_clipped_model_output:
            eps = self._epsilon_from_x0(sample, x0, c)
        variance = eta**2 * c.posterior_variance  # σ² = η² (1−ᾱ_{t−1})/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_{t−1})
        direction = (c.one_minus_alpha_bar_prev - variance).clamp(min=0).sqrt()  # √(1 − ᾱ_{t−1} − σ²)
        prev_sample = torch.addcmul(c.sqrt_alpha_bar_prev * x0, direction, eps)
        if self.config.variance_type == "analytic":  # Analytic-DDIM: σ*² for λ² = σ² (docs/math.md §8)
            std = self._analytic_noise_std(c, variance)
            prev_sample = torch.addcmul(prev_sample, std, noise_like(sample, generator))
        elif eta > 0:
            prev_sample = torch.addcmul(prev_sample, variance.sqrt(), noise_like(sample, generator))
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
