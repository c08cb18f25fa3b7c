"""The Gradio demo (spaces/app.py), run as `make demo` runs it: started on a free localhost
port, every endpoint called with gradio_client, the page driven in a real browser (Playwright
with Debian's Chromium), and twenty requests at once.

DEMO_SCREENSHOT=docs/demo.png makes the browser test also save its screenshot there.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip(
    "gradio_client", reason="the demo's tests need the [demo] and [dev] extras"
)
pytest.importorskip("gradio", reason="the demo needs the [demo] extra")

from gradio_client.exceptions import AppError  # noqa: E402

from ddpm_pipelines import DDPMPipeline, UNetModel  # noqa: E402
from ddpm_pipelines.data import load_dataset  # noqa: E402
from ddpm_pipelines.evaluation import nll  # noqa: E402
from ddpm_pipelines.pipeline import SAMPLERS  # noqa: E402
from schedulers import DDPMScheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces"
STARTUP_SECONDS = 240  # imports and model loading on a busy 2-core machine
TINY_T = 100  # the test model's timesteps: its likelihood is 100 model calls
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class RunningApp:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, tiny: str):
        self.url, self.process, self.log, self.tiny = url, process, log, tiny

    def rss_mb(self) -> float:
        """The server's resident memory, MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """spaces/app.py serving the shipped models and a tiny random UNet (1×8×8, T = 100)."""
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    tiny = DDPMPipeline(
        unet=UNetModel.from_preset("tiny-8"), scheduler=DDPMScheduler(num_train_timesteps=TINY_T)
    )
    tiny.save_pretrained(root / "tiny")
    (root / "tmp").mkdir()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(root / "gradio"),  # gradio's cache
        TMPDIR=str(root / "tmp"),  # the app's own outputs
    )
    port = free_port()
    log = root / "app.log"
    with log.open("w") as out:
        command = [sys.executable, str(SPACE / "app.py"), "--port", str(port), "--model", str(root / "tiny")]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the app did not answer on {url} in {STARTUP_SECONDS} s:\n{log.read_text()}")
        time.sleep(1)
    yield RunningApp(url, process, log, str(root / "tiny"))
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    return gradio_client.Client(
        app.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads"))
    )


def plot_image(plot: dict) -> Image.Image:
    """A gr.Plot's matplotlib figure, as the API returns it (a data URL)."""
    assert plot["type"] == "matplotlib"
    return Image.open(io.BytesIO(base64.b64decode(plot["plot"].split(",", 1)[1])))


# ---- every endpoint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_generate_images_gives_a_grid_a_strip_and_a_gif_with_each_sampler(app, client, sampler):
    samples, strip, gif = client.predict(app.tiny, sampler, 10, 3, 4, api_name="/generate")
    assert Image.open(samples).size == (2 * 65 - 1, 2 * 65 - 1)  # 2×2 grid of 8×8 scaled to 64, 1-px gaps
    strip = Image.open(strip)
    assert strip.width > 2 * strip.height  # 8 frames of x_t over 8 of x̂_0
    gif = Image.open(gif)
    assert gif.format == "GIF" and gif.n_frames == 10  # every step of 10 (≤ 40 frames)
    again, _, _ = client.predict(app.tiny, sampler, 10, 3, 4, api_name="/generate")
    assert Image.open(again).tobytes() == Image.open(samples).tobytes()  # same seed, same samples


def test_generate_points_gives_a_scatter(client):
    samples, _, gif = client.predict("swiss-roll", "ddpm", 20, 0, 300, api_name="/generate")
    picture = Image.open(samples)
    assert picture.size == (384, 384)
    assert sum(picture.convert("L").histogram()[:128]) > 200  # the dots
    assert Image.open(gif).n_frames == 20


def test_figure_is_a_plot_of_three_rows_of_slices(client):
    picture = plot_image(client.predict(200, 20, 0, api_name="/figure"))
    assert picture.width > picture.height > 500  # 5 columns of 3 rows


def test_schedules_is_a_plot(client):
    picture = plot_image(client.predict(1000, 1e-4, 0.02, api_name="/schedules"))
    assert picture.width > 3 * picture.height  # four panels side by side


def test_likelihood_is_the_library_bound_of_the_chosen_digit(app, client):
    digit = Image.open(client.predict(7, api_name="/digit"))
    assert digit.size == (128, 128)
    plot, bits, parts = client.predict(app.tiny, 7, 5, api_name="/likelihood")
    assert Image.open(plot).format == "PNG"
    # The same bound, computed here with the library, from the same seed.
    pipe = DDPMPipeline.from_pretrained(app.tiny)
    x0 = load_dataset("digits", "test")[7:8].double()

    def model_fn(x_t, t):
        return pipe.unet(x_t.float(), t).sample.double()

    expected = nll(model_fn, pipe.scheduler, x0, batch_size=1, generator=torch.Generator().manual_seed(5))
    assert math.isfinite(bits) and bits == pytest.approx(expected.bits_per_dim, rel=1e-9)
    assert f"{expected.bits_per_dim:.3f} bits/dim" in parts


@pytest.mark.parametrize(
    ("api_name", "arguments", "message"),
    [
        ("/generate", ("TINY", "ddim", 500, 0, 4), r"steps must be a whole number from 1 to 100; got 500"),
        (
            "/generate",
            ("TINY", "ddim", 10, 0, 65),
            r"batch size \(for .*tiny\) must be a whole number from 1 to 64",
        ),
        ("/generate", ("TINY", "ddim", 2.5, 0, 4), r"steps must be a whole number from 1 to 100; got 2.5"),
        ("/generate", ("nope", "ddim", 10, 0, 4), r"nope"),
        (  # the old names are gone: the demo takes the command line's, and names them
            "/generate",
            ("TINY", "DDIM", 10, 0, 4),
            "'DDIM'.* " + re.escape(str(list(SAMPLERS))),
        ),
        ("/schedules", (1000, 0.02, 1e-4), r"beta_start=0.02, beta_end=0.0001: they must satisfy"),
        # Out-of-range numbers are answered by the demo, naming the field (gradio's own check
        # of a Number's minimum and maximum says only "Value -1 is less than minimum value 0")
        ("/generate", ("TINY", "ddim", 10, -1, 4), r"seed must be a whole number from 0 to"),
        ("/figure", (100, 10, -3), r"seed must be a whole number from 0 to"),
        ("/schedules", (1000, 0.9, 0.95), r"β_start must be a number from 1e-06 to 0.5; got 0.9"),
        ("/likelihood", ("digits", 0, -2), r"seed must be a whole number from 0 to"),
        ("/likelihood", ("swiss-roll", 0, 0), r"swiss-roll"),
        ("/digit", (359,), r"359"),
    ],
)
def test_invalid_input_is_answered_with_a_message(app, client, api_name, arguments, message):
    arguments = tuple(app.tiny if a == "TINY" else a for a in arguments)
    with pytest.raises(AppError, match=message):
        client.predict(*arguments, api_name=api_name)


# ---- load ----------------------------------------------------------------------------------------------


def test_twenty_concurrent_generate_requests_all_succeed(app, client):
    before, log_start = app.rss_mb(), len(app.log.read_text())
    jobs = [
        client.submit(
            *((app.tiny, "ddim", 5, i, 4) if i % 2 else ("swiss-roll", "ddim", 5, i, 100)),
            api_name="/generate",
        )
        for i in range(20)
    ]
    results = [job.result(timeout=300) for job in jobs]
    for i, (samples, _, gif) in enumerate(results):
        assert Image.open(samples).size == ((129, 129) if i % 2 else (384, 384))
        assert Image.open(gif).n_frames == 5
    assert len({Image.open(samples).tobytes() for samples, _, _ in results}) == 20  # twenty seeds
    assert app.rss_mb() - before < 500, "the server's memory grew by more than 500 MB"
    assert app.process.poll() is None
    assert "Traceback" not in app.log.read_text()[log_start:]


# ---- a real browser ------------------------------------------------------------------------------------


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.skip("no Chromium: install Debian's chromium (make test does, as root with apt-get)")
    return path


def test_the_page_generates_in_a_browser(app, tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright ([dev] extra)"
    )
    executable = chromium()
    elsewhere = []  # requests the page made to anywhere but the app: there must be none

    def only_the_app(route):
        if route.request.url.startswith(app.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", only_the_app)
            page.goto(app.url)
            page.click("#generate")
            picture = page.wait_for_function(
                """() => {
                    const img = document.querySelector('#samples img');
                    const ready = img && img.complete && img.naturalWidth > 0;
                    return ready && [img.naturalWidth, img.naturalHeight];
                }""",
                timeout=180_000,
            ).json_value()
            page.wait_for_timeout(500)  # let the trajectory strip settle before the screenshot
            screenshot = tmp_path / "demo.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert picture == [4 * 65 - 1, 4 * 65 - 1]  # 16 samples of 8×8, a 4×4 grid scaled to 64
    assert Image.open(screenshot).width == 1280
    assert elsewhere == []
    if os.environ.get("DEMO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["DEMO_SCREENSHOT"])


# ---- the Space -----------------------------------------------------------------------------------------


def test_the_space_folder_is_a_gradio_space_pinned_to_this_package():
    header = (SPACE / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    fields = dict(line.split(": ", 1) for line in header.strip().splitlines())
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py"
    assert (SPACE / fields["app_file"]).is_file() and fields["title"]
    import gradio

    assert fields["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    requirements = [
        line
        for line in (SPACE / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert requirements == [f"ddpm-pipelines[demo]=={version}"]


def test_a_bad_model_is_one_line_on_stderr_and_a_failed_exit(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    env.pop("DDPM_PIPELINES_DEBUG", None)
    command = [
        sys.executable,
        str(SPACE / "app.py"),
        "--model",
        str(tmp_path / "nope"),
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=STARTUP_SECONDS)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"spaces/app.py: error: --model {tmp_path / 'nope'}: ")
    )


def test_sigterm_stops_the_app_and_removes_its_temporary_folder(app):
    """Last in this file: it stops the app the other tests share."""
    tmp = app.log.parent / "tmp"
    assert [p for p in tmp.iterdir() if p.name.startswith("ddpm-demo-")]  # made at start, filled by the tests
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(timeout=60) == 0
    assert not [p for p in tmp.iterdir() if p.name.startswith("ddpm-demo-")]
