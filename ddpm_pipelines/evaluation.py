"""Evaluation (issue 4): how close samples are to the data, and the likelihood bound.

- Points: the energy distance (Székely & Rizzo 2013) of generated points to held-out real
  ones, beside its floor, the distance between two independent real draws.
- Images: FD_DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation
  metrics"), the Fréchet distance between DINOv2 features of generated and real images,
  beside the real-vs-real floor.
- Features of either kind: `frechet_distance`, and improved precision and recall
  (`precision_recall`, Kynkäänniemi et al. 2019).
- Both: the negative log-likelihood bound L_vlb of docs/math.md §5 in bits/dim over a dataset,
  with its per-timestep terms, and their plot as in iDDPM Fig. 2 (Nichol & Dhariwal 2021).

`evaluate(pipe, real_train, real_test, ...)` runs what suits the pipeline and returns a
JSON-serialisable dict.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from schedulers import DiffusionScheduler
from schedulers.base import check_choice

from . import hub
from .losses import DECODERS, Decoder, ModelFn, bits_per_dim, vlb_terms
from .pipeline import DDPMPipeline, _check_count, makes_points

if TYPE_CHECKING:
    from transformers import Dinov2Model

logger = logging.getLogger(__name__)

# The decoder L_0 that suits each kind of data (docs/math.md §5): 8-bit images (B, C, H, W) on the
# 256-level grid of [−1, 1], real-valued points (B, D).
DEFAULT_DECODERS: dict[int, str] = {4: "discretized", 2: "continuous"}
# DINOv2's input normalisation: the ImageNet mean and std of each RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Stein et al.'s dgm-eval resizes to 224×224 (bicubic) before DINOv2.
DINOV2_IMAGE_SIZE = 224
# Rows of the first set per block of pairwise distances: a (1024, M) float64 block, 40 MB at M = 5000.
ENERGY_CHUNK_SIZE = 1024
# evaluate()'s keys for the NLLResult fields: "nll_bits_per_dim", ...
NLL_PREFIX = "nll_"


def _matrix(name: str, x: torch.Tensor | np.ndarray, rows: str) -> torch.Tensor:
    """x as a float64 CPU matrix (N, D), N ≥ 2: a copy, never the caller's tensor."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a matrix of {rows} (N, D); got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has {x.shape[0]} {rows}; at least 2 are needed")
    return x


def _check_widths(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names} must have the same width D; got {a.shape[1]} and {b.shape[1]}")


# ---- Energy distance -------------------------------------------------------------------------


def _distance_sum(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> float:
    """Σ_i Σ_j ‖a_i − b_j‖ over all pairs of a (N, D) and b (M, D), a (chunk, M) block at a time."""
    total = 0.0
    for block in a.split(chunk_size):
        # Direct differences rather than ‖a‖² + ‖b‖² − 2 a·b: a point's distance to itself is exactly 0.
        total += torch.cdist(block, b, compute_mode="donot_use_mm_for_euclid_dist").sum().item()  # (chunk, M)
    return total


def energy_distance(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *, chunk_size: int = ENERGY_CHUNK_SIZE
) -> float:
    """The energy distance between point sets x (N, D) and y (M, D) (Székely & Rizzo 2013):

        E(X, Y) = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖,

    each mean over all pairs, the zero diagonal of the within-set ones included (the
    V-statistic; in 1-D the square of scipy.stats.energy_distance). For finite samples it
    is positive even for two draws of one distribution, about E‖X − X'‖/N + E‖Y − Y'‖/M:
    two real draws of the same sizes give the floor a perfect model would reach. Computed
    in float64, `chunk_size` rows of a set against the other at a time, so memory grows
    with chunk_size · max(N, M).
    """
    _check_count("chunk_size", chunk_size)
    x, y = _matrix("x", x, "points"), _matrix("y", y, "points")
    _check_widths(x, y, "x and y")
    n, m = x.shape[0], y.shape[0]
    between = _distance_sum(x, y, chunk_size) / (n * m)
    within_x = _distance_sum(x, x, chunk_size) / (n * n)
    within_y = _distance_sum(y, y, chunk_size) / (m * m)
    return 2 * between - within_x - within_y


# ---- Fréchet distance ------------------------------------------------------------------------


def _mean_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean (F,) and covariance (F, F) of x (N, F), normalised by N − 1 as numpy.cov."""
    mean = x.mean(dim=0)
    centred = x - mean  # (N, F)
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix (F, F) by eigh: V diag(√λ) Vᵀ, with
    rounding-level negative eigenvalues taken as 0."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)
    (Heusel et al. 2017, FID; Dowson & Landau 1982), in float64:

        d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}).

    Tr (Σ_a Σ_b)^{1/2} is Σ_i √λ_i with λ_i the eigenvalues of Σ_a Σ_b, which equal those of
    the symmetric PSD matrix S Σ_b S, S = Σ_a^{1/2} (XY and YX share eigenvalues, X = S,
    Y = S Σ_b). Taking them with `eigvalsh` gives them real and ≥ 0 (rounding-level negatives
    clamped to 0) — no complex scipy.linalg.sqrtm and no imaginary parts to drop, as
    pytorch-fid must. It equals the sqrtm form wherever that one is accurate, and stays
    real for singular covariances (N ≤ F), there accurate to about √ε times their scale (the
    square root's own conditioning at 0). A rounding-level negative d² is returned as 0.
    """
    a = _matrix("features_a", features_a, "feature rows")
    b = _matrix("features_b", features_b, "feature rows")
    _check_widths(a, b, "features_a and features_b")
    mean_a, cov_a = _mean_covariance(a)
    mean_b, cov_b = _mean_covariance(b)
    s = _sqrt_psd(cov_a)  # (F, F)
    middle = s @ cov_b @ s  # (F, F), symmetric PSD
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(d2.item(), 0.0)


# ---- Precision and recall --------------------------------------------------------------------


class PrecisionRecall(NamedTuple):
    precision: float  # the share of generated samples inside the real manifold
    recall: float  # the share of real samples inside the generated manifold


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """(N,): the distance from each row of x (N, D) to its k-th nearest other row."""
    radii = [
        torch.cdist(block, x, compute_mode="donot_use_mm_for_euclid_dist").kthvalue(k + 1, dim=1).values
        for block in x.split(chunk_size)  # (chunk, N); the smallest, its own 0, is not a neighbour
    ]
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    """The share of `points` (M, D) within radii[j] of some centres[j] (N, D)."""
    inside = [
        (torch.cdist(block, centres, compute_mode="donot_use_mm_for_euclid_dist") <= radii).any(dim=1)
        for block in points.split(chunk_size)  # (chunk, N) against (N,)
    ]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    k: int = 3,
    *,
    chunk_size: int = ENERGY_CHUNK_SIZE,
) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated features (M, D)
    against real ones (N, D), in float64. Each set's manifold is the union of balls around
    its rows, each reaching the row's k-th nearest neighbour in its own set; precision is the
    share of generated rows inside the real manifold (how many samples look real), recall
    the share of real rows inside the generated one (how much of the data the model
    covers). The paper's k = 3, in Inception or DINOv2 features. `chunk_size` rows at a
    time against the other set, so memory grows with chunk_size · max(N, M)."""
    _check_count("chunk_size", chunk_size)
    real = _matrix("real_features", real_features, "feature rows")
    fake = _matrix("fake_features", fake_features, "feature rows")
    _check_widths(real, fake, "real_features and fake_features")
    fewest = min(real.shape[0], fake.shape[0])
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k < fewest):
        raise ValueError(f"k={k!r} must be an integer in [1, {fewest - 1}] (fewer than the rows of each set)")
    real_radii = _kth_neighbour_radii(real, k, chunk_size)
    fake_radii = _kth_neighbour_radii(fake, k, chunk_size)
    return PrecisionRecall(
        precision=_share_inside(fake, real, real_radii, chunk_size),
        recall=_share_inside(real, fake, fake_radii, chunk_size),
    )


# ---- FD_DINOv2 -------------------------------------------------------------------------------


def _dinov2_class() -> type[Dinov2Model]:
    try:
        from transformers import Dinov2Model
    except ImportError as error:
        raise ImportError(
            "DINOv2 features need transformers: pip install transformers (or the [train] extra)"
        ) from error
    return Dinov2Model


class DINOv2Features:
    """DINOv2 image features for FD_DINOv2 (Stein et al. 2023): the CLS token of the last
    layer, after its LayerNorm (transformers' `pooler_output`).

    model: a transformers `Dinov2Model`, or a name or path for `Dinov2Model.from_pretrained`,
        loaded on first use. Stein et al. report with ViT-L/14, "facebook/dinov2-large".
    device: where the model runs; a given model is moved there. Default: a given model stays
        where it is, a loaded one goes to CUDA when available, else the CPU.
    image_size: the side images are resized to: 224, as Stein et al.'s dgm-eval, by default;
        None for the model's `config.image_size` (518 for facebook/dinov2-*, the size of its
        position-embedding table, which the model interpolates for other sizes).

    The model is put in eval mode. `features(images)` with images (B, C, H, W) in [−1, 1],
    C = 1 (grey, repeated to RGB) or 3, returns (B, hidden) float64 on the CPU.
    """

    def __init__(
        self,
        model: Dinov2Model | str | os.PathLike = "facebook/dinov2-base",
        device: str | torch.device | None = None,
        image_size: int | None = DINOV2_IMAGE_SIZE,
    ):
        if image_size is not None:
            _check_count("image_size", image_size)
        self.image_size = image_size
        self.device = None if device is None else torch.device(device)
        self._model: Dinov2Model | None = None
        self._name: str | os.PathLike | None = None
        if isinstance(model, (str, os.PathLike)):
            self._name = model
        elif isinstance(model, _dinov2_class()):
            self._model = (model if self.device is None else model.to(self.device)).eval()
        else:
            raise TypeError(
                f"model must be a transformers Dinov2Model or a name or path, not {type(model).__name__}"
            )

    @property
    def model(self) -> Dinov2Model:
        """The DINOv2 model, loaded with `from_pretrained` the first time it is needed."""
        if self._model is None:
            logger.info("loading DINOv2 from %s", self._name)
            device = self.device
            if device is None:
                device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self._model = _dinov2_class().from_pretrained(self._name).to(device).eval()
        return self._model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """CLS features (B, hidden) float64 on the CPU of images (B, C, H, W) in [−1, 1],
        `batch_size` images at a time."""
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.shape[0] < 1 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be (B, C, H, W) with B ≥ 1 and C = 1 or 3, in [−1, 1]; "
                f"got shape {tuple(images.shape)}"
            )
        _check_count("batch_size", batch_size)
        model = self.model
        size = self.image_size or model.config.image_size
        mean = torch.tensor(IMAGENET_MEAN, device=model.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=model.device).view(1, 3, 1, 1)
        features = []
        for batch in images.split(batch_size):
            x = (batch.to(model.device, torch.float32) + 1) / 2  # [−1, 1] → [0, 1]: (b, C, H, W)
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            x = (x.expand(-1, 3, -1, -1) - mean) / std  # grey → RGB, normalised: (b, 3, S, S)
            cls = model(pixel_values=x.to(model.dtype)).pooler_output  # (b, hidden)
            features.append(cls.to("cpu", torch.float64))
        return torch.cat(features)


def fd_dinov2(
    real: torch.Tensor, fake: torch.Tensor, features: DINOv2Features, batch_size: int = 64
) -> float:
    """FD_DINOv2 (Stein et al. 2023): the Fréchet distance between the DINOv2 features of
    images `real` and `fake`, both (B, C, H, W) in [−1, 1]."""
    return frechet_distance(features(real, batch_size), features(fake, batch_size))


# ---- Negative log-likelihood -----------------------------------------------------------------


@dataclass
class NLLResult:
    """The variational bound on −log p_θ(x_0) (docs/math.md §5) over a dataset, in bits/dim.

    bits_per_dim: the mean over examples of L_vlb = L_T + Σ_t L_t.
    bits_per_dim_std_error: its standard error, std / √N (NaN for one example).
    terms_bits_per_dim: (K,) the mean of each term, at the train timesteps `timesteps`;
        column 0 is the decoder's L_0, the others the KL terms (iDDPM Fig. 2).
    prior_bits_per_dim: the mean L_T. terms_bits_per_dim.sum() + prior_bits_per_dim equals
        bits_per_dim.
    num_examples: N. decoder: the L_0 decoder used, "discretized" or "continuous".
    timesteps: the chain's K train timesteps, ascending (all T: 0..T−1).
    clip_sample: whether x̂_0 was clipped in p_θ, as the scheduler's clip_sample says.
    """

    bits_per_dim: float
    bits_per_dim_std_error: float
    terms_bits_per_dim: torch.Tensor
    prior_bits_per_dim: float
    num_examples: int
    decoder: str
    timesteps: list[int]
    clip_sample: bool

    def to_dict(self) -> dict[str, Any]:
        """The fields as strict-JSON values: the terms as a list of T floats, a NaN standard
        error (one example) as None."""
        std_error = None if math.isnan(self.bits_per_dim_std_error) else self.bits_per_dim_std_error
        return {
            "bits_per_dim": self.bits_per_dim,
            "bits_per_dim_std_error": std_error,
            "terms_bits_per_dim": self.terms_bits_per_dim.tolist(),
            "prior_bits_per_dim": self.prior_bits_per_dim,
            "num_examples": self.num_examples,
            "decoder": self.decoder,
            "timesteps": self.timesteps,
            "clip_sample": self.clip_sample,
        }

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> NLLResult:
        """The NLL in a dict `evaluate` returned (its "nll_" keys)."""
        prefix = NLL_PREFIX
        return cls.from_dict({k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)})

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> NLLResult:
        """The inverse of `to_dict`."""
        std_error = fields["bits_per_dim_std_error"]
        return cls(
            bits_per_dim=fields["bits_per_dim"],
            bits_per_dim_std_error=math.nan if std_error is None else std_error,
            terms_bits_per_dim=torch.tensor(fields["terms_bits_per_dim"], dtype=torch.float64),
            prior_bits_per_dim=fields["prior_bits_per_dim"],
            num_examples=fields["num_examples"],
            decoder=fields["decoder"],
            timesteps=fields["timesteps"],
            clip_sample=fields["clip_sample"],
        )


def nll(
    model_fn: ModelFn,
    scheduler: DiffusionScheduler,
    data: torch.Tensor,
    *,
    batch_size: int = 64,
    decoder: Decoder | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    timesteps: Sequence[int] | None = None,
) -> NLLResult:
    """The negative log-likelihood bound L_vlb of docs/math.md §5 of every example of `data`
    (N, ...), all T terms each (one draw of x_t per term, `vlb_terms`), `batch_size`
    examples at a time, averaged in bits/dim (nats / (D · ln 2), D = the numel of one example).

    decoder: the L_0 decoder, "discretized" (8-bit images in [−1, 1]) or "continuous";
        default "discretized" for image data (N, C, H, W), "continuous" for points (N, D).
    timesteps: a descending chain of train timesteps: the bound of that K-step chain
        (`vlb_terms`); None: all T.
    The terms are computed in data's dtype (float64 for the most accurate bound) on its device;
    x̂_0 is clipped as the scheduler's clip_sample says (reported in the result).
    """
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] < 1:
        raise ValueError(
            "data must be a tensor of N ≥ 1 examples, (N, C, H, W) images or (N, D) points; got "
            + (f"shape {tuple(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__)
        )
    if decoder is None:
        if data.dim() not in DEFAULT_DECODERS:
            raise ValueError(
                f"no default decoder for data of shape {tuple(data.shape)} (images (N, C, H, W) or "
                f"points (N, D)); pass decoder= one of {DECODERS}"
            )
        decoder = DEFAULT_DECODERS[data.dim()]
    check_choice("decoder", decoder, DECODERS)
    _check_count("batch_size", batch_size)
    n, num_dims = data.shape[0], data[0].numel()
    totals = []  # (b,) per batch, nats
    terms_sum = torch.zeros((), dtype=torch.float64)  # (K,) nats, once the first batch is in
    prior_sum = torch.zeros((), dtype=torch.float64)
    for batch in data.split(batch_size):
        vlb = vlb_terms(
            model_fn, scheduler, batch, decoder, generator=generator, progress=progress, timesteps=timesteps
        )
        totals.append(vlb.total.to("cpu", torch.float64))
        terms_sum = terms_sum + vlb.terms.sum(dim=0).to("cpu", torch.float64)
        prior_sum += vlb.prior.sum().to("cpu", torch.float64)
    total_bits = bits_per_dim(torch.cat(totals), num_dims)  # (N,)
    std_error = (total_bits.std() / math.sqrt(n)).item() if n > 1 else math.nan
    return NLLResult(
        bits_per_dim=total_bits.mean().item(),
        bits_per_dim_std_error=std_error,
        terms_bits_per_dim=bits_per_dim(terms_sum / n, num_dims),
        prior_bits_per_dim=bits_per_dim(prior_sum / n, num_dims).item(),
        num_examples=n,
        decoder=decoder,
        timesteps=vlb.timesteps.tolist(),
        clip_sample=bool(scheduler.config.clip_sample),
    )


# ---- Plot ------------------------------------------------------------------------------------


def plot_vlb_terms(results: dict[str, NLLResult], path: str | os.PathLike) -> Path:
    """Plot each result's per-timestep term L_t (bits/dim) against t on a log y-axis, one line
    per label, as iDDPM Fig. 2, and save it as a PNG at `path`, atomically (written in a
    temporary file beside it, then moved into place with os.replace). Terms ≤ 0 (a
    continuous decoder's L_0 can be) cannot be drawn on a log axis and are left out.
    Returns the path."""
    if not results:
        raise ValueError("results is empty; give {label: NLLResult}")
    for label, result in results.items():
        if not isinstance(result, NLLResult):
            raise TypeError(f"results[{label!r}] must be an NLLResult, not {type(result).__name__}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plot_vlb_terms needs matplotlib: pip install matplotlib (or the [demo] extra)"
        ) from error

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    for label, result in results.items():
        ax.plot(result.timesteps, result.terms_bits_per_dim.numpy(), label=label)  # (K,)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("diffusion step t")
    ax.set_ylabel("loss term L_t (bits/dim)")
    ax.set_title("Terms of the variational bound")
    ax.legend()
    fig.tight_layout()

    return hub.write_file_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_vlb_terms_from_metrics(
    metrics: dict[str, Any], path: str | os.PathLike, label: str = "L_vlb"
) -> Path:
    """`plot_vlb_terms` of the NLL in a dict `evaluate` returned (or its JSON, read back)."""
    return plot_vlb_terms({label: NLLResult.from_metrics(metrics)}, path)


# ---- All of it -------------------------------------------------------------------------------


def as_model_fn(unet: torch.nn.Module) -> ModelFn:
    """A diffusers-style model (`unet(x, t).sample`) as the `model_fn(x_t, t)` that `nll`,
    `vlb_terms` and `analytic.estimate_gamma` take: the model in its own dtype, the bound in
    x_t's."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x_t.to(unet.dtype), t).sample.to(x_t.dtype)

    return model_fn


def _generate(pipe: DDPMPipeline, num_samples: int, batch_size: int, generator: Any) -> torch.Tensor:
    """num_samples samples, batch_size at a time, as float64 on the CPU: images in [0, 1]
    (N, C, H, W) or points in data units (N, D)."""
    full, rest = divmod(num_samples, batch_size)
    sizes = [batch_size] * full + ([rest] if rest else [])
    out = [pipe(batch_size=b, generator=generator, output_type="pt").images for b in sizes]
    return torch.cat(out).to("cpu", torch.float64)


def _ratio(value: float, floor: float) -> float | None:
    return value / floor if floor > 0 else None


def evaluate(
    pipe: DDPMPipeline,
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    *,
    num_samples: int,
    batch_size: int,
    nll_examples: int,
    generator: torch.Generator | None = None,
    dino: DINOv2Features | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a pipeline against real data: images (N, C, H, W) in [−1, 1] for an image
    model, points (N, D) in data units for a point model (MLPModel).

    For points, and for images when `dino` is given, draws `num_samples` samples
    (`batch_size` at a time, from `generator`; the sampling progress bars follow
    `pipe.set_progress_bar_config`) and compares them with `real_test`; the floor compares
    real_train[:num_samples] with real_test, two independent real draws of the same sizes:
    what a perfect model would score at these sizes. Then the NLL bound (`nll`) on
    real_test[:nll_examples], in float64, with the pipeline's scheduler and `generator`.

    Returns a JSON-serialisable dict:
    - "kind": "points" or "images"; "num_samples"; "num_train_timesteps": T.
    - points: "energy_distance" (generated vs real_test), "energy_distance_floor" (real_train
      vs real_test), "energy_distance_ratio" (their ratio: 1 is as good as real data).
    - images, only when `dino` is given: "fd_dinov2" (generated vs real_test, the generated
      images mapped from [0, 1] to [−1, 1]), "fd_dinov2_floor" (real_train vs real_test),
      "fd_dinov2_ratio" (None where the floor is 0).
    - the NLL, `NLLResult.to_dict()` with each key prefixed "nll_": "nll_bits_per_dim",
      "nll_bits_per_dim_std_error" (None for one example), "nll_terms_bits_per_dim" (a list of
      T floats), "nll_prior_bits_per_dim", "nll_num_examples", "nll_decoder", "nll_timesteps"
      (0..T−1), "nll_clip_sample" (whether the scheduler clipped x̂_0 in the bound).
    """
    for name, value in (
        ("num_samples", num_samples),
        ("batch_size", batch_size),
        ("nll_examples", nll_examples),
    ):
        _check_count(name, value)
    if not isinstance(pipe.scheduler, DiffusionScheduler):
        raise TypeError(
            "evaluate needs one of this package's schedulers (DDPMScheduler, DDIMScheduler) for the "
            f"likelihood, not {type(pipe.scheduler).__name__}"
        )
    points = makes_points(pipe.unet)
    if points and dino is not None:
        raise ValueError("dino is for image models; this pipeline's model makes points (pass dino=None)")
    shape = pipe.sample_shape(1)[1:]
    for name, data, needed in (
        ("real_train", real_train, num_samples),
        ("real_test", real_test, nll_examples),
    ):
        if not isinstance(data, torch.Tensor) or tuple(data.shape[1:]) != shape:
            got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(
                f"{name} must be a tensor (N, {', '.join(map(str, shape))}) for this model; got {got}"
            )
        if data.shape[0] < needed:
            what = "num_samples" if name == "real_train" else "nll_examples"
            raise ValueError(f"{name} has {data.shape[0]} examples; it needs at least {what}={needed}")

    result: dict[str, Any] = {
        "kind": "points" if points else "images",
        "num_samples": num_samples,
        "num_train_timesteps": pipe.scheduler.config.num_train_timesteps,
    }
    if points:
        fake = _generate(pipe, num_samples, batch_size, generator)  # (N, D)
        value = energy_distance(fake, real_test)
        floor = energy_distance(real_train[:num_samples], real_test)
        result.update(
            energy_distance=value, energy_distance_floor=floor, energy_distance_ratio=_ratio(value, floor)
        )
    elif dino is not None:
        fake = _generate(pipe, num_samples, batch_size, generator) * 2 - 1  # (N, C, H, W), [0, 1] → [−1, 1]
        test_features = dino(real_test, batch_size)
        value = frechet_distance(dino(fake, batch_size), test_features)
        floor = frechet_distance(dino(real_train[:num_samples], batch_size), test_features)
        result.update(fd_dinov2=value, fd_dinov2_floor=floor, fd_dinov2_ratio=_ratio(value, floor))

    data = real_test[:nll_examples].to(pipe.device, torch.float64)
    likelihood = nll(
        as_model_fn(pipe.unet),
        pipe.scheduler,
        data,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )
    result.update({NLL_PREFIX + key: value for key, value in likelihood.to_dict().items()})
    logger.info(
        "evaluation: %s", {key: value for key, value in result.items() if not isinstance(value, list)}
    )
    return result
