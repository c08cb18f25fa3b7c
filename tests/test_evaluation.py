"""Evaluation (issue 4): energy distance, Fréchet distance, DINOv2 features, the NLL bound,
its plot, and `evaluate` on tiny point and image pipelines."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch
import torch.nn.functional as F
from conftest import GaussianOracle
from test_analytic import _expected_vlb  # the exact expected bound for Gaussian data (docs/math.md §6)
from transformers import Dinov2Config, Dinov2Model

from ddpm_pipelines import DDPMPipeline, MLPModel, UNetModel
from ddpm_pipelines.data import seeded_generator
from ddpm_pipelines.evaluation import (
    DINOv2Features,
    NLLResult,
    energy_distance,
    evaluate,
    fd_dinov2,
    frechet_distance,
    nll,
    plot_quality_vs_steps,
    plot_vlb_terms,
    plot_vlb_terms_from_metrics,
    precision_recall,
    quality_table,
    quality_vs_steps,
)
from ddpm_pipelines.images import to_uint8
from ddpm_pipelines.losses import vlb_terms
from ddpm_pipelines.pipeline import with_sampler
from schedulers import DDPMScheduler

LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run thousands of small ops; on two cores shared with other processes, torch's
    intra-op threads wait on each other (a 1,000-step NLL took 30 s instead of 1 s), so run them
    on one thread, and give the previous count back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- energy distance -------------------------------------------------------------------------


def _brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    """2 E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ by broadcasting, every mean over all pairs."""

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    return 2 * dist(x, y).mean() - dist(x, x).mean() - dist(y, y).mean()


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_energy_distance_matches_the_direct_formula(chunk_size):
    x, y = _randn(30, 3, seed=1).numpy(), (_randn(45, 3, seed=2) + 0.3).numpy()
    assert energy_distance(x, y, chunk_size=chunk_size) == pytest.approx(_brute_energy(x, y), rel=1e-12)
    assert energy_distance(torch.from_numpy(x), y) == pytest.approx(energy_distance(y, x), rel=1e-12)


def test_energy_distance_is_the_square_of_scipys():
    """scipy's energy_distance (1-D) is √(2A − V_x − V_y), V the within-set mean over all pairs."""
    x, y = _randn(50, 1, seed=3), _randn(70, 1, seed=4) * 1.5 + 0.2
    assert energy_distance(x, y) == pytest.approx(
        scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rel=1e-10
    )


def test_energy_distance_is_zero_for_one_distribution_and_matches_the_closed_form_for_a_shift():
    """For X ~ N(0, 1), Y ~ N(δ, 1): E|X−Y| = E|N(δ, 2)|, E|X−X'| = 2/√π, so
    E(X, Y) = 2 (√2 √(2/π) e^{−δ²/4} + δ (1 − 2Φ(−δ/√2)) − 2/√π). Over repeated draws of
    2,000 points the estimate's std is 0.0006 at δ = 0 and 0.013 at δ = 0.5."""
    same = energy_distance(_randn(2000, 1, seed=5), _randn(2000, 1, seed=6))
    bias = 2 * (2 / math.sqrt(math.pi)) / 2000  # E|X−X'|/N + E|Y−Y'|/M, the V-statistic's floor
    assert 0 < same < bias + 0.003
    delta, s = 0.5, math.sqrt(2)
    mean_abs = s * math.sqrt(2 / math.pi) * math.exp(-(delta**2) / (2 * s * s)) + delta * (
        1 - 2 * scipy.stats.norm.cdf(-delta / s)
    )
    exact = 2 * (mean_abs - 2 / math.sqrt(math.pi))  # 0.1396
    shifted = energy_distance(_randn(2000, 1, seed=7), _randn(2000, 1, seed=8) + delta)
    assert shifted == pytest.approx(exact, abs=0.05) and shifted > 0.08


def test_energy_distance_5000_points_in_blocks():
    x, y = _randn(5000, 2, seed=9), _randn(5000, 2, seed=10)
    x0 = x.clone()
    assert abs(energy_distance(x, y)) < 0.005
    assert torch.equal(x, x0)  # the caller's tensor is untouched


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        (torch.zeros(5), torch.zeros(5, 1), {}, r"x must be a matrix of points \(N, D\); got shape \(5,\)"),
        (torch.zeros(5, 2), torch.zeros(5, 3), {}, "x and y must have the same width D; got 2 and 3"),
        (torch.zeros(1, 2), torch.zeros(5, 2), {}, "x has 1 points; at least 2 are needed"),
        (torch.zeros(5, 2), torch.zeros(1, 2), {}, "y has 1 points; at least 2 are needed"),
        (torch.zeros(5, 2), torch.zeros(5, 2), {"chunk_size": 0}, "chunk_size=0 must be a positive integer"),
    ],
)
def test_energy_distance_errors(x, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        energy_distance(x, y, **kwargs)


# ---- Fréchet distance ------------------------------------------------------------------------


def _features_with(mean, variances, rotation, n=300, seed=0):
    """Features (n, F) whose sample mean is `mean` and sample covariance (N − 1) exactly
    rotation · diag(variances) · rotationᵀ: whitened Gaussian draws, scaled and rotated."""
    z = _randn(n, len(variances), seed=seed)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    white = torch.linalg.solve_triangular(chol, z.T, upper=False).T  # sample covariance I
    return white * torch.as_tensor(variances, dtype=torch.float64).sqrt() @ rotation.T + torch.as_tensor(mean)


@pytest.mark.parametrize("rotated", [False, True])
def test_frechet_distance_matches_the_closed_form_for_gaussians(rotated):
    """Covariances sharing eigenvectors: d² = ‖μ_a − μ_b‖² + Σ_i (√a_i − √b_i)²."""
    f = 4
    rotation = torch.linalg.qr(_randn(f, f, seed=11))[0] if rotated else torch.eye(f, dtype=torch.float64)
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0, 0.5]).double(), torch.tensor([0.5, 1.0, -1.0, 0.0]).double()
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25, 2.0]).double(), torch.tensor([2.0, 1.0, 0.25, 9.0]).double()
    a = _features_with(mu_a, var_a, rotation, seed=12)
    b = _features_with(mu_b, var_b, rotation, n=500, seed=13)
    exact = ((mu_a - mu_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(exact.item(), rel=1e-10)
    assert frechet_distance(b.numpy(), a.numpy()) == pytest.approx(exact.item(), rel=1e-10)


def test_frechet_distance_matches_the_sqrtm_form_for_general_covariances():
    """Against the usual FID code (pytorch-fid): scipy.linalg.sqrtm, real part."""
    a = _randn(200, 6, seed=14) @ _randn(6, 6, seed=15)
    b = _randn(150, 6, seed=16) @ _randn(6, 6, seed=17) + 0.3
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_zero_for_identical_features_even_with_singular_covariance():
    for a in (_randn(100, 5, seed=18), _randn(4, 8, seed=19)):  # 4 rows, 8 features: rank 3
        assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-10)
    # Shifted by 1 in each of 8 features: d² = 8, to ~√ε of the covariance (the square root at 0).
    a = _randn(4, 8, seed=19)
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, abs=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (torch.zeros(1, 3), torch.zeros(5, 3), "features_a has 1 feature rows; at least 2 are needed"),
        (torch.zeros(5, 3), torch.zeros(1, 3), "features_b has 1 feature rows; at least 2 are needed"),
        (
            torch.zeros(5, 3),
            torch.zeros(5, 4),
            "features_a and features_b must have the same width D; got 3 and",
        ),
        (torch.zeros(5, 3, 1), torch.zeros(5, 3), r"features_a must be a matrix of feature rows \(N, D\)"),
    ],
)
def test_frechet_distance_errors(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


# ---- DINOv2 features -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dino():
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Dinov2Model(config).eval()


def _images(b, c, size=8, seed=0):
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _by_hand(model, images, size):
    """Stein et al.'s preprocessing written out: [−1, 1] → [0, 1], bicubic (antialiased)
    resize, RGB, ImageNet normalisation; then the last layer's normed CLS token."""
    x = F.interpolate((images + 1) / 2, size=(size, size), mode="bicubic", antialias=True)
    x = x.repeat(1, 3 // x.shape[1], 1, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state[:, 0].double()


@pytest.mark.parametrize(("image_size", "side"), [("default", 224), (None, 28), (42, 42)])
@pytest.mark.parametrize("channels", [1, 3])
def test_dinov2_features_are_the_cls_token_of_the_preprocessed_images(tiny_dino, image_size, side, channels):
    kwargs = {} if image_size == "default" else {"image_size": image_size}
    images = _images(3, channels, seed=channels)
    features = DINOv2Features(tiny_dino, device="cpu", **kwargs)(images)
    assert features.shape == (3, 32) and features.dtype == torch.float64 and features.device.type == "cpu"
    torch.testing.assert_close(features, _by_hand(tiny_dino, images, side), rtol=1e-5, atol=1e-5)


def test_dinov2_grey_equals_grey_repeated_to_rgb_and_batching_changes_nothing(tiny_dino):
    features = DINOv2Features(tiny_dino, image_size=None)
    grey = _images(5, 1, size=12, seed=3)
    one = features(grey)
    torch.testing.assert_close(one, features(grey.repeat(1, 3, 1, 1)), rtol=0, atol=1e-6)
    torch.testing.assert_close(one, features(grey, batch_size=2), rtol=0, atol=1e-5)


def test_dinov2_features_load_a_saved_model_only_when_used(tiny_dino, tmp_path):
    DINOv2Features(tmp_path / "missing")  # nothing is read yet
    with pytest.raises(OSError):
        DINOv2Features(tmp_path / "missing")(_images(1, 3))
    tiny_dino.save_pretrained(tmp_path / "dino")
    lazy = DINOv2Features(str(tmp_path / "dino"), device="cpu", image_size=None)
    images = _images(2, 3)
    torch.testing.assert_close(lazy(images), DINOv2Features(tiny_dino, image_size=None)(images))


def test_fd_dinov2_is_the_frechet_distance_of_the_features(tiny_dino):
    features = DINOv2Features(tiny_dino, image_size=None)
    real, fake = _images(6, 1, seed=4), _images(5, 3, seed=5) * 0.5
    expected = frechet_distance(features(real), features(fake))
    assert fd_dinov2(real, fake, features, batch_size=4) == pytest.approx(expected, rel=1e-6)  # float32 model
    assert expected > 0
    assert fd_dinov2(real, real.clone(), features) == pytest.approx(0.0, abs=1e-9)


def test_dinov2_errors(tiny_dino, monkeypatch):
    features = DINOv2Features(tiny_dino)
    shape_error = r"images must be \(B, C, H, W\) with B ≥ 1 and C = 1 or 3, in \[−1, 1\]; got shape"
    for images in (torch.zeros(3, 8, 8), torch.zeros(1, 2, 8, 8), torch.zeros(0, 3, 8, 8)):
        with pytest.raises(ValueError, match=shape_error):
            features(images)
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        features(_images(1, 3), batch_size=0)
    with pytest.raises(ValueError, match="image_size=0 must be a positive integer"):
        DINOv2Features(tiny_dino, image_size=0)
    with pytest.raises(TypeError, match="must be a transformers Dinov2Model or a name or path, not int"):
        DINOv2Features(42)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install transformers"):
        DINOv2Features("facebook/dinov2-base")(_images(1, 3))


# ---- NLL -------------------------------------------------------------------------------------


def _gaussian_setup(variance_type="fixed_large", T=100):
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type, clip_sample=False)
    return scheduler, GaussianOracle(scheduler.alphas_cumprod, 0.3, 0.5)


def test_nll_of_the_gaussian_oracle_bounds_the_exact_nll_and_matches_the_exact_bound():
    """docs/math.md §6 with T = 100: the oracle's bound lies 0.065 nats (0.094 bits) per dimension
    above the exact NLL ½ log(2πe s²), most of it the fixed_large decoder's β̃_2 (docs/math.md §4);
    the estimate from 40,000 points agrees with the exact expected bound within 4 standard
    errors, and does not fall below the exact NLL."""
    m, s = 0.3, 0.5
    scheduler, oracle = _gaussian_setup()
    data = m + s * _randn(40_000, 2, seed=20)
    result = nll(oracle, scheduler, data, batch_size=5000, generator=torch.Generator().manual_seed(0))
    exact_nll = 0.5 * math.log(2 * math.pi * math.e * s * s) / LN2
    exact_bound = _expected_vlb(scheduler, m, s) / LN2
    assert abs(result.bits_per_dim - exact_bound) < 4 * result.bits_per_dim_std_error
    assert result.bits_per_dim_std_error < 0.01
    assert exact_nll < exact_bound and exact_nll < result.bits_per_dim
    assert result.num_examples == 40_000 and result.decoder == "continuous"
    assert result.terms_bits_per_dim.shape == (100,)
    total = result.terms_bits_per_dim.sum().item() + result.prior_bits_per_dim
    assert total == pytest.approx(result.bits_per_dim, rel=1e-12)


def test_nll_is_the_mean_of_vlb_terms_in_bits_per_dim():
    scheduler, oracle = _gaussian_setup(T=20)
    data = 0.3 + 0.5 * _randn(50, 2, seed=21)
    result = nll(oracle, scheduler, data, batch_size=64, generator=torch.Generator().manual_seed(1))
    vlb = vlb_terms(oracle, scheduler, data, decoder="continuous", generator=torch.Generator().manual_seed(1))
    bits = vlb.total / (2 * LN2)
    assert result.bits_per_dim == pytest.approx(bits.mean().item(), rel=1e-12)
    assert result.bits_per_dim_std_error == pytest.approx(bits.std().item() / math.sqrt(50), rel=1e-12)
    torch.testing.assert_close(result.terms_bits_per_dim, vlb.terms.mean(0) / (2 * LN2))
    assert result.prior_bits_per_dim == pytest.approx(vlb.prior.mean().item() / (2 * LN2), rel=1e-12)
    # Batches draw other noise, but the prior L_T has none and the count is the count.
    batched = nll(oracle, scheduler, data, batch_size=7, generator=torch.Generator().manual_seed(1))
    assert batched.prior_bits_per_dim == pytest.approx(result.prior_bits_per_dim, rel=1e-12)
    assert batched.num_examples == 50
    assert math.isnan(nll(oracle, scheduler, data[:1]).bits_per_dim_std_error)


@pytest.mark.parametrize(("shape", "default"), [((6, 2), "continuous"), ((6, 1, 4, 4), "discretized")])
def test_nll_default_decoder_follows_the_data(shape, default):
    scheduler, oracle = _gaussian_setup(T=10)
    data = (torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(2)) / 255 * 2 - 1).double()

    def run(**kwargs):
        return nll(oracle, scheduler, data, generator=torch.Generator().manual_seed(3), **kwargs)

    chosen = run()
    assert chosen.decoder == default
    assert chosen.bits_per_dim == run(decoder=default).bits_per_dim
    other = "discretized" if default == "continuous" else "continuous"
    assert chosen.bits_per_dim != run(decoder=other).bits_per_dim


def test_nll_errors():
    scheduler, oracle = _gaussian_setup(T=10)
    points = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"decoder='gaussian' is not supported; allowed values: \('discr"):
        nll(oracle, scheduler, points, decoder="gaussian")
    with pytest.raises(ValueError, match=r"no default decoder for data of shape \(4, 2, 3\).*pass decoder="):
        nll(oracle, scheduler, torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        nll(oracle, scheduler, points, batch_size=0)
    bad = ((torch.zeros(0, 2), r"shape \(0, 2\)"), (torch.zeros(4), r"shape \(4,\)"), ([1.0], "list"))
    for data, got in bad:
        with pytest.raises(ValueError, match=r"data must be a tensor of N ≥ 1 examples.*got " + got):
            nll(oracle, scheduler, data)


# ---- plot ------------------------------------------------------------------------------------


def _result(terms):
    terms = torch.tensor(terms, dtype=torch.float64)
    return NLLResult(float(terms.sum()), 0.01, terms, 0.0, 10, "continuous", list(range(len(terms))), False)


def test_plot_vlb_terms_writes_a_png_atomically(tmp_path):
    results = {"fixed_large": _result([-0.5, 1.0, 0.1, 0.01, 0.001]), "learned": _result([2.0, 0.5, 0.05])}
    path = tmp_path / "figures" / "vlb_terms.png"
    assert plot_vlb_terms(results, path) == path
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and len(first) > 1000
    plot_vlb_terms({"one": _result([1.0, 0.1])}, str(path))  # replaces it
    assert path.read_bytes() != first
    assert [p.name for p in path.parent.iterdir()] == ["vlb_terms.png"]  # no temporary left


def test_nll_result_round_trips_through_json():
    for std_error in (0.01, math.nan):
        terms = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
        result = NLLResult(3.5, std_error, terms, 0.0, 1, "discretized", [0, 250, 999], True)
        back = NLLResult.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False)))
        assert back.to_dict() == result.to_dict()
        torch.testing.assert_close(back.terms_bits_per_dim, result.terms_bits_per_dim)


def test_plot_vlb_terms_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"results is empty; give \{label: NLLResult\}"):
        plot_vlb_terms({}, tmp_path / "a.png")
    with pytest.raises(TypeError, match=r"results\['x'\] must be an NLLResult, not dict"):
        plot_vlb_terms({"x": {}}, tmp_path / "a.png")
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"the plots need matplotlib: pip install matplotlib"):
        plot_vlb_terms({"x": _result([1.0])}, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


# ---- evaluate --------------------------------------------------------------------------------


NLL_KEYS = {
    "nll_bits_per_dim", "nll_bits_per_dim_std_error", "nll_terms_bits_per_dim", "nll_prior_bits_per_dim",
    "nll_num_examples", "nll_decoder", "nll_timesteps", "nll_clip_sample",
}  # fmt: skip
COMMON_KEYS = {"kind", "num_samples", "num_train_timesteps", "sampler", "num_inference_steps", "model_calls"}
COMMON_KEYS |= NLL_KEYS


@pytest.fixture(scope="module")
def point_pipe():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = MLPModel(hidden_features=16, num_blocks=1, time_embedding_dim=8)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image_pipe():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNetModel.from_preset("tiny-8")
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _grid_images(n, seed):
    """8-bit grey 8×8 images in [−1, 1]."""
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed)) / 255 * 2 - 1


def _drawn(pipe, n, seed=0):
    """Samples 0 … n − 1 as sample_to_shards draws them, in one batch: points (n, D) float64,
    images through their 8 bits, (n, C, H, W) in [−1, 1]."""
    generators = [seeded_generator(seed, "sample", i) for i in range(n)]
    out = pipe(batch_size=n, generator=generators, output_type="pt").images
    return out.double() if out.dim() == 2 else to_uint8(out).float() / 127.5 - 1


def test_evaluate_points(point_pipe, tmp_path):
    train, test = _randn(64, 2, seed=30).float(), _randn(48, 2, seed=31).float()
    train = train + 0.5  # a floor clearly > 0, so that the ratio is defined
    kw = dict(num_samples=40, batch_size=16, nll_examples=10, seed=3, samples_dir=tmp_path / "samples")
    result = evaluate(point_pipe, train, test, **kw)
    assert set(result) == COMMON_KEYS | {"energy_distance", "energy_distance_floor", "energy_distance_ratio"}
    assert result["nll_decoder"] == "continuous" and result["nll_num_examples"] == 10
    assert result["nll_timesteps"] == list(range(10)) and result["nll_clip_sample"] is False
    assert (result["kind"], result["num_samples"], result["num_train_timesteps"]) == ("points", 40, 10)
    assert (result["sampler"], result["num_inference_steps"], result["model_calls"]) == (
        "DDPMScheduler",
        None,
        10,
    )
    json.dumps(result, allow_nan=False)
    # The same numbers by hand: samples 0 … 39 of seed 3 in one batch (the shards drew 16 at a
    # time: the same draws, a matmul of other rows rounds apart), then the NLL from seed 3.
    assert result["energy_distance"] == pytest.approx(
        energy_distance(_drawn(point_pipe, 40, 3), test), rel=1e-6
    )
    floor = energy_distance(train[:40], test)
    assert result["energy_distance_floor"] == pytest.approx(floor, rel=1e-12)
    assert floor > 0.05
    assert result["energy_distance_ratio"] == pytest.approx(result["energy_distance"] / floor, rel=1e-9)

    def model_fn(x, t):
        return point_pipe.unet(x.float(), t).sample.double()

    g = torch.Generator().manual_seed(3)
    expected = nll(model_fn, point_pipe.scheduler, test[:10].double(), batch_size=16, generator=g)
    assert result["nll_bits_per_dim"] == pytest.approx(expected.bits_per_dim, rel=1e-6)
    expected_terms = expected.terms_bits_per_dim.tolist()
    assert result["nll_terms_bits_per_dim"] == pytest.approx(expected_terms, rel=1e-6)
    png = plot_vlb_terms_from_metrics(json.loads(json.dumps(result)), tmp_path / "vlb_terms.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    # The samples stay in samples_dir; the same evaluation again reads them, drawing nothing.
    shard = tmp_path / "samples" / "shard-000000.npz"
    written = shard.stat().st_mtime_ns
    assert (
        evaluate(point_pipe, train, test, **{**kw, "nll_examples": 0}).items()
        >= {"energy_distance": result["energy_distance"]}.items()
    )
    assert shard.stat().st_mtime_ns == written


def test_evaluate_points_floor_of_two_real_draws_is_positive(point_pipe):
    """Two draws of one distribution: the floor is the V-statistic's positive bias."""
    train, test = _randn(20, 2, seed=34).float(), _randn(20, 2, seed=35).float()
    result = evaluate(point_pipe, train, test, num_samples=20, batch_size=20, nll_examples=1)
    assert result["energy_distance_floor"] == pytest.approx(energy_distance(train, test), rel=1e-12)
    assert result["energy_distance_floor"] > 0 and result["energy_distance_ratio"] > 0
    assert result["nll_bits_per_dim_std_error"] is None  # one example; strict JSON has no NaN
    json.dumps(result, allow_nan=False)


def test_evaluate_images(image_pipe, tiny_dino):
    train, test = _grid_images(6, seed=32), _grid_images(5, seed=33)
    dino = DINOv2Features(tiny_dino, image_size=None)
    kw = dict(num_samples=4, batch_size=2, nll_examples=2)
    result = evaluate(image_pipe, train, test, features=[dino], **kw)
    pr_keys = {f"{m}_dinov2{floor}" for m in ("precision", "recall") for floor in ("", "_floor")}
    assert set(result) == COMMON_KEYS | {"fd_dinov2", "fd_dinov2_floor", "fd_dinov2_ratio"} | pr_keys
    assert result["kind"] == "images" and result["nll_decoder"] == "discretized"
    assert len(result["nll_terms_bits_per_dim"]) == 10 and result["nll_num_examples"] == 2
    assert result["nll_clip_sample"] is True  # the scheduler's choice, reported
    json.dumps(result, allow_nan=False)
    fake = _drawn(image_pipe, 4)
    assert result["fd_dinov2"] == pytest.approx(fd_dinov2(test, fake, dino), rel=1e-6)
    assert result["fd_dinov2_floor"] == pytest.approx(fd_dinov2(test, train[:4], dino), rel=1e-6)
    expected = precision_recall(dino(test), dino(fake))
    assert (result["precision_dinov2"], result["recall_dinov2"]) == pytest.approx(expected, abs=1e-12)
    floor = precision_recall(dino(test), dino(train[:4]))
    assert (result["precision_dinov2_floor"], result["recall_dinov2_floor"]) == pytest.approx(
        floor, abs=1e-12
    )

    without = evaluate(image_pipe, train, test, **kw)  # no features: the likelihood alone
    assert set(without) == COMMON_KEYS
    assert math.isfinite(without["nll_bits_per_dim"])


def test_evaluate_with_another_sampler_and_no_likelihood(point_pipe):
    train, test = _randn(30, 2, seed=36).float(), _randn(30, 2, seed=37).float()
    kw = dict(num_samples=12, batch_size=12, nll_examples=0, num_inference_steps=4)
    result = evaluate(point_pipe, train, test, sampler="dpm-solver++", **kw)
    assert set(result) == COMMON_KEYS - NLL_KEYS | {
        "energy_distance",
        "energy_distance_floor",
        "energy_distance_ratio",
    }
    assert (result["sampler"], result["num_inference_steps"], result["model_calls"]) == ("dpm-solver++", 4, 4)
    solver = with_sampler(point_pipe, "dpm-solver++")
    fake = torch.cat(
        [
            solver(
                batch_size=1,
                num_inference_steps=4,
                generator=[seeded_generator(0, "sample", i)],
                output_type="pt",
            ).images
            for i in range(12)
        ]
    ).double()
    assert result["energy_distance"] == pytest.approx(energy_distance(fake, test), rel=1e-6)
    assert isinstance(point_pipe.scheduler, DDPMScheduler)  # the caller's pipeline keeps its scheduler


def test_quality_vs_steps_rows_table_and_plot(point_pipe, tmp_path):
    train, test = _randn(30, 2, seed=38).float(), _randn(30, 2, seed=39).float() + 0.3
    samplers = ["ddpm", "unipc", None]  # None: the pipeline's own scheduler
    rows = quality_vs_steps(
        point_pipe,
        train,
        test,
        samplers=samplers,
        steps=[2, 5],
        num_samples=10,
        batch_size=10,
        samples_dir=tmp_path / "s",
    )
    assert [(r["sampler"], r["num_inference_steps"], r["model_calls"]) for r in rows] == [
        ("ddpm", 2, 2),
        ("ddpm", 5, 5),
        ("unipc", 2, 2),
        ("unipc", 5, 5),
        ("DDPMScheduler", 2, 2),
        ("DDPMScheduler", 5, 5),
    ]
    for row, sampler in zip(rows, [name for name in samplers for _ in (2, 5)], strict=True):
        alone = evaluate(  # each row is evaluate's, on its own samples folder
            point_pipe,
            train,
            test,
            num_samples=10,
            batch_size=10,
            nll_examples=0,
            sampler=sampler,
            num_inference_steps=row["num_inference_steps"],
        )
        assert row == alone
        folder = tmp_path / "s" / f"{sampler or 'own'}-{row['num_inference_steps']}"
        assert (folder / "manifest.json").exists()
    assert rows[0]["energy_distance"] != rows[1]["energy_distance"]
    assert rows[0]["energy_distance"] == rows[4]["energy_distance"]  # "ddpm" is its own scheduler
    table = quality_table(rows).splitlines()
    assert table[0] == "| sampler | steps | model calls | energy_distance | floor | ratio |"
    first = rows[0]
    assert table[2] == (
        f"| ddpm | 2 | 2 | {first['energy_distance']:.4g} | {first['energy_distance_floor']:.4g} | "
        f"{first['energy_distance_ratio']:.2f} |"
    )
    assert len(table) == 8
    png = plot_quality_vs_steps(rows, tmp_path / "q.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_evaluate_errors(point_pipe, image_pipe, tiny_dino):
    points = _randn(8, 2).float()
    kw = dict(num_samples=4, batch_size=2, nll_examples=2)
    with pytest.raises(ValueError, match="num_samples=0 must be a positive integer"):
        evaluate(point_pipe, points, points, **{**kw, "num_samples": 0})
    with pytest.raises(ValueError, match=r"nll_examples=-1 must be a whole number ≥ 0 \(0: no likelihood\)"):
        evaluate(point_pipe, points, points, **{**kw, "nll_examples": -1})
    with pytest.raises(ValueError, match="features are for image models; this pipeline's model makes points"):
        evaluate(point_pipe, points, points, features=[DINOv2Features(tiny_dino)], **kw)
    with pytest.raises(ValueError, match="real_train has 3 examples; it needs at least num_samples=4"):
        evaluate(point_pipe, points[:3], points, **kw)
    with pytest.raises(ValueError, match="real_test has 1 examples; it needs at least nll_examples=2"):
        evaluate(point_pipe, points, points[:1], **kw)
    with pytest.raises(
        ValueError, match=r"real_test must be a tensor \(N, 1, 8, 8\) for this model; got \(8,"
    ):
        evaluate(image_pipe, _grid_images(8, 0), points, **kw)
    with pytest.raises(ValueError, match=r"real_train must be a tensor \(N, 2\) for this model; got ndarray"):
        evaluate(point_pipe, points.numpy(), points, **kw)
    with pytest.raises(ValueError, match=r"sampler='euler' is not supported; allowed values: \('ddpm'"):
        evaluate(point_pipe, points, points, sampler="euler", **kw)
    import diffusers

    foreign = DDPMPipeline(unet=point_pipe.unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(
        TypeError,
        match=r"evaluate needs one of this package's schedulers.*not DDPMScheduler \(pass nll_examples=0",
    ):
        evaluate(foreign, points, points, **kw)
    assert "energy_distance" in evaluate(foreign, points, points, **{**kw, "nll_examples": 0})
    with pytest.raises(
        ValueError, match=r"samplers and steps must each name at least one; got \[\] and \[5\]"
    ):
        quality_vs_steps(point_pipe, points, points, samplers=[], steps=[5], num_samples=4, batch_size=2)
    with pytest.raises(ValueError, match="an image model needs features"):
        quality_vs_steps(
            image_pipe,
            _grid_images(8, 0),
            _grid_images(8, 1),
            samplers=["ddim"],
            steps=[5],
            num_samples=4,
            batch_size=2,
        )


# ---- precision and recall ----------------------------------------------------------------------


def _brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al.'s definition with scipy's distances, every pair at once."""

    def radii(x):  # the k-th smallest distance to the others: index k of the sorted row (0 is itself)
        return np.sort(scipy.spatial.distance.cdist(x, x), axis=1)[:, k]

    def share(points, centres, r):
        return float((scipy.spatial.distance.cdist(points, centres) <= r[None, :]).any(axis=1).mean())

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_precision_recall_matches_the_definition(chunk_size):
    generator = np.random.default_rng(0)
    real = generator.normal(size=(60, 5))
    fake = generator.normal(loc=0.8, scale=0.7, size=(45, 5))  # overlapping: neither 0 nor 1
    result = precision_recall(real, fake, k=3, chunk_size=chunk_size)
    assert tuple(result) == pytest.approx(_brute_precision_recall(real, fake, 3), abs=1e-12)
    assert 0.2 < result.precision < 1 and 0.2 < result.recall < 1


def test_precision_recall_by_hand_identical_and_far_apart():
    # 1-D, k = 1. Real 0, 1, 2, 3: every real ball has radius 1. Generated 0.5, 5, 10: radii 4.5,
    # 4.5, 5. Inside the real balls: 0.5 only (5 is 2 from 3) → precision 1/3; every real
    # point is within 4.5 of 0.5 or of 5 → recall 1.
    real, fake = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[0.5], [5.0], [10.0]])
    assert precision_recall(real, fake, k=1) == pytest.approx((1 / 3, 1.0), abs=1e-15)
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("real", "fake", "k", "message"),
    [
        ((10, 3), (4, 3), 4, r"k=4 must be an integer in \[1, 3\]"),
        ((10, 3), (10, 3), 0, r"k=0 must be an integer in \[1, 9\]"),
        ((10, 3), (10, 2), 3, r"real_features and fake_features must have the same width D"),
        ((1, 3), (10, 3), 3, r"real_features has 1 feature rows; at least 2 are needed"),
    ],
)
def test_precision_recall_names_bad_arguments(real, fake, k, message):
    with pytest.raises(ValueError, match=message):
        precision_recall(torch.zeros(real), torch.zeros(fake), k=k)
