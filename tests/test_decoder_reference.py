"""Our discretised Gaussian decoder against improved-diffusion's formula (docs/math.md §5.2).

improved-diffusion (like Ho et al.'s code) approximates the normal CDF with tanh and floors each
bin's probability at 1e-12; ours uses the exact CDF. The figures docs/math.md §5.2 reports were
measured on a grid of 481 means × 301 scales × 256 levels; this test repeats the measurement on a
sub-grid of it (every fifth mean and scale), whose figures can only be smaller or equal, and holds
the bounds the document states with a small margin.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_pipelines.losses import discretized_gaussian_log_likelihood

FLOOR = 1e-12


def _tanh_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), improved-diffusion's approx_std_normal_cdf."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _reference_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's discretized_gaussian_log_likelihood, written from its description."""
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _tanh_normal_cdf(inv_stdv * (centered_x + 1.0 / 255))
    cdf_min = _tanh_normal_cdf(inv_stdv * (centered_x - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=FLOOR))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=FLOOR))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=FLOOR))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


@pytest.fixture(scope="module")
def both():
    """(ours, theirs), each (97 means, 61 scales, 256 levels), float64: means in [−1.2, 1.2],
    σ from 1e-3 to 1 evenly in log σ, x on the 256-level grid of [−1, 1]."""
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    means = torch.linspace(-1.2, 1.2, 97, dtype=torch.float64)
    log_scales = torch.linspace(math.log(1e-3), 0.0, 61, dtype=torch.float64)
    mu, log_sigma, x = torch.meshgrid(means, log_scales, levels, indexing="ij")
    return (
        discretized_gaussian_log_likelihood(x, mu, log_sigma),
        _reference_log_likelihood(x, mu, log_sigma),
    )


@pytest.mark.parametrize(
    ("above", "bound"),
    # docs/math.md §5.2: measured 5.1e-4, 0.025, 0.45 nats on the full grid.
    [(-1.0, 6e-4), (-5.0, 0.03), (-10.0, 0.5)],
)
def test_agrees_with_the_tanh_formula_where_its_value_is_above(both, above, bound):
    ours, theirs = both
    region = theirs > above
    worst = (ours - theirs)[region].abs().max().item()
    assert worst <= bound, worst
    # The two are different formulas: the difference is of the order the document reports.
    assert worst > bound / 3, worst


def test_in_the_far_tails_their_floor_caps_the_loss_and_ours_does_not(both):
    ours, theirs = both
    floored = theirs == math.log(FLOOR)
    assert floored.any()
    assert torch.isfinite(ours).all()
    # Where their approximated mass underflows the floor, the exact value can still lie
    # 5 nats above it (the tanh tail falls off too fast: docs/math.md §5.2 reports −22.46) …
    assert ours[floored].max().item() > math.log(FLOOR) + 5
    # … and farther out it keeps falling without bound, while theirs stays at −27.63.
    assert ours[floored].min().item() < -1e6
    assert theirs.min().item() == pytest.approx(math.log(FLOOR), abs=1e-12)


def test_our_bins_sum_to_one_and_the_floors_add_mass_to_theirs(both):
    ours, theirs = both
    assert (ours.exp().sum(-1) - 1).abs().max().item() < 1e-12
    excess = theirs.exp().sum(-1) - 1
    # 255 of the 256 bins at the floor add up to 255e-12; the telescoping sum is otherwise 1.
    assert 1e-10 < excess.max().item() <= 255 * FLOOR + 1e-14
    assert excess.min().item() > -1e-13
