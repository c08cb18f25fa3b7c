"""Analytic-DPM (Bao, Li, Zhu and Zhang, ICLR 2022, arXiv 2201.06503): the reverse variance
that minimises the bound for a trained noise-prediction model, in closed form (docs/math.md §8).

For a step t → s of any chain the optimal σ² depends on the model only through

    Γ_t = E_{x_0, ε} ‖ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² / d,

a property of the marginal q(x_t): one Monte-Carlo estimate at each of the T train timesteps
serves every respaced chain. `estimate_gamma` computes it from a pipeline and data; the
scheduler keeps it in its config, so it is saved and loaded with the pipeline:

    gamma = estimate_gamma(pipe, data)
    pipe.scheduler = type(pipe.scheduler).from_config(
        pipe.scheduler.config, variance_type="analytic", analytic_gamma=gamma.tolist()
    )
"""

from __future__ import annotations

import torch

from schedulers.base import noise_like

from .evaluation import as_model_fn
from .pipeline import DDPMPipeline, _check_count


@torch.no_grad()
def estimate_gamma(
    pipe: DDPMPipeline,
    data: torch.Tensor,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Γ_t = E‖ε_θ(x_t, t)‖²/d at every train timestep t = 0..T−1 (docs/math.md §8), float64 (T,).

    Each example of `data` (N, ...) — training data in the model's units: images in [−1, 1]
    (N, C, H, W), points (N, D) — is noised once per timestep with noise from `generator`,
    so the estimate averages N draws at each t; its relative error shrinks as 1/√N. The cost
    is T · N model evaluations. The model runs in its own dtype on the pipeline's device,
    `batch_size` examples at a time; ε̂ comes from any parameterisation, unclipped.
    """
    _check_count("batch_size", batch_size)
    shape = pipe.sample_shape(1)[1:]
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or tuple(data.shape[1:]) != shape:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be a tensor (N, {', '.join(map(str, shape))}) for this model; got {got}")
    scheduler, model_fn = pipe.scheduler, as_model_fn(pipe.unet)
    T, n = scheduler.config.num_train_timesteps, data.shape[0]
    batches = data.to(pipe.device, torch.float64).split(batch_size)
    total = torch.zeros(T, dtype=torch.float64, device=pipe.device)  # Σ over examples of ‖ε̂‖²/d
    steps = range(T)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="Analytic-DPM Γ")
    for t in steps:
        for x0 in batches:  # (b, ...)
            t_batch = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            x_t = scheduler.add_noise(x0, noise_like(x0, generator), t_batch)
            eps = scheduler.predict_epsilon(model_fn(x_t, t_batch), x_t, t_batch)  # (b, ...)
            total[t] += eps.pow(2).flatten(1).mean(1).sum()
    return total.cpu() / n
