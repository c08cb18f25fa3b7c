"""Shared test helpers: the option lists of DESIGN.md and the Gaussian-data oracle of
docs/math.md §6."""

from __future__ import annotations

# --- Local Hugging Face Hub (tests/hub_server.py) -----------------------------------------------------
# huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE, ... once, when first imported, and
# test modules import diffusers (so huggingface_hub) at collection: the environment is set here, when
# pytest imports this conftest, before any test module. The port is reserved now: the socket is bound
# but listens only once the `hub` fixture serves on it, so a Hub call made without the fixture gets
# "connection refused" rather than a silent wait for a timeout (though hf_hub_download retries it for
# ~20 s).
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hub_server import LocalHub

_HUB_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_HUB_SOCKET.bind(("127.0.0.1", 0))
_HF_HOME = tempfile.mkdtemp(prefix="hf_home_")  # a fresh, empty cache: never the user's
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _name in (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
):
    os.environ.pop(_name, None)
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{_HUB_SOCKET.getsockname()[1]}",
    HF_HOME=_HF_HOME,
    HF_TOKEN="hf_local_test_token",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)
for _name in ("NO_PROXY", "no_proxy"):  # never send the local Hub's traffic to a proxy
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """The local Hub at HF_ENDPOINT, for the whole session (a `LocalHub`: `.url`, `.data_dir`, `.user`)."""
    from huggingface_hub import constants

    server = LocalHub(tmp_path_factory.mktemp("hub"), _HUB_SOCKET)
    if constants.ENDPOINT != server.url or constants.HF_HOME != _HF_HOME:
        pytest.fail("huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT and HF_HOME")
    with server:
        yield server


# --- end of the local Hub block -------------------------------------------------------------------------

# The allowed choices, as DESIGN.md lists them (not imported from the library: the tests
# check the library against the design).
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2", "sigmoid")
VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "posterior_mean")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class GaussianOracle:
    """The optimal model for data x_0 ~ N(m, s² I) (docs/math.md §6), in any parameterisation.

    E[ε | x_t] = √(1−ᾱ_t) (x_t − √ᾱ_t m) / (ᾱ_t s² + 1 − ᾱ_t); the other outputs follow
    from docs/math.md §3 with ᾱ_{t−1} from `alphas_cumprod` (full T-step chain).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, m, s, prediction_type: str = "epsilon"):
        self.ab = alphas_cumprod.to(torch.float64)
        self.m = torch.as_tensor(m, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)
        self.prediction_type = prediction_type

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        shape = (-1,) + (1,) * (x_t.dim() - 1) if t.dim() else ()
        a = self.ab[t].reshape(shape)
        a_prev = torch.where(t > 0, self.ab[(t - 1).clamp(min=0)], torch.ones_like(self.ab[t])).reshape(shape)
        x = x_t.to(torch.float64)
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.m) / (a * self.s**2 + 1 - a)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "v_prediction":
            out = a.sqrt() * eps - (1 - a).sqrt() * x0
        else:  # posterior_mean, docs/math.md §2
            beta = 1 - a / a_prev
            out = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x
        return out.to(x_t.dtype)


@pytest.fixture
def train_in_two_processes():
    """`ddpm-pipelines train FLAGS` under torchrun with 2 CPU processes (gloo, through
    accelerate); the test fails, showing the end of their output, if the run does."""

    def run(flags: list[str]) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        result = subprocess.run(
            [*command, "-m", "ddpm_pipelines", "train", *flags],
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    return run
