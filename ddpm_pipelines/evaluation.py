"""Evaluation: how close samples are to the data, and the likelihood bound.

- Points: the energy distance (Székely & Rizzo 2013) of generated points to held-out real
  ones, beside its floor, the distance between two independent real draws.
- Images: FID (Heusel et al. 2017) in the TensorFlow Inception-v3's pool3 features, as
  torch-fidelity ports it (`InceptionFeatures`), and FD_DINOv2 (Stein et al. 2023, "Exposing
  flaws of generative model evaluation metrics") in DINOv2's (`DINOv2Features`), each with
  improved precision and recall (Kynkäänniemi et al. 2019) and beside its real-vs-real floor;
  the real sets' `FeatureStatistics` saved as .npz and reused (`RealFeatures`).
- Features of either kind: `frechet_distance`, `precision_recall`.
- Both: the negative log-likelihood bound L_vlb of docs/math.md §5 in bits/dim over a dataset,
  with its per-timestep terms, and their plot as in iDDPM Fig. 2 (Nichol & Dhariwal 2021).

`evaluate(pipe, real_train, real_test, ...)` draws samples with `shards.sample_to_shards`,
measures them (`sample_quality`) and the likelihood, and returns a JSON-serialisable dict;
`quality_vs_steps` measures each sampler at each number of steps, for `quality_table` and
`plot_quality_vs_steps`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from schedulers import DiffusionScheduler
from schedulers.base import check_choice

from . import hub
from .images import to_uint8
from .losses import DECODERS, Decoder, ModelFn, bits_per_dim, vlb_terms
from .pipeline import DDPMPipeline, _check_count, makes_points, with_sampler
from .shards import fingerprint, read_shards, sample_to_shards

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


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix (F, F) by eigh: V diag(√λ) Vᵀ, with
    rounding-level negative eigenvalues taken as 0."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(
    features_a: torch.Tensor | np.ndarray | FeatureStatistics,
    features_b: torch.Tensor | np.ndarray | FeatureStatistics,
) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)
    (Heusel et al. 2017, FID; Dowson & Landau 1982), in float64; either side may be given by
    its `FeatureStatistics` instead (saved reference statistics):

        d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}).

    Tr (Σ_a Σ_b)^{1/2} is Σ_i √λ_i with λ_i the eigenvalues of Σ_a Σ_b, which equal those of
    the symmetric PSD matrix S Σ_b S, S = Σ_a^{1/2} (XY and YX share eigenvalues, X = S,
    Y = S Σ_b). Taking them with `eigvalsh` gives them real and ≥ 0 (rounding-level negatives
    clamped to 0) — no complex scipy.linalg.sqrtm and no imaginary parts to drop, as
    pytorch-fid must. It equals the sqrtm form wherever that one is accurate, and stays
    real for singular covariances (N ≤ F), there accurate to about √ε times their scale (the
    square root's own conditioning at 0). A rounding-level negative d² is returned as 0.
    """
    mean_a, cov_a = _mean_covariance("features_a", features_a)
    mean_b, cov_b = _mean_covariance("features_b", features_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(
            "features_a and features_b must have the same width D; "
            f"got {mean_a.shape[0]} and {mean_b.shape[0]}"
        )
    s = _sqrt_psd(cov_a)  # (F, F)
    middle = s @ cov_b @ s  # (F, F), symmetric PSD
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(d2.item(), 0.0)


@dataclass(frozen=True)
class FeatureStatistics:
    """What a set of image features contributes to FID and precision/recall: the mean `mu`
    (F,) and covariance `sigma` (F, F) (normalised by N − 1, as numpy.cov), and the features
    themselves (N, F) for precision/recall, or None. `extractor` names the network and its
    weights (`InceptionFeatures.name`, `DINOv2Features.name`); "" where unknown.

    `save(path)` writes an .npz with the keys `mu` and `sigma` that pytorch-fid's and the ADM
    suite's statistics files use (and `features`, `extractor`); `load(path)` reads such a
    file, theirs included (a CIFAR-10 train set's, say), with numpy's pickle-free loader."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    extractor: str = ""

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray, extractor: str = "") -> FeatureStatistics:
        """The statistics of features (N, F), N ≥ 2, keeping the features (as float32)."""
        x = _matrix("features", features, "feature rows")
        mean, covariance = _mean_covariance("features", x)
        return cls(mean.numpy(), covariance.numpy(), x.float().numpy(), extractor)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics to an .npz file at `path`, atomically."""
        arrays = {"mu": self.mu, "sigma": self.sigma, "extractor": np.array(self.extractor)}
        if self.features is not None:
            arrays["features"] = self.features

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as file:  # a file, so that numpy does not add ".npz" to the name
                np.savez(file, **arrays)

        return hub.write_file_atomically(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Statistics saved by `save`, or any .npz with `mu` (F,) and `sigma` (F, F)."""
        with np.load(path, allow_pickle=False) as file:
            if "mu" not in file or "sigma" not in file:
                raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (it holds {sorted(file.files)})")
            mu, sigma = file["mu"].astype(np.float64), file["sigma"].astype(np.float64)
            features = file["features"] if "features" in file else None
            extractor = str(file["extractor"]) if "extractor" in file else ""
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: mu must be (F,) and sigma (F, F); got {mu.shape} and {sigma.shape}")
        return cls(mu, sigma, features, extractor)


def _mean_covariance(name: str, x: torch.Tensor | np.ndarray | FeatureStatistics) -> tuple[torch.Tensor, ...]:
    """The float64 mean (F,) and covariance (F, F) of features (N, F), normalised by N − 1 as
    numpy.cov, or those of their statistics."""
    if isinstance(x, FeatureStatistics):
        return torch.from_numpy(x.mu).double(), torch.from_numpy(x.sigma).double()
    x = _matrix(name, x, "feature rows")
    mean = x.mean(dim=0)
    centred = x - mean  # (N, F)
    return mean, centred.T @ centred / (x.shape[0] - 1)


# ---- Precision and recall --------------------------------------------------------------------


class PrecisionRecall(NamedTuple):
    precision: float  # the share of generated samples inside the real manifold
    recall: float  # the share of real samples inside the generated manifold


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """(N,): the distance from each row of x (N, D) to its k-th nearest other row."""
    radii = [
        torch.cdist(block, x).kthvalue(k + 1, dim=1).values
        for block in x.split(chunk_size)  # (chunk, N); the smallest, its own 0, is not a neighbour
    ]
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    """The share of `points` (M, D) within radii[j] of some centres[j] (N, D)."""
    inside = [
        (torch.cdist(block, centres) <= radii).any(dim=1)
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
    time against the other set, so memory grows with chunk_size · max(N, M); distances of
    sets above 25 rows through matrix products (torch.cdist's default: 18× faster at 2048
    dimensions, and exact to rounding, which moves only points on a ball's very edge)."""
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

    metric = "fd_dinov2"  # evaluate()'s key for the Fréchet distance in these features
    tag = "dinov2"  # and the suffix of its precision and recall

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

    @functools.cached_property
    def name(self) -> str:
        """The network and its weights, for cached statistics: "dinov2-" and their sha256's start."""
        return "dinov2-" + fingerprint(self.model)[:16]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """CLS features (B, hidden) float64 on the CPU of images (B, C, H, W) in [−1, 1],
        `batch_size` images at a time."""
        batches = _image_batches(images, batch_size)
        model = self.model
        size = self.image_size or model.config.image_size
        mean = torch.tensor(IMAGENET_MEAN, device=model.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=model.device).view(1, 3, 1, 1)
        features = []
        for batch in batches:
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


# ---- FID's Inception network -----------------------------------------------------------------

# The weights of torch-fidelity's port of the TensorFlow Inception-v3 graph that FID is defined
# with (Heusel et al. 2017; the 2015-12-05 graph's pool3 features): the file torch.hub caches them
# in, and the start of its sha256 (torch.hub's naming convention, checked on download and load).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_SHA256 = "6726825d"


def _fidelity_inception() -> Any:
    try:
        from torch_fidelity import feature_extractor_inceptionv3
    except ImportError as error:
        raise ImportError(
            "FID's Inception network comes from torch-fidelity: "
            "pip install torch-fidelity (or the [train] extra)"
        ) from error
    return feature_extractor_inceptionv3


def inception_weights_path() -> Path:
    """Where the Inception weights are cached: torch.hub's checkpoints folder
    ($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inception_weights(weights: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The Inception state dict: from a .safetensors file, or from torch.hub's cache (downloaded
    there first where the network allows), never by unpickling a file of unknown origin."""
    if weights is not None:
        path = Path(weights)
        if path.suffix != ".safetensors":
            raise ValueError(
                f"Inception weights must be a .safetensors file, not {path} (only safetensors are "
                f"loaded from a path; torch-fidelity's own .pth goes to {inception_weights_path()})"
            )
        return load_file(path)
    path = inception_weights_path()
    url = _fidelity_inception().URL_INCEPTION_V3
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=INCEPTION_WEIGHTS_SHA256)
        except OSError as error:  # urllib's URLError included: offline
            raise OSError(
                f"FID needs torch-fidelity's Inception weights, which are not in {path} and could not "
                f"be downloaded ({error}). Download {url} on a machine with network and copy it to "
                f"{path} (or set TORCH_HOME), or pass the weights as a .safetensors file "
                f"(--inception-weights)"
            ) from error
    digest = _sha256(path)
    if not digest.startswith(INCEPTION_WEIGHTS_SHA256):
        raise ValueError(
            f"{path} is not torch-fidelity's Inception weights: its sha256 starts {digest[:8]}, "
            f"not {INCEPTION_WEIGHTS_SHA256}; delete it to download them again"
        )
    # The file whose hash torch.hub's convention names, read with torch's tensors-only loader.
    return torch.load(path, map_location="cpu", weights_only=True)


class InceptionFeatures:
    """FID's features: the 2048 pool3 activations of the TensorFlow Inception-v3 that FID is
    defined with, as ported by torch-fidelity (its network, its TensorFlow-exact bilinear
    resize to 299×299, its weights); the FID of pytorch-fid, torch-fidelity and the papers.

    weights: a .safetensors file of the network's state dict; default torch-fidelity's weights
        from torch.hub's cache (`inception_weights_path()`), downloaded there if missing and
        the network allows, else an error that says how to get them.
    device: where the network runs; default CUDA when available, else the CPU.

    `features(images)` with images (B, C, H, W) in [−1, 1], C = 1 (grey, repeated to RGB) or
    3, returns (B, 2048) float64 on the CPU; the network sees them as 8-bit pixels.
    """

    metric = "fid"  # evaluate()'s key for the Fréchet distance in these features
    tag = "inception"  # and the suffix of its precision and recall

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
        state = _inception_weights(weights)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # torch-fidelity takes its weights as a file; these are our own bytes
        buffer.seek(0)
        network = _fidelity_inception().FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = network.to(device)
        self.name = "inception-" + fingerprint(network)[:16]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """pool3 features (B, 2048) float64 on the CPU of images (B, C, H, W) in [−1, 1]."""
        device = next(self.model.parameters()).device
        features = []
        for batch in _image_batches(images, batch_size):
            pixels = to_uint8((batch.float() + 1) / 2).expand(-1, 3, -1, -1)  # 8-bit RGB (b, 3, H, W)
            (pool3,) = self.model(pixels.to(device))  # (b, 2048)
            features.append(pool3.to("cpu", torch.float64))
        return torch.cat(features)


def _image_batches(images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """images (B, C, H, W) in [−1, 1], C = 1 or 3, checked, in batches of batch_size."""
    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[0] < 1 or images.shape[1] not in (1, 3):
        raise ValueError(
            "images must be (B, C, H, W) with B ≥ 1 and C = 1 or 3, in [−1, 1]; "
            f"got shape {tuple(images.shape)}"
        )
    _check_count("batch_size", batch_size)
    return images.split(batch_size)


ImageFeatures = Union["InceptionFeatures", "DINOv2Features"]


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
    fig = _figure()
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


def _figure() -> Any:
    """A 6×4-inch matplotlib Figure on the Agg backend, without touching pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the plots need matplotlib: pip install matplotlib (or the [demo] extra)"
        ) from error
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    return fig


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


def _samples(
    pipe: DDPMPipeline,
    out_dir: str | os.PathLike,
    num_samples: int,
    batch_size: int,
    seed: int,
    num_inference_steps: int | None,
    progress: bool,
) -> torch.Tensor:
    """Samples 0 … num_samples − 1 of `pipe` by `sample_to_shards` in `out_dir` (drawn, the rest
    of a killed run drawn, or a finished run's read as it is), from memory-light shards:
    images (N, C, H, W) float32 in [−1, 1] (through their 8 bits), points (N, D) float64."""
    sample_to_shards(
        pipe,
        out_dir,
        num_samples,
        batch_size=batch_size,
        seed=seed,
        num_inference_steps=num_inference_steps,
        rank=0,
        world=1,
        progress=progress,
    )
    samples = torch.from_numpy(read_shards(out_dir))
    if samples.dtype == torch.uint8:  # (N, H, W, C) pixels
        return samples.permute(0, 3, 1, 2).float() / 127.5 - 1
    return samples.double()


class RealFeatures:
    """The feature statistics of real image sets, computed once per network and set. With a
    `folder`, each is saved there as a `FeatureStatistics` .npz named by the network's weights
    and the images' sha256, and later runs read it instead of computing it again."""

    def __init__(self, folder: str | os.PathLike | None = None, batch_size: int = 64):
        _check_count("batch_size", batch_size)
        self.folder = None if folder is None else Path(folder)
        self.batch_size = batch_size
        self._known: dict[str, FeatureStatistics] = {}

    def __call__(self, extractor: ImageFeatures, images: torch.Tensor) -> FeatureStatistics:
        digest = hashlib.sha256(str(tuple(images.shape)).encode())
        digest.update(images.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        key = f"{extractor.name}-{digest.hexdigest()[:20]}"
        if key not in self._known:
            path = None if self.folder is None else self.folder / f"{key}.npz"
            if path is not None and path.exists():
                logger.info("reading the real images' statistics from %s", path)
                self._known[key] = FeatureStatistics.load(path)
            else:
                self._known[key] = FeatureStatistics.of(extractor(images, self.batch_size), extractor.name)
                if path is not None:
                    self._known[key].save(path)
        return self._known[key]


def _ratio(value: float, floor: float) -> float | None:
    return value / floor if floor > 0 else None


def sample_quality(
    fake: torch.Tensor,
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    *,
    features: Sequence[ImageFeatures] = (),
    reference: FeatureStatistics | None = None,
    real_features: RealFeatures | None = None,
    batch_size: int = 64,
) -> dict[str, float | None]:
    """How close samples `fake` are to the real `real_test`, each figure beside its floor: the
    same figure for real_train[:N] (N = len(fake)), a real set of the same size, what a
    perfect model would score. Points (N, D): "energy_distance", "energy_distance_floor",
    "energy_distance_ratio". Images (N, C, H, W) in [−1, 1], for each of `features`
    (InceptionFeatures: "fid"; DINOv2Features: "fd_dinov2"): the Fréchet distance with its
    "_floor" and "_ratio" (None where the floor is 0), and where the real side has its
    features, "precision_<tag>" and "recall_<tag>" (k = 3; tag "inception" or "dinov2"),
    each with its "_floor". `reference` replaces real_test's Inception statistics (a saved
    set's, such as CIFAR-10's train set, for FID as the papers report it); `real_features`
    computes (and may cache) the real sides."""
    real_features = real_features or RealFeatures(batch_size=batch_size)
    n = fake.shape[0]
    if fake.dim() == 2:
        value = energy_distance(fake, real_test)
        floor = energy_distance(real_train[:n], real_test)
        return {
            "energy_distance": value,
            "energy_distance_floor": floor,
            "energy_distance_ratio": _ratio(value, floor),
        }
    result: dict[str, float | None] = {}
    for extractor in features:
        if reference is not None and extractor.metric == "fid":
            if reference.extractor and reference.extractor != extractor.name:
                raise ValueError(
                    f"the reference statistics are of {reference.extractor}, not of {extractor.name}"
                )
            test = reference
        else:
            test = real_features(extractor, real_test)
        train = real_features(extractor, real_train[:n])
        generated = FeatureStatistics.of(extractor(fake, batch_size), extractor.name)
        value, floor = frechet_distance(generated, test), frechet_distance(train, test)
        metric = extractor.metric
        result.update({metric: value, f"{metric}_floor": floor, f"{metric}_ratio": _ratio(value, floor)})
        if test.features is not None:
            got, best = (
                precision_recall(test.features, generated.features),
                precision_recall(test.features, train.features),
            )
            tag = extractor.tag
            result.update(
                {
                    f"precision_{tag}": got.precision,
                    f"recall_{tag}": got.recall,
                    f"precision_{tag}_floor": best.precision,
                    f"recall_{tag}_floor": best.recall,
                }
            )
    return result


def model_calls(pipe: DDPMPipeline, num_inference_steps: int | None) -> int:
    """The model evaluations per sample of `pipe` at `num_inference_steps` (None: all T): one
    per step of its scheduler's chain, the single-call samplers of `pipeline.SAMPLERS` all."""
    pipe.scheduler.set_timesteps(num_inference_steps or pipe.scheduler.config.num_train_timesteps)
    return len(pipe.scheduler.timesteps)


def _check_real(pipe: DDPMPipeline, name: str, data: Any, needed: int, what: str) -> None:
    shape = pipe.sample_shape(1)[1:]
    if not isinstance(data, torch.Tensor) or tuple(data.shape[1:]) != shape:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(
            f"{name} must be a tensor (N, {', '.join(map(str, shape))}) for this model; got {got}"
        )
    if data.shape[0] < needed:
        raise ValueError(f"{name} has {data.shape[0]} examples; it needs at least {what}={needed}")


def _draws_samples(pipe: DDPMPipeline, features: Sequence[ImageFeatures]) -> bool:
    """Whether sample quality can be measured: always for points, for images with features."""
    points = makes_points(pipe.unet)
    if points and features:
        raise ValueError(
            "features are for image models; this pipeline's model makes points (pass features=())"
        )
    return points or bool(features)


def evaluate(
    pipe: DDPMPipeline,
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    *,
    num_samples: int,
    batch_size: int,
    nll_examples: int,
    seed: int = 0,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    samples_dir: str | os.PathLike | None = None,
    features: Sequence[ImageFeatures] = (),
    reference: FeatureStatistics | None = None,
    real_features: RealFeatures | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a pipeline against real data: images (N, C, H, W) in [−1, 1] for an image
    model, points (N, D) in data units for a point model (MLPModel).

    For points, and for images when `features` are given (InceptionFeatures for FID,
    DINOv2Features for FD_DINOv2), draws samples 0 … num_samples − 1 with `sample_to_shards`
    (seed `seed`, `batch_size` at a time) into `samples_dir` — a temporary folder by default;
    a folder of an earlier `sample` or `evaluate` run with the same arguments is read, or its
    missing shards drawn — with the pipeline's scheduler or `sampler` (a name of
    `pipeline.SAMPLERS`) at `num_inference_steps`, and measures them with `sample_quality`
    (each figure beside its real-vs-real floor; `reference` and `real_features` as there).
    Then, unless nll_examples is 0, the NLL bound (`nll`) on real_test[:nll_examples], in
    float64, with the pipeline's own scheduler (which must be this package's) and a generator
    seeded with `seed`.

    Returns a JSON-serialisable dict: "kind" ("points" or "images"), "num_samples",
    "num_train_timesteps", "sampler", "num_inference_steps", "model_calls"; the figures of
    `sample_quality`; and the NLL, `NLLResult.to_dict()` with each key prefixed "nll_":
    "nll_bits_per_dim", "nll_bits_per_dim_std_error" (None for one example),
    "nll_terms_bits_per_dim" (a list of T floats), "nll_prior_bits_per_dim",
    "nll_num_examples", "nll_decoder", "nll_timesteps" (0..T−1), "nll_clip_sample" (whether
    the scheduler clipped x̂_0 in the bound).
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        _check_count(name, value)
    if not (isinstance(nll_examples, int) and not isinstance(nll_examples, bool) and nll_examples >= 0):
        raise ValueError(f"nll_examples={nll_examples!r} must be a whole number ≥ 0 (0: no likelihood)")
    if nll_examples and not isinstance(pipe.scheduler, DiffusionScheduler):
        raise TypeError(
            "evaluate needs one of this package's schedulers (DDPMScheduler, DDIMScheduler) for the "
            f"likelihood, not {type(pipe.scheduler).__name__} (pass nll_examples=0 to skip it)"
        )
    draws = _draws_samples(pipe, features)
    _check_real(pipe, "real_train", real_train, num_samples if draws else 0, "num_samples")
    _check_real(pipe, "real_test", real_test, nll_examples, "nll_examples")
    sampling = with_sampler(pipe, sampler) if sampler else pipe
    result: dict[str, Any] = {
        "kind": "points" if makes_points(pipe.unet) else "images",
        "num_samples": num_samples,
        "num_train_timesteps": pipe.scheduler.config.num_train_timesteps,
        "sampler": sampler or type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "model_calls": model_calls(sampling, num_inference_steps),
    }
    if draws:
        with _folder(samples_dir) as folder:
            fake = _samples(sampling, folder, num_samples, batch_size, seed, num_inference_steps, progress)
        result.update(
            sample_quality(
                fake,
                real_train,
                real_test,
                features=features,
                reference=reference,
                real_features=real_features,
                batch_size=batch_size,
            )
        )
    if nll_examples:
        likelihood = nll(
            as_model_fn(pipe.unet),
            pipe.scheduler,
            real_test[:nll_examples].to(pipe.device, torch.float64),
            batch_size=batch_size,
            generator=torch.Generator(pipe.device).manual_seed(seed),
            progress=progress,
        )
        result.update({NLL_PREFIX + key: value for key, value in likelihood.to_dict().items()})
    logger.info(
        "evaluation: %s", {key: value for key, value in result.items() if not isinstance(value, list)}
    )
    return result


def _folder(path: str | os.PathLike | None) -> contextlib.AbstractContextManager[str | os.PathLike]:
    """`path`, or a temporary folder removed afterwards."""
    return contextlib.nullcontext(path) if path is not None else tempfile.TemporaryDirectory()


def quality_vs_steps(
    pipe: DDPMPipeline,
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    *,
    samplers: Sequence[str | None],
    steps: Sequence[int],
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    samples_dir: str | os.PathLike | None = None,
    features: Sequence[ImageFeatures] = (),
    reference: FeatureStatistics | None = None,
    real_features: RealFeatures | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Sample quality against the model calls spent: for each sampler of `samplers` (names of
    `pipeline.SAMPLERS`, or None for the pipeline's own scheduler) and each number of `steps`,
    `evaluate` without the likelihood, the samples of each in samples_dir/<sampler>-<steps>
    (kept, and read again by a later run, where samples_dir is given). The real sides'
    features are computed once for all. Returns one row per (sampler, steps): evaluate's dict."""
    if not samplers or not steps:
        raise ValueError(
            f"samplers and steps must each name at least one; got {list(samplers)} and {list(steps)}"
        )
    if not _draws_samples(pipe, features):
        raise ValueError(
            "quality_vs_steps measures samples: an image model needs features (Inception or DINOv2)"
        )
    real_features = real_features or RealFeatures(batch_size=batch_size)
    rows = []
    with _folder(samples_dir) as folder:
        for sampler in samplers:
            for count in steps:
                rows.append(
                    evaluate(
                        pipe,
                        real_train,
                        real_test,
                        num_samples=num_samples,
                        batch_size=batch_size,
                        nll_examples=0,
                        seed=seed,
                        sampler=sampler,
                        num_inference_steps=count,
                        samples_dir=Path(folder) / f"{sampler or 'own'}-{count}",
                        features=features,
                        reference=reference,
                        real_features=real_features,
                        progress=progress,
                    )
                )
    return rows


def _quality_metric(row: dict[str, Any]) -> str:
    """The distance a row of quality_vs_steps is judged by: energy distance, FID, FD_DINOv2."""
    return next(key for key in ("energy_distance", "fid", "fd_dinov2") if key in row)


def quality_table(rows: Sequence[dict[str, Any]]) -> str:
    """quality_vs_steps' rows as a Markdown table: sampler, steps, model calls, the distance,
    its real-vs-real floor and their ratio."""
    metric = _quality_metric(rows[0])
    lines = [
        f"| sampler | steps | model calls | {metric} | floor | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = row[f"{metric}_ratio"]
        lines.append(
            f"| {row['sampler']} | {row['num_inference_steps']} | {row['model_calls']} | {row[metric]:.4g} | "
            f"{row[f'{metric}_floor']:.4g} | {'—' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot_quality_vs_steps(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """A PNG of quality_vs_steps' rows: the distance over its floor (log scale) against model
    calls (log scale), a line per sampler; written atomically. Needs matplotlib."""
    metric = _quality_metric(rows[0])
    figure = _figure()
    axes = figure.add_subplot()
    for sampler in dict.fromkeys(row["sampler"] for row in rows):
        mine = [row for row in rows if row["sampler"] == sampler and row[f"{metric}_ratio"] is not None]
        axes.plot([r["model_calls"] for r in mine], [r[f"{metric}_ratio"] for r in mine], "o-", label=sampler)
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real data (floor)")
    axes.set(
        xscale="log", yscale="log", xlabel="model calls per sample", ylabel=f"{metric} / real-vs-real floor"
    )
    axes.legend()
    figure.tight_layout()
    return hub.write_file_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
