"""How training draws the timestep t of each example (iDDPM §3.3; improved-diffusion's
resample.py): uniformly, or by importance, with probabilities that follow the loss."""

from __future__ import annotations

from typing import Literal, get_args

import torch

TimestepSampler = Literal["uniform", "importance"]
TIMESTEP_SAMPLERS: tuple[str, ...] = get_args(TimestepSampler)


class LossSecondMomentSampler:
    """t with probability p_t ∝ √E[L_t²] over the last `history` losses at each t, mixed with
    `uniform_prob` of the uniform, once every t has that many; uniform before. The loss is
    reweighted by 1/(T p_t) so that its expectation is unchanged (iDDPM §3.3)."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(num_timesteps, history, dtype=torch.float64)  # (T, H)
        self.counts = torch.zeros(num_timesteps, dtype=torch.long)  # (T,)

    def probabilities(self) -> torch.Tensor:  # (T,)
        T, H = self.losses.shape
        if bool((self.counts < H).any()):
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        weights = self.losses.pow(2).mean(dim=1).sqrt()
        weights = weights / weights.sum()
        return weights * (1 - self.uniform_prob) + self.uniform_prob / T

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B,), weights (B,) = 1/(T p_t))."""
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return t, (1.0 / (len(p) * p[t])).float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses at timesteps t (both (N,), from every process)."""
        H = self.losses.shape[1]
        for ti, loss in zip(t.tolist(), losses.double().tolist(), strict=True):
            if self.counts[ti] == H:
                self.losses[ti] = torch.roll(self.losses[ti], -1)
                self.losses[ti, -1] = loss
            else:
                self.losses[ti, self.counts[ti]] = loss
                self.counts[ti] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"losses": self.losses, "counts": self.counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["losses"].shape != self.losses.shape:
            raise ValueError(
                f"the checkpoint's importance-sampler history has shape {tuple(state['losses'].shape)}, "
                f"this run needs {tuple(self.losses.shape)}"
            )
        self.losses, self.counts = state["losses"].double(), state["counts"].long()
