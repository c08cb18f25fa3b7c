"""DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2; docs/math.md §4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

from .base import DiffusionScheduler, PredictionType, TimestepSpacing, VarianceType, noise_like
from .tables import BetaSchedule


class DDPMScheduler(DiffusionScheduler):
    """The DDPM reverse process p(x_{t−1} | x_t) = N(μ_θ, σ_t² I), with diffusers' interface.

    Args:
        num_train_timesteps: T, the number of diffusion steps the model was trained with.
        beta_start, beta_end: the ends of the linear, scaled_linear and sigmoid schedules.
        beta_schedule: "linear", "scaled_linear", "cosine" (saved as diffusers'
            "squaredcos_cap_v2"), "squaredcos_cap_v2" or "sigmoid" (docs/math.md §1).
        trained_betas: explicit β_1..β_T, each in (0, 1); overrides the schedule.
        variance_type: σ_t² = β̃_t ("fixed_small", "fixed_small_log"), β_t ("fixed_large",
            "fixed_large_log"; β̃_2 at the first step, as Ho et al.'s code), from the
            network: log σ² ("learned") or iDDPM's interpolation ("learned_range"), where
            the model outputs twice the channels, or Analytic-DPM's optimal variance of a
            trained model ("analytic", Bao et al. 2022; docs/math.md §8).
        clip_sample: clip x̂_0 to [−clip_sample_range, clip_sample_range].
        prediction_type: what the network predicts: "epsilon", "sample" (x_0),
            "v_prediction" or "posterior_mean" (μ̃ itself) (docs/math.md §3).
        timestep_spacing: how `set_timesteps(n)` picks n of the T steps: "leading",
            "trailing" or "linspace" (Lin et al. 2023, Table 2).
        steps_offset: added to "leading" timesteps, as in diffusers.
        analytic_gamma: Γ_t = E‖ε_θ(x_t, t)‖²/d at each of the T train timesteps, for
            variance_type="analytic"; estimate it with `ddpm_pipelines.analytic.estimate_gamma`.
            With clip_sample on, the analytic variance also uses that the data lie in
            [−clip_sample_range, clip_sample_range].
        analytic_clip_pixels: with "analytic", when sampling, the noise of the step before
            the chain's last (which the noiseless last step keeps) is limited to
            E|σz| ≤ y · 2/255, y = analytic_clip_pixels levels of 8-bit data in [−1, 1], as
            Bao et al. do for sample quality (e.g. 2 for images); None (the default): no limit.
            The likelihood (`p_mean_variance`) is not clipped.
        thresholding, dynamic_thresholding_ratio, sample_max_value, rescale_betas_zero_snr:
            accepted for diffusers' configs; only the off value is allowed (thresholding and
            rescale_betas_zero_snr False; the other two act only with thresholding on, so
            any value of theirs is off). Turning one on raises ValueError.
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
        analytic_gamma: Sequence[float] | None = None,
        analytic_clip_pixels: float | None = None,
        *,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._setup(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, variance_type,
            prediction_type, clip_sample_range, timestep_spacing, steps_offset, analytic_gamma,
            analytic_clip_pixels,
            thresholding=thresholding, rescale_betas_zero_snr=rescale_betas_zero_snr,
        )  # fmt: skip

    def _is_last_step(self, timestep: int | torch.Tensor) -> bool:
        """Whether `timestep` is known on the host to be the chain's last step. A device
        tensor is never read (no sync): its row's σ_t = 0 adds no noise, but a draw is made."""
        if torch.is_tensor(timestep) and (timestep.dim() != 0 or timestep.device.type != "cpu"):
            return False
        return int(timestep) == self._last_timestep

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I) from x_t = `sample` at `timestep` (docs/math.md §4).

        The mean is μ̃_t(x_t, x̂_0) with x̂_0 from the model output (clipped if configured);
        no noise is added at the chain's last step. Returns `.prev_sample` and
        `.pred_original_sample`; the inputs are never changed.
        """
        c = self._coefficients("sample", timestep, sample)
        prediction, variance_output = self.split_model_output(model_output, sample)
        x0 = self._clip(self._predict_x0(prediction, sample, c))  # (B, C, ...)
        prev_sample = self._posterior_mean(x0, sample, c)  # μ̃_t(x_t, x̂_0)
        if not self._is_last_step(timestep):  # at the last step: no noise, and no draw (as diffusers at t=0)
            kind = self.config.variance_type
            if kind == "analytic":  # σ*_t for DDPM's posterior, λ² = β̃'_t (docs/math.md §8)
                std = self._analytic_noise_std(c, c.posterior_variance)
            elif variance_output is not None:  # σ_t from the network
                std = c.is_not_last * torch.exp(0.5 * self._log_variance(c, variance_output))
            else:  # fixed σ_t, from the table
                std = c.noise_std_small if kind in ("fixed_small", "fixed_small_log") else c.noise_std_large
            prev_sample = torch.addcmul(prev_sample, std, noise_like(sample, generator))
        if not return_dict:
            return prev_sample, x0
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
