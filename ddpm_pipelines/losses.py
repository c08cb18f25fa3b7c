"""The training objectives and the likelihood of docs/math.md §5.

All terms are per example, in nats summed over the data dimensions, unless a name says
otherwise. `bits_per_dim` turns nats into bits per dimension.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from schedulers import DiffusionScheduler
from schedulers.base import check_choice, noise_like

Decoder = Literal["discretized", "continuous"]
LossType = Literal["simple", "vlb", "hybrid"]
DECODERS: tuple[str, ...] = get_args(Decoder)
LOSS_TYPES: tuple[str, ...] = get_args(LossType)

# iDDPM §3.1: L_hybrid = L_simple + λ L_vlb.
HYBRID_LAMBDA = 0.001
# 8-bit data in [−1, 1]: 256 bins of width 2/255 (docs/math.md §5, L_0).
NUM_BINS = 256
BIN_HALF_WIDTH = 1.0 / 255.0

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the batch: (B, ...) → (B,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def _mean_dims(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats (docs/math.md §5):
    log(σ₂/σ₁) + (σ₁² + (μ₁ − μ₂)²)/(2σ₂²) − ½."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0
    )


def _log_phi_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) − Φ(lower)) for upper > lower, computed in the tail where it is
    accurate: log Φ(u) + log(1 − Φ(l)/Φ(u))."""
    log_u, log_l = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_u + torch.log(-torch.expm1(log_l - log_u))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(x) per element for data on the 256-level grid of [−1, 1] under N(means,
    e^(2·log_scales)) integrated over each bin of width 2/255, the edge bins open to ±∞
    (docs/math.md §5, L_0; DDPM §3.3). Uses the exact normal CDF, so the 256 bin probabilities
    sum to one."""
    inv_std = torch.exp(-log_scales)
    upper = (x - means + BIN_HALF_WIDTH) * inv_std  # standardised bin edges
    lower = (x - means - BIN_HALF_WIDTH) * inv_std
    # A bin's mass from the side of the mean where Φ is not close to one: above the mean,
    # mirror the bin (Φ(u) − Φ(l) = Φ(−l) − Φ(−u)). One evaluation, so that no unused
    # branch carries an infinite gradient into torch.where.
    above = x > means
    middle = _log_phi_difference(torch.where(above, -lower, upper), torch.where(above, -upper, lower))
    first_bin = torch.special.log_ndtr(upper)  # x = −1: (−∞, −1 + 1/255]
    last_bin = torch.special.log_ndtr(-lower)  # x = +1: [1 − 1/255, ∞)
    edge = 1.0 - BIN_HALF_WIDTH  # halfway between the outermost bin centre and its neighbour
    return torch.where(x < -edge, first_bin, torch.where(x > edge, last_bin, middle))


def continuous_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log N(x; means, e^(2·log_scales)) per element: the decoder for continuous data."""
    return -0.5 * math.log(2 * math.pi) - log_scales - 0.5 * ((x - means) * torch.exp(-log_scales)) ** 2


def bits_per_dim(nats: torch.Tensor, num_dims: int) -> torch.Tensor:
    """NLL in nats per example → bits per dimension: nats / (D · ln 2) (docs/math.md §5)."""
    return nats / (num_dims * math.log(2.0))


def prior_kl(scheduler: DiffusionScheduler, x0: torch.Tensor, t: int | None = None) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per example, nats (docs/math.md §5); `t`: the chain's first
    train timestep, by default T − 1."""
    if t is None:
        t = scheduler.config.num_train_timesteps - 1
    mean, _, log_variance = scheduler.q_mean_variance(x0, t)
    return _sum_dims(normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean)))


def vlb_term(
    scheduler: DiffusionScheduler,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    decoder: Decoder = "discretized",
    *,
    clip: bool | None = None,
    respaced: bool = False,
) -> torch.Tensor:
    """The variational-bound term at train timesteps t (B,), per example, nats (docs/math.md §5):
    L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) where t > 0 and the decoder's
    L_0 = −log p_θ(x_0 | x_1) where t = 0.

    clip: whether x̂_0 is clipped in p_θ; None follows the scheduler's clip_sample.
    respaced: over the chain set by the scheduler's `set_timesteps` (docs/math.md §4): x_{t−1}
        stands for x at the chain's next timestep, and the decoder is at its last one.
    """
    check_choice("decoder", decoder, DECODERS)
    true_mean, _, true_log_variance = scheduler.q_posterior(x0, x_t, t, respaced=respaced)
    mean, _, log_variance, _ = scheduler.p_mean_variance(model_output, x_t, t, clip=clip, respaced=respaced)
    kl = _sum_dims(normal_kl(true_mean, true_log_variance, mean, log_variance))
    log_likelihood = (
        discretized_gaussian_log_likelihood
        if decoder == "discretized"
        else continuous_gaussian_log_likelihood
    )
    nll = -_sum_dims(log_likelihood(x0, mean, 0.5 * log_variance))
    last = int(scheduler.timesteps[-1]) if respaced else 0
    return torch.where(t == last, nll, kl)


@dataclass
class VLBTerms:
    """The variational bound of a batch, per example, in nats summed over dimensions.

    prior: (B,) L_T. terms: (B, K) with terms[:, j] the term at train timestep timesteps[j]:
    column 0 is the decoder's L_0, the others KL(q(x_prev | x_t, x_0) ‖ p_θ(x_prev | x_t)).
    total: (B,) L_T + Σ_t L_t, an upper bound on −log p_θ(x_0). timesteps: (K,) the chain's
    train timesteps, ascending; for the full chain K = T and timesteps[j] = j.
    """

    prior: torch.Tensor
    terms: torch.Tensor
    total: torch.Tensor
    timesteps: torch.Tensor


@torch.no_grad()
def vlb_terms(
    model_fn: ModelFn,
    scheduler: DiffusionScheduler,
    x0: torch.Tensor,
    decoder: Decoder = "discretized",
    generator: torch.Generator | None = None,
    progress: bool = False,
    timesteps: Sequence[int] | None = None,
) -> VLBTerms:
    """Every term of L_vlb = L_T + Σ_{t≥1} L_{t−1} (docs/math.md §5) over all T train timesteps,
    each from one draw of x_t ~ q(x_t | x_0). `model_fn(x_t, t)` returns the model output
    for x_t at timesteps t (B,). "discretized" suits 8-bit data in [−1, 1], "continuous"
    real-valued data.

    timesteps: a descending chain of train timesteps: the bound of that K-step chain
        (docs/math.md §5), whose reverse process `set_timesteps(timesteps=...)` samples; the prior
        term is at its first timestep and the decoder at its last. None: all T.
    """
    check_choice("decoder", decoder, DECODERS)
    respaced = timesteps is not None
    if respaced:  # a copy: the caller's scheduler keeps its own chain
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(timesteps=timesteps)
        chain = scheduler.timesteps.tolist()
    else:
        chain = list(range(scheduler.config.num_train_timesteps - 1, -1, -1))
    B, K = x0.shape[0], len(chain)
    terms = torch.empty(B, K, dtype=x0.dtype, device=x0.device)
    steps = enumerate(chain)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="L_vlb terms", total=K)
    for i, t in steps:
        t_batch = torch.full((B,), t, dtype=torch.long, device=x0.device)
        x_t = scheduler.add_noise(x0, noise_like(x0, generator), t_batch)
        output = model_fn(x_t, t_batch)
        terms[:, K - 1 - i] = vlb_term(scheduler, output, x0, x_t, t_batch, decoder, respaced=respaced)
    prior = prior_kl(scheduler, x0, chain[0])
    ascending = torch.tensor(chain[::-1], dtype=torch.long)
    return VLBTerms(prior=prior, terms=terms, total=prior + terms.sum(dim=1), timesteps=ascending)


def training_losses(
    model_fn: ModelFn,
    scheduler: DiffusionScheduler,
    x0: torch.Tensor,
    loss_type: LossType = "simple",
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    decoder: Decoder = "discretized",
) -> torch.Tensor:
    """Per-example training loss at t ~ U{0..T−1} (or the given t), for any prediction and
    variance type of `scheduler` (docs/math.md §5, iDDPM §3):

    - "simple": L_simple, the mean squared error of the model's prediction against its
      target (ε, x_0, v or μ̃), averaged over dimensions (DDPM eq. 14).
    - "vlb": T · L_t in bits per dimension, an unbiased estimate of L_vlb − L_T.
    - "hybrid": L_simple + λ · T · L_t, λ = 0.001, with the mean detached in the L_t term
      so that it trains only the variance (iDDPM §3.1, as iDDPM's code scales it).

    x̂_0 is never clipped in L_t, whatever the scheduler's clip_sample (improved-diffusion
    trains with clip_denoised=False): clipping would change the term and give the clipped
    elements no gradient.
    """
    check_choice("loss_type", loss_type, LOSS_TYPES)
    T, B = scheduler.config.num_train_timesteps, x0.shape[0]
    if t is None:
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, T, (B,), generator=generator, device=device).to(x0.device)
    if noise is None:
        noise = noise_like(x0, generator)
    x_t = scheduler.add_noise(x0, noise, t)
    model_output = model_fn(x_t, t)
    prediction, variance_output = scheduler.split_model_output(model_output, x_t)

    def vlb_bits(output: torch.Tensor) -> torch.Tensor:  # never clipped in training (docs/math.md §5)
        return bits_per_dim(T * vlb_term(scheduler, output, x0, x_t, t, decoder, clip=False), x0[0].numel())

    if loss_type == "vlb":
        return vlb_bits(model_output)
    target = {  # only the one the model predicts is computed
        "epsilon": lambda: noise,
        "sample": lambda: x0,
        "v_prediction": lambda: scheduler.get_velocity(x0, noise, t),
        "posterior_mean": lambda: scheduler.q_posterior(x0, x_t, t)[0],
    }[scheduler.config.prediction_type]()
    mse = _mean_dims((prediction - target) ** 2)
    if loss_type == "simple":
        return mse
    frozen = prediction.detach()
    if variance_output is not None:
        frozen = torch.cat([frozen, variance_output], dim=1)
    return mse + HYBRID_LAMBDA * vlb_bits(frozen)
