"""What DDPMScheduler and DDIMScheduler share: options, tables, timesteps, the forward
process, the posterior and the conversions between parameterisations (docs/math.md §1–4).

The schedulers follow diffusers' scheduler interface (`SchedulerMixin`, `ConfigMixin`):
the constructor's arguments are the configuration, saved as `scheduler_config.json`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .io import write_text_atomically
from .tables import (
    BETA_SCHEDULES,
    Coefficients,
    analytic_variance,
    chain_table,
    log_alphas_cumprod,
    make_betas,
)

logger = logging.getLogger(__name__)

VarianceType = Literal[
    "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range", "analytic"
]
PredictionType = Literal["epsilon", "sample", "v_prediction", "posterior_mean"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)
LEARNED_VARIANCES = ("learned", "learned_range")

# One level of 8-bit data scaled to [−1, 1].
PIXEL_STEP = 2 / 255

# diffusers options the constructors accept, so that diffusers' configs and code load, but
# do not implement: each with the value that means "off". Turning one on is refused rather
# than silently run without it. (diffusers' dynamic_thresholding_ratio and sample_max_value
# act only with thresholding on, so any value of theirs is off.)
UNSUPPORTED_DIFFUSERS_OPTIONS: dict[str, Any] = {"thresholding": False, "rescale_betas_zero_snr": False}


def noise_like(
    sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
) -> torch.Tensor:
    """z ~ N(0, I) shaped like `sample`, drawn exactly as diffusers' `randn_tensor` draws
    it, so that the same generator gives the same samples in both packages."""
    if generator is None or (isinstance(generator, torch.Generator) and generator.device == sample.device):
        return torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {tuple(allowed)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class DiffusionScheduler(SchedulerMixin, ConfigMixin):
    """Base of the schedulers; not used on its own.

    Attributes: `betas`, `alphas`, `alphas_cumprod` (float64, CPU, shape (T,)), `timesteps`
    (descending int64), `num_inference_steps` (None until `set_timesteps`).
    """

    order = 1
    init_noise_sigma = 1.0
    _compatibles: ClassVar[list[str]] = ["DDPMScheduler", "DDIMScheduler"]

    def _setup(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None,
        variance_type: str,
        prediction_type: str,
        clip_sample_range: float,
        timestep_spacing: str,
        steps_offset: int,
        analytic_gamma: Sequence[float] | np.ndarray | torch.Tensor | None,
        analytic_clip_pixels: float | None,
        *,
        thresholding: bool,
        rescale_betas_zero_snr: bool,
    ) -> None:
        """Validate the options and build the float64 tables (docs/math.md §1–2)."""
        given = {"thresholding": thresholding, "rescale_betas_zero_snr": rescale_betas_zero_snr}
        for key, off in UNSUPPORTED_DIFFUSERS_OPTIONS.items():
            if given[key] != off:
                raise ValueError(
                    f"{key}={given[key]!r} is a diffusers option that {type(self).__name__} does not "
                    f"implement; allowed: {off!r}"
                )
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not _is_int(num_train_timesteps) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={num_train_timesteps!r} must be an integer ≥ 1")
        if not _is_int(steps_offset) or steps_offset < 0:
            raise ValueError(f"steps_offset={steps_offset!r} must be an integer ≥ 0")
        if not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range={clip_sample_range!r} must be > 0")
        if trained_betas is not None:
            betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
            if betas.dim() != 1 or len(betas) != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has shape {tuple(betas.shape)}; it must be 1-D with "
                    f"num_train_timesteps={num_train_timesteps} values"
                )
            outside = ~((betas > 0) & (betas < 1))
            if bool(outside.any()):
                i = int(outside.nonzero()[0])
                raise ValueError(
                    f"trained_betas[{i}]={betas[i].item()!r} is outside (0, 1); every β must lie in (0, 1)"
                )
        else:
            check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
            if not 0 < beta_start <= beta_end < 1:
                raise ValueError(
                    f"beta_start={beta_start!r}, beta_end={beta_end!r}: "
                    "they must satisfy 0 < beta_start ≤ beta_end < 1"
                )
            betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
            if beta_schedule == "cosine":  # saved under diffusers' name, so diffusers reads it
                self.register_to_config(beta_schedule="squaredcos_cap_v2")

        self._gamma = self._check_gamma(analytic_gamma, num_train_timesteps, variance_type)  # (T,) or None
        if analytic_clip_pixels is not None and not analytic_clip_pixels > 0:
            raise ValueError(f"analytic_clip_pixels={analytic_clip_pixels!r} must be > 0 (or None: no clip)")

        # §1, float64: β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s.
        self._log_alpha_bar = log_alphas_cumprod(betas)  # (T,)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = self._log_alpha_bar.exp()
        self._train_table = chain_table(
            self._log_alpha_bar, torch.arange(num_train_timesteps - 1, -1, -1), gamma=self._gamma
        )
        self._cast_cache: dict[tuple[str, torch.device, torch.dtype], tuple] = {}
        self._reset_timesteps(torch.arange(num_train_timesteps - 1, -1, -1), None, None)

    @staticmethod
    def _check_gamma(gamma: Any, num_train_timesteps: int, variance_type: str) -> torch.Tensor | None:
        """Analytic-DPM's Γ (docs/math.md §8) as a float64 (T,) tensor; required by "analytic"."""
        if gamma is None:
            if variance_type == "analytic":
                raise ValueError(
                    "variance_type='analytic' needs analytic_gamma, Γ_t = E‖ε_θ(x_t, t)‖²/d at each of "
                    "the num_train_timesteps train timesteps: estimate it with "
                    "ddpm_pipelines.analytic.estimate_gamma"
                )
            return None
        gamma = torch.as_tensor(np.asarray(gamma, dtype=np.float64))
        if gamma.shape != (num_train_timesteps,):
            raise ValueError(
                f"analytic_gamma has shape {tuple(gamma.shape)}; it must hold one value per train "
                f"timestep, shape ({num_train_timesteps},)"
            )
        bad = ~(torch.isfinite(gamma) & (gamma >= 0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"analytic_gamma[{i}]={gamma[i].item()!r} must be finite and ≥ 0")
        return gamma

    # ---- timesteps ---------------------------------------------------------------------

    def _final_alpha_bar(self) -> float:
        """ᾱ after the chain's last step: ᾱ_0 = 1 (docs/math.md §1)."""
        return 1.0

    def _reset_timesteps(
        self, chain: torch.Tensor, num_inference_steps: int | None, device: str | torch.device | None
    ) -> None:
        """Install the descending CPU `chain`; only the public `timesteps` go to `device`, so
        the per-step checks below never read a device tensor."""
        self.timesteps = chain.to(device)
        self.num_inference_steps = num_inference_steps
        self._chain = chain  # CPU, for the per-step checks
        self._chain_set = frozenset(chain.tolist())  # for the per-step check of an int
        self._last_timestep = int(chain[-1])
        self._sample_table = chain_table(self._log_alpha_bar, chain, self._final_alpha_bar(), self._gamma)
        self._cast_cache = {k: v for k, v in self._cast_cache.items() if k[0] != "sample"}

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling chain: `num_inference_steps` spaced by the config's
        `timestep_spacing`, or an explicit descending list of train `timesteps`.

        Respacing keeps ᾱ at the chosen steps (docs/math.md §4); the model is still given the
        original timestep values.
        """
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps needs exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            values = list(timesteps.tolist() if torch.is_tensor(timesteps) else timesteps)
            if not values or not all(_is_int(t) for t in values):
                raise ValueError(f"timesteps={values!r} must be a non-empty list of integers")
            if any(a <= b for a, b in pairwise(values)):
                raise ValueError(f"timesteps={values!r} must be strictly descending")
            if values[0] >= T or values[-1] < 0:
                raise ValueError(f"timesteps={values!r} must lie in [0, {T - 1}] (num_train_timesteps={T})")
            chain, n = np.array(values, dtype=np.int64), None
        else:
            n = num_inference_steps
            if not _is_int(n) or not 1 <= n <= T:
                raise ValueError(
                    f"num_inference_steps={n!r} must be an integer in [1, {T}] (num_train_timesteps={T})"
                )
            chain = self._spaced_timesteps(int(n))
        self._reset_timesteps(torch.from_numpy(chain), n, device)

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """Table 2 of Lin et al. 2023 ("Common diffusion noise schedules ... are flawed"),
        as diffusers spaces them; descending int64, shape (n,)."""
        T, spacing = self.config.num_train_timesteps, self.config.timestep_spacing
        if spacing == "linspace":
            return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
        if spacing == "trailing":
            return (np.round(T - np.arange(n) * (T / n)) - 1).astype(np.int64)
        chain = (np.arange(n) * (T // n))[::-1].astype(np.int64) + self.config.steps_offset  # leading
        if chain[0] >= T:
            raise ValueError(
                f"steps_offset={self.config.steps_offset} pushes the leading timesteps past "
                f"num_train_timesteps={T} with num_inference_steps={n}"
            )
        return chain

    # ---- table look-up -----------------------------------------------------------------

    def _coefficients(self, which: str, t: Any, like: torch.Tensor) -> Coefficients:
        """The chain-table rows at train timesteps `t`, on `like`'s device and dtype, shaped
        to broadcast against `like`: t is an int or a 0-d tensor (one step for the batch) or
        a (B,) tensor (one step per example). No host sync for device tensors."""
        table, rows = self._table(which, like)
        if torch.is_tensor(t) and t.dim() == 0 and t.device.type == "cpu":
            t = int(t)
        if not torch.is_tensor(t):
            self._check_timestep(which, t)
            return rows[t]
        if t.device.type == "cpu":
            self._check_timestep(which, t)
        picked = table.index_select(0, t.reshape(-1).to(table.device))  # (B, K); no .item()
        picked = picked.reshape(*t.shape, *([1] * (like.dim() - t.dim())), picked.shape[-1])
        return Coefficients(*picked.unbind(-1))  # each (B, 1, ..., 1)

    def _table(self, which: str, like: torch.Tensor) -> tuple[torch.Tensor, dict[int, Coefficients]]:
        """The chain table cast to `like`'s device and dtype once, and the rows of the chain's
        timesteps unpacked (so that a step at an int timestep costs no tensor indexing, and
        a new sampling chain unpacks only its own rows)."""
        key = (which, like.device, like.dtype)
        cached = self._cast_cache.get(key)
        if cached is None:
            source = self._sample_table if which == "sample" else self._train_table
            table = source.to(device=like.device, dtype=like.dtype)
            timesteps = self._chain.tolist() if which == "sample" else range(len(table))
            rows = {t: Coefficients(*table[t].unbind(-1)) for t in timesteps}
            cached = self._cast_cache[key] = (table, rows)
        return cached

    def _check_timestep(self, which: str, t: int | torch.Tensor) -> None:
        """A clear error for a host-side timestep outside [0, T) or, when sampling, outside
        the chain; `t` is an int or a CPU tensor."""
        T = self.config.num_train_timesteps
        if not torch.is_tensor(t):
            if 0 <= t < T and (which == "train" or t in self._chain_set):
                return
            t = torch.tensor([t])
        t = t.reshape(-1)
        outside = (t < 0) | (t >= T)
        if bool(outside.any()):
            raise ValueError(
                f"timestep {int(t[outside][0])} is outside [0, {T - 1}] (num_train_timesteps={T})"
            )
        if which != "sample":
            return
        missing = ~torch.isin(t, self._chain)
        if bool(missing.any()):
            raise ValueError(
                f"timestep {int(t[missing][0])} is not in the sampling chain set by "
                "set_timesteps; step from one of scheduler.timesteps"
            )

    def split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, variance output or None): a learned variance doubles dim 1 of the
        model output. With variance_type="analytic" a model trained with a learned variance
        serves too: its variance channels are set aside, since the analytic variance replaces
        them. Raises ValueError for any other shape."""
        learned = self.config.variance_type in LEARNED_VARIANCES
        if not learned and model_output.shape == sample.shape:
            return model_output, None
        doubled = [*sample.shape[:1], 2 * sample.shape[1], *sample.shape[2:]] if sample.dim() >= 2 else None
        if self.config.variance_type == "analytic" and list(model_output.shape) == doubled:
            return model_output.chunk(2, dim=1)[0], None
        if learned and sample.dim() < 2:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs a sample with a channel "
                f"dimension (dim 1) for the variance's channels; the sample has shape {tuple(sample.shape)}"
            )
        expected = list(sample.shape)
        if learned:
            expected[1] *= 2
        if list(model_output.shape) != expected:
            why = (
                " (the sample's, with twice the channels in dim 1 for a learned variance)" if learned else ""
            )
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}; with "
                f"variance_type={self.config.variance_type!r} it must be {tuple(expected)}{why}"
            )
        if learned:
            prediction, variance_output = model_output.chunk(2, dim=1)
            return prediction, variance_output
        return model_output, None

    # ---- docs/math.md §1: forward process --------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (docs/math.md §1); timesteps: int, 0-d or (B,)."""
        c = self._coefficients("train", timesteps, original_samples)
        return c.sqrt_alpha_bar * original_samples + c.sqrt_one_minus_alpha_bar * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (docs/math.md §3.4, Salimans & Ho 2022)."""
        c = self._coefficients("train", timesteps, sample)
        return c.sqrt_alpha_bar * noise - c.sqrt_one_minus_alpha_bar * sample

    def q_mean_variance(self, x0: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I) (docs/math.md §1) → (mean, variance, log_variance)."""
        c = self._coefficients("train", t, x0)
        variance = c.sqrt_one_minus_alpha_bar**2
        return c.sqrt_alpha_bar * x0, variance.expand_as(x0), variance.log().expand_as(x0)

    # ---- docs/math.md §2: the posterior ----------------------------------------------------

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: Any, *, respaced: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (docs/math.md §2) over the full T-step chain
        → (mean, variance, log_variance); the log variance at t = 0 is log β̃ of t = 1.
        With `respaced`, over the chain set by `set_timesteps` (docs/math.md §4): x_{t−1} stands
        for x at the chain's next timestep."""
        c = self._coefficients("sample" if respaced else "train", t, x_t)
        return (
            self._posterior_mean(x0, x_t, c),
            c.posterior_variance.expand_as(x_t),
            c.posterior_log_variance_clipped.expand_as(x_t),
        )

    # ---- docs/math.md §3–4: parameterisations and the reverse distribution -----------------

    def _predict_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, c: Coefficients) -> torch.Tensor:
        """x̂_0 from any of the four parameterisations (docs/math.md §3)."""
        kind = self.config.prediction_type
        if kind == "epsilon":  # x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε
            return torch.addcmul(c.sqrt_recip_alpha_bar * x_t, c.sqrt_recipm1_alpha_bar, prediction, value=-1)
        if kind == "sample":
            return prediction
        if kind == "v_prediction":  # x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v
            return c.sqrt_alpha_bar * x_t - c.sqrt_one_minus_alpha_bar * prediction
        # posterior_mean: invert μ̃ = c0 x̂_0 + ct x_t
        return (prediction - c.posterior_mean_coef_xt * x_t) / c.posterior_mean_coef_x0

    def _predict_epsilon(
        self, prediction: torch.Tensor, x_t: torch.Tensor, c: Coefficients, x0: torch.Tensor
    ) -> torch.Tensor:
        """ε̂ from the model's prediction and the unclipped x̂_0 it gives (docs/math.md §3)."""
        if self.config.prediction_type == "epsilon":
            return prediction
        if self.config.prediction_type == "v_prediction":  # ε̂ = √ᾱ_t v + √(1−ᾱ_t) x_t
            return c.sqrt_alpha_bar * prediction + c.sqrt_one_minus_alpha_bar * x_t
        return self._epsilon_from_x0(x_t, x0, c)

    @staticmethod
    def _epsilon_from_x0(x_t: torch.Tensor, x0: torch.Tensor, c: Coefficients) -> torch.Tensor:
        """ε = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t), from x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (docs/math.md §1)."""
        return (x_t - c.sqrt_alpha_bar * x0) / c.sqrt_one_minus_alpha_bar

    def _clip(self, x0: torch.Tensor, clip: bool | None = None) -> torch.Tensor:
        """x̂_0 clipped to [−clip_sample_range, clip_sample_range] when `clip` (None: the
        config's clip_sample) is on."""
        if self.config.clip_sample if clip is None else clip:
            r = self.config.clip_sample_range
            return x0.clamp(-r, r)
        return x0

    def _analytic_variance(self, c: Coefficients, lambda_sq: torch.Tensor) -> torch.Tensor:
        """Analytic-DPM's σ*² for a step whose forward posterior has variance λ² (docs/math.md §8);
        with clip_sample on, the data are taken to lie in [−clip_sample_range, clip_sample_range]."""
        data_half_range = self.config.clip_sample_range if self.config.clip_sample else None
        return analytic_variance(c, lambda_sq, data_half_range)

    def _analytic_noise_std(self, c: Coefficients, lambda_sq: torch.Tensor) -> torch.Tensor:
        """The noise std of a sampling step with the analytic variance: √σ*², none at the chain's
        last step, and at the step before it at most y pixels, E|σ z| ≤ y · 2/255 with
        y = analytic_clip_pixels (Bao et al. 2022's clip for sample quality, docs/math.md §8.10)."""
        std = c.is_not_last * self._analytic_variance(c, lambda_sq).sqrt()
        y = self.config.analytic_clip_pixels
        if y is not None:  # E|z| = √(2/π) for z ~ N(0, 1)
            cap = y * PIXEL_STEP / math.sqrt(2 / math.pi)
            std = torch.where(c.is_second_to_last > 0, std.clamp(max=cap), std)
        return std

    def _log_variance(self, c: Coefficients, variance_output: torch.Tensor | None) -> torch.Tensor:
        """log σ_t² of p(x_prev | x_t) for the configured variance type (docs/math.md §4)."""
        kind = self.config.variance_type
        if kind == "learned":  # the network outputs log σ²
            return variance_output
        if kind == "learned_range":  # iDDPM eq. 15: interpolate the LOG variances
            u = (variance_output + 1) / 2
            return u * c.log_beta + (1 - u) * c.posterior_log_variance_clipped
        if kind in ("fixed_small", "fixed_small_log"):
            return c.posterior_log_variance_clipped
        if kind == "analytic":  # for DDPM's posterior, λ² = β̃'_t
            return self._analytic_variance(c, c.posterior_variance).log()
        return c.large_log_variance  # fixed_large, fixed_large_log

    def _p_mean_variance(
        self, c: Coefficients, model_output: torch.Tensor, x_t: torch.Tensor, clip: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, log σ², x̂_0) of p(x_prev | x_t) with the coefficients `c`; `clip` as `_clip`."""
        prediction, variance_output = self.split_model_output(model_output, x_t)
        x0 = self._clip(self._predict_x0(prediction, x_t, c), clip)
        return self._posterior_mean(x0, x_t, c), self._log_variance(c, variance_output), x0

    @staticmethod
    def _posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, c: Coefficients) -> torch.Tensor:
        """μ̃_t(x_t, x_0) = c0 x_0 + ct x_t (docs/math.md §2)."""
        return torch.addcmul(c.posterior_mean_coef_xt * x_t, c.posterior_mean_coef_x0, x0)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: Any,
        *,
        clip: bool | None = None,
        respaced: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I) over the full T-step chain (docs/math.md §3–4)
        → (mean, variance, log_variance, pred_x0); t: int, 0-d or (B,).

        clip: whether x̂_0 is clipped; None follows the config's clip_sample (training
            passes False, docs/math.md §5). respaced: as in `q_posterior`.
        """
        c = self._coefficients("sample" if respaced else "train", t, x_t)
        mean, log_variance, x0 = self._p_mean_variance(c, model_output, x_t, clip)
        log_variance = log_variance.expand_as(x_t)
        return mean, log_variance.exp(), log_variance, x0

    def predict_epsilon(self, model_output: torch.Tensor, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        """ε̂ from the model's output in the configured parameterisation (docs/math.md §3), unclipped,
        over the full T-step chain; a learned variance's channels are set aside."""
        c = self._coefficients("train", t, x_t)
        prediction, _ = self.split_model_output(model_output, x_t)
        return self._predict_epsilon(prediction, x_t, c, self._predict_x0(prediction, x_t, c))

    # ---- diffusers interface ---------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """DDPM and DDIM do not scale the model input."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def save_config(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """Write scheduler_config.json atomically: a crash mid-write keeps the old file."""
        if push_to_hub:
            raise NotImplementedError(
                "push_to_hub for schedulers is not implemented yet; upload the folder instead"
            )
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={str(save_directory)!r} is a file; it must be a directory")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        write_text_atomically(path, self.to_json_string())
        logger.info("Configuration saved in %s", path)
