"""FID as the papers compute it (issue 13): torch-fidelity's Inception network with our
plumbing, its weights (safetensors, torch.hub's cache, the error offline), feature statistics
saved and reused, and `sample_quality` with Inception features. The network's weights here
are random, of the same architecture: nothing is downloaded."""

from __future__ import annotations

import hashlib
import urllib.error

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch_fidelity import feature_extractor_inceptionv3 as fidelity

from ddpm_pipelines import evaluation
from ddpm_pipelines.evaluation import (
    FeatureStatistics,
    InceptionFeatures,
    RealFeatures,
    frechet_distance,
    precision_recall,
    sample_quality,
)


@pytest.fixture(autouse=True)
def _torch_home(tmp_path, monkeypatch):
    """torch.hub's cache in a folder of the test's own: never the user's, never the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def random_inception_weights(path):
    """Random weights of torch-fidelity's Inception-v3 in a .safetensors file at `path`: the
    network built with its loading switched off, He-initialised (activations of order 1 through
    all its layers), BatchNorm statistics that are not the identity, so that a mix-up shows."""
    with pytest.MonkeyPatch.context() as patch, torch.random.fork_rng():
        torch.manual_seed(0)
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        state = {
            name: torch.rand_like(t) + 0.5 if name.endswith("running_var") else t.contiguous()
            for name, t in network.state_dict().items()
        }
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.safetensors")


@pytest.fixture(scope="module")
def inception(weights):
    return InceptionFeatures(weights, device="cpu")


def _images(n, channels=3, size=16, seed=0):
    """8-bit images in [−1, 1] (N, C, H, W)."""
    pixels = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed))
    return pixels / 127.5 - 1


def _by_hand(weights, images):
    """torch-fidelity's network on the images' 8-bit RGB pixels, called directly."""
    network = fidelity.FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(weights))
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
    with torch.no_grad():
        return network(pixels)[0].double()


def test_inception_features_are_torch_fidelitys_pool3_of_the_8_bit_pixels(weights, inception, monkeypatch):
    images = _images(5, seed=1)
    features = inception(images, batch_size=2)
    assert features.shape == (5, 2048) and features.dtype == torch.float64
    # torch-fidelity reads a path with torch.load: our tests' own file, saved as a .pth for it here.
    pth = weights.with_suffix(".pth")
    torch.save(evaluation.load_file(weights), pth)
    torch.testing.assert_close(features, _by_hand(pth, images), rtol=1e-5, atol=1e-6)
    assert features.std(dim=0).mean() > 0  # the random network does not map everything to one point
    assert inception.name.startswith("inception-") and len(inception.name) == len("inception-") + 16


def test_inception_grey_is_grey_repeated_and_batching_changes_nothing(inception):
    grey = _images(4, channels=1, seed=2)
    one = inception(grey)
    torch.testing.assert_close(one, inception(grey.repeat(1, 3, 1, 1)), rtol=0, atol=0)
    torch.testing.assert_close(one, inception(grey, batch_size=3), rtol=1e-5, atol=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(inception):
    real = inception(_images(12, seed=3))
    assert frechet_distance(real, real.clone()) == pytest.approx(0.0, abs=1e-6 * real.var(dim=0).sum().item())
    darker = inception(_images(12, seed=3) * 0.5 - 0.5)
    assert frechet_distance(real, darker) > 1e3 * frechet_distance(real, real.clone()) + 1e-9


def test_the_cached_official_file_is_checked_by_hash_and_read_without_pickle(weights, inception, monkeypatch):
    cached = evaluation.inception_weights_path()
    assert cached.parent == evaluation.Path(torch.hub.get_dir()) / "checkpoints"
    cached.parent.mkdir(parents=True)
    torch.save(evaluation.load_file(weights), cached)
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    with pytest.raises(
        ValueError, match=rf"is not torch-fidelity's Inception weights: its sha256 starts {digest[:8]}"
    ):
        InceptionFeatures(device="cpu")
    monkeypatch.setattr(evaluation, "INCEPTION_WEIGHTS_SHA256", digest[:8])  # as if it were the official file
    loads = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k)
    )
    from_cache = InceptionFeatures(device="cpu")
    assert loads[0] is True  # the cache file through torch's tensors-only loader
    images = _images(2, seed=4)
    torch.testing.assert_close(from_cache(images), inception(images), rtol=0, atol=0)


def test_without_weights_offline_the_error_says_how_to_get_them(monkeypatch):
    calls = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        OSError, match=r"not in .*weights-inception-2015-12-05-6726825d.pth and could not be"
    ) as error:
        InceptionFeatures()
    assert fidelity.URL_INCEPTION_V3 in str(error.value) and "--inception-weights" in str(error.value)
    assert calls == [(fidelity.URL_INCEPTION_V3, "6726825d")]  # torch.hub checks the hash of a download


def test_a_weights_file_must_be_safetensors(weights, tmp_path):
    pth = tmp_path / "inception.pth"
    torch.save(evaluation.load_file(weights), pth)
    with pytest.raises(
        ValueError, match=r"Inception weights must be a .safetensors file, not .*inception.pth"
    ):
        InceptionFeatures(pth)


def test_inception_errors(inception):
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\) with B ≥ 1 and C = 1 or 3"):
        inception(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        inception(_images(1), batch_size=0)


# ---- feature statistics -----------------------------------------------------------------------


def test_statistics_round_trip_and_give_the_same_distance(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) + 0.3
    stats = FeatureStatistics.of(a, "net-1")
    np.testing.assert_allclose(stats.mu, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(a, rowvar=False), rtol=1e-12)
    path = stats.save(tmp_path / "s" / "real.npz")
    back = FeatureStatistics.load(path)
    assert back.extractor == "net-1" and back.features.shape == (40, 6)
    assert frechet_distance(back, b) == pytest.approx(
        frechet_distance(a, b), rel=1e-6
    )  # features kept in float32
    assert frechet_distance(b, back) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    assert list(tmp_path.joinpath("s").iterdir()) == [path]  # no temporary left beside it


def test_statistics_of_other_tools_load_without_features(tmp_path):
    """pytorch-fid's and the ADM suite's files hold `mu` and `sigma` (float64) only."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 4))
    np.savez(tmp_path / "fid_stats.npz", mu=a.mean(0), sigma=np.cov(a, rowvar=False))
    theirs = FeatureStatistics.load(tmp_path / "fid_stats.npz")
    assert theirs.features is None and theirs.extractor == ""
    b = rng.normal(size=(20, 4))
    assert frechet_distance(b, theirs) == pytest.approx(frechet_distance(b, a), rel=1e-12)
    np.savez(tmp_path / "bad.npz", arr_0=a)
    with pytest.raises(ValueError, match=r"bad.npz has no 'mu' and 'sigma' arrays \(it holds \['arr_0'\]\)"):
        FeatureStatistics.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mu=a.mean(0), sigma=np.eye(3))
    with pytest.raises(ValueError, match=r"mu must be \(F,\) and sigma \(F, F\); got \(4,\) and \(3, 3\)"):
        FeatureStatistics.load(tmp_path / "shape.npz")
    with pytest.raises(ValueError, match="must have the same width D; got 4 and 3"):
        frechet_distance(theirs, rng.normal(size=(5, 3)))


def test_real_features_are_computed_once_and_read_back_by_a_later_run(inception, tmp_path, monkeypatch):
    calls = []
    counted = type(
        "Counted",
        (),
        {"name": inception.name, "__call__": lambda s, x, b: calls.append(len(x)) or inception(x, b)},
    )()
    images, other = _images(6, seed=5), _images(6, seed=6)
    first = RealFeatures(tmp_path, batch_size=4)
    stats = first(counted, images)
    assert first(counted, images) is stats and calls == [6]  # once per set in a run
    assert len(list(tmp_path.glob(f"{inception.name}-*.npz"))) == 1
    later = RealFeatures(tmp_path)(counted, images)  # a new run reads the file
    assert calls == [6]
    np.testing.assert_array_equal(later.mu, stats.mu) and np.testing.assert_array_equal(
        later.features, stats.features
    )
    RealFeatures(tmp_path)(counted, other)  # other images: computed, a second file
    assert calls == [6, 6] and len(list(tmp_path.glob("*.npz"))) == 2


def test_sample_quality_in_inception_features_with_and_without_a_reference(inception):
    train, test, fake = _images(8, seed=7), _images(7, seed=8), _images(5, seed=9) * 0.8
    result = sample_quality(fake, train, test, features=[inception], batch_size=4)
    f_test, f_train, f_fake = inception(test), inception(train[:5]), inception(fake)
    assert result["fid"] == pytest.approx(frechet_distance(f_fake, f_test), rel=1e-6)
    assert result["fid_floor"] == pytest.approx(frechet_distance(f_train, f_test), rel=1e-6)
    assert result["fid_ratio"] == pytest.approx(result["fid"] / result["fid_floor"], rel=1e-12)
    got = precision_recall(f_test, f_fake)
    assert (result["precision_inception"], result["recall_inception"]) == pytest.approx(tuple(got), abs=1e-12)
    best = precision_recall(f_test, f_train)
    assert (result["precision_inception_floor"], result["recall_inception_floor"]) == pytest.approx(
        tuple(best)
    )
    # A reference of mean and covariance only (a CIFAR-10 train set's, say): FID against it, no
    # precision/recall.
    stats = FeatureStatistics.of(inception(_images(9, seed=10)))
    reference = FeatureStatistics(stats.mu, stats.sigma)
    against = sample_quality(fake, train, test, features=[inception], reference=reference)
    assert set(against) == {"fid", "fid_floor", "fid_ratio"}
    assert against["fid"] == pytest.approx(frechet_distance(f_fake, reference), rel=1e-6)
    assert against["fid_floor"] == pytest.approx(frechet_distance(f_train, reference), rel=1e-6)
    with pytest.raises(
        ValueError, match=f"the reference statistics are of other-net, not of {inception.name}"
    ):
        sample_quality(
            fake,
            train,
            test,
            features=[inception],
            reference=FeatureStatistics(stats.mu, stats.sigma, None, "other-net"),
        )
