"""The ddpm-pipelines demo: a Gradio app laid out as a Hugging Face Space.

    python spaces/app.py [--model FOLDER_OR_REPO_ID ...] [--host 127.0.0.1] [--port 7860]

Four tabs, each an API endpoint (`gradio_client.Client(url).predict(..., api_name="/generate")`):
- Generate ("/generate"): samples of a model with one of the samplers of `ddpm-pipelines sample
  --sampler` (ddpm, respaced to fewer steps; ddim; diffusers' multistep solvers dpm-solver++ and
  unipc), the denoising trajectory as a strip of frames (x_t and the predicted x_0) and as a GIF.
- The picture of docs/math.md §7 (Sohl-Dickstein et al. 2015, Fig. 1) from the shipped Swiss-roll
  model ("/figure"): slices of the forward trajectory q(x_t), of the reverse one p(x_t), and
  the drift f_θ(x_t, t) − x_t of the reverse step as arrows.
- Schedules ("/schedules"): β_t, ᾱ_t, SNR(t) and the posterior variance β̃_t (docs/math.md §1–2).
- Likelihood ("/likelihood", "/digit"): the per-timestep terms of the variational bound
  (docs/math.md §5) for one held-out digit, and its bits/dim.

The models are the ones that ship with the package and those named with --model (a local
pipeline folder or a Hub repo id), all loaded at start; the page can only choose among them
and never reads or writes files beyond the app's own outputs. Each control is bounded,
requests wait in a queue (`--concurrency` of them computed at once), and invalid input is
answered with a message in the page (gr.Error).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import PIL.Image
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import ImageDraw, ImageFont

from ddpm_pipelines import PRETRAINED, DDPMPipeline, load_pretrained
from ddpm_pipelines.data import load_dataset
from ddpm_pipelines.evaluation import nll, plot_vlb_terms
from ddpm_pipelines.images import image_grid, points_image
from ddpm_pipelines.pipeline import SAMPLERS, makes_points, with_sampler
from schedulers import DDPMScheduler, DiffusionScheduler

logger = logging.getLogger("ddpm_demo")

SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid")
FIGURE_MODEL = "swiss-roll"
DIGIT_SHAPE = (1, 8, 8)  # what the likelihood tab's held-out digits are: (C, H, W)

# Bounds on what one request may ask for; with --concurrency they bound the app's memory.
MAX_IMAGE_BATCH = 64
MAX_POINT_BATCH = 2000
MAX_BATCH_VALUES = 64 * 3 * 32 * 32  # batch × values per sample: 64 CIFAR-sized images
MAX_FIGURE_POINTS = 2000
MAX_SCHEDULE_STEPS = 10_000
SEED_MAX = 2**31 - 1
# Pictures of a run: the GIF has at most GIF_FRAMES + 1 frames, the strip STRIP_FRAMES, each
# frame showing the first STRIP_SAMPLES samples.
GIF_FRAMES = 40
STRIP_FRAMES = 8
STRIP_SAMPLES = 16
KEEP_OUTPUTS = 64  # the newest outputs kept on disk; gradio has copied older ones to its cache
# The picture of docs/math.md §7: slices at t = 0 (the data) and these fractions of T.
FIGURE_TIMES = (0.1, 0.25, 0.5, 1.0)
FIGURE_LIMIT = 2.5  # the axes span [−2.5, 2.5]²
DRIFT_GRID = 17  # arrows on a 17 × 17 grid
ERRORS_SHOWN_FOR = 20  # seconds an error stays in the page


def user_error(message: str) -> gr.Error:
    """A message for the page, without a server-side traceback."""
    return gr.Error(message, duration=ERRORS_SHOWN_FOR, print_exception=False)


def whole(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high], or a clear error (the API may send anything)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value == int(value) and low <= value <= high):
        raise user_error(f"{name} must be a whole number from {low} to {high}; got {value!r}")
    return int(value)


def number(name: str, value: Any, low: float, high: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and low <= value <= high):
        raise user_error(f"{name} must be a number from {low:g} to {high:g}; got {value!r}")
    return float(value)


def max_batch_size(pipe: DDPMPipeline) -> int:
    """The largest batch a request may ask of `pipe`: fewer for bigger samples."""
    values = math.prod(pipe.sample_shape(1)[1:])
    most = MAX_POINT_BATCH if makes_points(pipe.unet) else MAX_IMAGE_BATCH
    return max(1, min(most, MAX_BATCH_VALUES // values))


def load_models(sources: Sequence[str]) -> dict[str, DDPMPipeline]:
    """The shipped pipelines that are installed, then each of `sources` (a folder or a Hub
    repo id), by name, in that order."""
    models: dict[str, DDPMPipeline] = {}
    for name in PRETRAINED:
        try:
            models[name] = load_pretrained(name)
        except OSError as error:  # a shipped folder that is not there
            logger.warning("not serving %r: %s", name, error)
    for source in sources:
        try:
            models[source] = DDPMPipeline.from_pretrained(source)
        except (OSError, ValueError) as error:  # one line, not a traceback; DDPM_PIPELINES_DEBUG=1 shows it
            if os.environ.get("DDPM_PIPELINES_DEBUG"):
                raise
            raise SystemExit(f"spaces/app.py: error: --model {source}: {error}") from None
    if not models:
        raise SystemExit("no model to serve: the shipped pipelines are missing and no --model was given")
    for pipe in models.values():
        pipe.unet.eval()
        pipe.set_progress_bar_config(disable=True)
    return models


# ---- pictures ----------------------------------------------------------------------------------------


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [−1, 1] → [0, 1], as the pipeline's output."""
    return (x / 2 + 0.5).clamp(0, 1)


def sheet(
    rows: list[list[PIL.Image.Image]], columns: list[str], names: Sequence[str] = ()
) -> PIL.Image.Image:
    """Frames of one size in a table on white, each column's label above it, each row's
    name (if any) to its left."""
    font = ImageFont.load_default(size=14)
    w, h = rows[0][0].size
    gap, top, left = 6, 22, (110 if names else 6)
    canvas = PIL.Image.new("RGB", (left + len(columns) * (w + gap), top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(columns):
        draw.text((left + c * (w + gap), 4), label, fill="black", font=font)
    for r, row in enumerate(rows):
        if names:
            draw.text((4, top + r * (h + gap) + h // 2 - 7), names[r], fill="black", font=font)
        for c, frame in enumerate(row):
            canvas.paste(frame.convert("RGB"), (left + c * (w + gap), top + r * (h + gap)))
    return canvas


def frame_picture(x: torch.Tensor, points: bool) -> PIL.Image.Image:
    """One frame of a trajectory: the points (B, 2), or the first images (B, C, H, W) in [−1, 1]."""
    return points_image(x, size=192) if points else image_grid(to_unit(x[:STRIP_SAMPLES]), min_size=32)


def evenly(count: int, most: int) -> list[int]:
    """At most `most` indices of range(count), evenly spread, the first and the last included."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas, outside pyplot's global (thread-unsafe) state."""
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


# ---- the app -----------------------------------------------------------------------------------------


class Demo:
    """The app's state (the loaded models, its output folder) and the function of each tab."""

    def __init__(self, models: dict[str, DDPMPipeline]):
        self.models = models
        self.output_dir = Path(tempfile.mkdtemp(prefix="ddpm-demo-"))
        atexit.register(shutil.rmtree, self.output_dir, ignore_errors=True)
        self._outputs_lock = threading.Lock()
        self.digits = load_dataset("digits", "test")  # (359, 1, 8, 8) in [−1, 1], held out
        self.image_models = [name for name, pipe in models.items() if not makes_points(pipe.unet)]
        self.digit_models = [
            name for name in self.image_models if tuple(models[name].sample_shape(1)[1:]) == DIGIT_SHAPE
        ]

    def model(self, name: Any, allowed: Sequence[str] | None = None) -> DDPMPipeline:
        allowed = list(self.models) if allowed is None else allowed
        if name not in allowed:
            raise user_error(f"model {name!r} is not served here; choose one of {allowed}")
        return self.models[name]

    def output_folder(self) -> Path:
        """A new folder for one request's files; the oldest beyond KEEP_OUTPUTS are removed."""
        with self._outputs_lock:
            old = sorted(self.output_dir.iterdir(), key=lambda p: p.stat().st_mtime)
            for folder in old[: max(0, len(old) - KEEP_OUTPUTS + 1)]:
                shutil.rmtree(folder, ignore_errors=True)
            folder = self.output_dir / uuid.uuid4().hex
            folder.mkdir()
        return folder

    # ---- Generate ----------------------------------------------------------------------------------

    def generate(
        self,
        model: str,
        sampler: str,
        steps: float,
        seed: float,
        batch_size: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way to ask for a progress bar)
    ) -> tuple[PIL.Image.Image, PIL.Image.Image, str]:
        """Sample `batch_size` with `steps` steps of `sampler` (one of SAMPLERS); returns the
        samples (a grid, or a scatter of points), the trajectory strip and the path of its GIF."""
        pipe = self.model(model)
        if sampler not in SAMPLERS:
            raise user_error(f"sampler {sampler!r} is not one of {list(SAMPLERS)}")
        T = pipe.scheduler.config.num_train_timesteps
        steps = whole("steps", steps, 1, T)
        seed = whole("seed", seed, 0, SEED_MAX)
        batch_size = whole(f"batch size (for {model})", batch_size, 1, max_batch_size(pipe))

        # A scheduler of the request's own: set_timesteps changes a scheduler, and requests
        # run concurrently. The model is shared (inference only).
        chain = with_sampler(pipe, sampler)
        chain.set_progress_bar_config(disable=True)
        progress((0, steps), desc="denoising", unit="steps")

        def report(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            progress((i + 1, steps), desc=f"denoising (t = {t})", unit="steps")

        out = chain(
            batch_size=batch_size,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            trajectory_every=math.ceil(steps / GIF_FRAMES),
            callback=report,
        )
        points = makes_points(pipe.unet)
        samples = points_image(out.images, size=384) if points else image_grid(out.images, min_size=64)
        trajectory = out.trajectory  # samples, pred_original_samples: (K, B, ...)
        xs = [frame_picture(x, points) for x in trajectory.samples]
        x0s = [frame_picture(x, points) for x in trajectory.pred_original_samples]
        labels = [f"t = {t}" for t in trajectory.timesteps]
        shown = evenly(len(labels), STRIP_FRAMES)
        strip = sheet(
            [[xs[k] for k in shown], [x0s[k] for k in shown]],
            [labels[k] for k in shown],
            ("x_t", "predicted x_0"),
        )
        frames = [
            sheet([[x, x0]], [f"x_t, {label}", "predicted x_0"])
            for x, x0, label in zip(xs, x0s, labels, strict=True)
        ]
        gif = self.output_folder() / "denoising.gif"
        durations = [150] * (len(frames) - 1) + [1500]  # hold the last frame
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=durations, loop=0)
        return samples, strip, str(gif)

    def model_changed(self, model: str) -> tuple[gr.Slider, gr.Slider]:
        """The steps and batch-size sliders' bounds for `model`."""
        pipe = self.model(model)
        T = pipe.scheduler.config.num_train_timesteps
        most = max_batch_size(pipe)
        batch = min(most, 500 if makes_points(pipe.unet) else 16)
        return gr.Slider(maximum=T, value=min(50, T)), gr.Slider(maximum=most, value=batch)

    # ---- The picture of docs/math.md §7 -------------------------------------------------------------------

    def figure(
        self,
        num_points: float,
        steps: float,
        seed: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Figure:
        """Sohl-Dickstein et al. 2015, Fig. 1, from the Swiss-roll model: rows q(x_t), p(x_t)
        and the drift μ_θ(x_t, t) − x_t, at t = 0 (the data) and FIGURE_TIMES of T."""
        if FIGURE_MODEL not in self.models:
            raise user_error(f"the {FIGURE_MODEL!r} model is not installed, so this picture cannot be drawn")
        pipe = self.models[FIGURE_MODEL]
        T = pipe.scheduler.config.num_train_timesteps
        num_points = whole("number of points", num_points, 10, MAX_FIGURE_POINTS)
        steps = whole("reverse steps", steps, 1, T)
        seed = whole("seed", seed, 0, SEED_MAX)
        generator = torch.Generator().manual_seed(seed)

        # "trailing" spacing starts the chain at t = T and keeps T/2, T/4, T/10 for the usual step
        # counts; each slice is taken at the chain's timestep nearest the one asked for.
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        chain = scheduler.timesteps.tolist()  # descending train timesteps
        # Code index i is paper step t = i + 1 (docs/math.md, "Notation and conventions"), so the
        # slice at t is at i = t − 1.
        wanted = [round(f * T) - 1 for f in FIGURE_TIMES]
        positions = [min(range(len(chain)), key=lambda k, i=i: abs(chain[k] - i)) for i in wanted]
        sampler = DDPMPipeline(unet=pipe.unet, scheduler=scheduler)
        sampler.set_progress_bar_config(disable=True)

        def report(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            progress((i + 1, steps), desc="reverse trajectory", unit="steps")

        out = sampler(
            batch_size=num_points,
            num_inference_steps=steps,
            generator=generator,
            output_type="pt",
            trajectory_every=math.gcd(*positions) or 1,  # keeps every position asked for
            callback=report,
        )
        kept = dict(zip(out.trajectory.timesteps, out.trajectory.samples, strict=True))
        codes = [chain[k] for k in positions]  # the train timesteps of the slices
        reverse = [out.images] + [kept[i] for i in codes]  # (N, 2) each: x_0, then x_t

        data = load_dataset("swiss-roll", "test", num_samples=num_points, seed=seed)  # (N, 2)
        forward = [data] + [  # x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (docs/math.md §1)
            scheduler.add_noise(data, torch.randn(data.shape, generator=generator), i) for i in codes
        ]

        side = torch.linspace(-FIGURE_LIMIT * 0.8, FIGURE_LIMIT * 0.8, DRIFT_GRID)
        grid = torch.cartesian_prod(side, side)  # (G², 2)
        drifts = []
        with torch.no_grad():
            for i in [0, *codes]:  # the drift at t = 0 is that of the decoder step p(x_0 | x_1)
                t = torch.full((len(grid),), i, dtype=torch.long)
                # f_θ(x_t, t) = μ_θ(x_t, t), the mean of p(x_{t−1} | x_t) (docs/math.md §4)
                mean = scheduler.p_mean_variance(pipe.unet(grid, t).sample, grid, t)[0]
                drifts.append(mean - grid)  # (G², 2)

        titles = ["t = 0"] + [f"t = {i + 1}" for i in codes]
        figure = new_figure(3 * len(titles), 9.4)
        axes = figure.subplots(3, len(titles), sharex=True, sharey=True)
        names = ("q(x_t): forward", "p(x_t): reverse", "drift f_θ(x_t, t) − x_t")
        for c, title in enumerate(titles):
            axes[0, c].scatter(*forward[c].T.numpy(), s=1, c="tab:blue", alpha=0.5)
            axes[1, c].scatter(*reverse[c].T.numpy(), s=1, c="tab:red", alpha=0.5)
            axes[2, c].quiver(*grid.T.numpy(), *drifts[c].T.numpy(), angles="xy", color="tab:green")
            axes[0, c].set_title(title)
        for r, name in enumerate(names):
            axes[r, 0].set_ylabel(name)
        for ax in axes.flat:
            ax.set_xlim(-FIGURE_LIMIT, FIGURE_LIMIT)
            ax.set_ylim(-FIGURE_LIMIT, FIGURE_LIMIT)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        figure.suptitle(
            f"Swiss roll, T = {T}: forward and reverse trajectories ({steps}-step reverse chain), "
            "and the reverse drift (arrows scaled per panel)"
        )
        figure.tight_layout()
        return figure

    # ---- Schedules -----------------------------------------------------------------------------------

    def schedules(self, num_train_timesteps: float, beta_start: float, beta_end: float) -> Figure:
        """β_t, ᾱ_t, SNR(t) and β̃_t of each β schedule (docs/math.md §1–2) over t/T, side by side."""
        T = whole("T", num_train_timesteps, 2, MAX_SCHEDULE_STEPS)
        beta_start = number("β_start", beta_start, 1e-6, 0.5)
        beta_end = number("β_end", beta_end, 1e-6, 0.5)
        figure = new_figure(16, 4)
        axes = figure.subplots(1, 4)
        t = torch.arange(T)
        for name in SCHEDULE_NAMES:
            try:
                scheduler = DDPMScheduler(T, beta_start, beta_end, beta_schedule=name)
            except ValueError as error:  # the library's message names the bad value
                raise user_error(str(error)) from error
            alpha_bar = scheduler.alphas_cumprod  # (T,) float64
            snr = alpha_bar / (1 - alpha_bar)  # SNR(t) = ᾱ_t / (1 − ᾱ_t) (docs/math.md §1)
            zeros = torch.zeros(T, 1, dtype=torch.float64)
            posterior_variance = scheduler.q_posterior(zeros, zeros, t)[1][:, 0]  # β̃_t (docs/math.md §2)
            x = (t + 1).numpy() / T  # paper step t/T
            label = name + (" (ignores β_start, β_end)" if name == "cosine" else "")
            for ax, values in zip(axes, (scheduler.betas, alpha_bar, snr, posterior_variance), strict=True):
                ax.plot(x, values.numpy(), label=label)
        for ax, title, log in zip(
            axes,
            ("β_t", "ᾱ_t", "SNR(t) = ᾱ_t / (1 − ᾱ_t)", "posterior variance β̃_t"),
            (1, 0, 1, 1),
            strict=True,
        ):
            ax.set_title(title)
            ax.set_xlabel("t / T")
            if log:
                ax.set_yscale("log", nonpositive="mask")  # β̃_1 = 0 is left out
        axes[1].legend(fontsize=8)
        figure.tight_layout()
        return figure

    # ---- Likelihood ----------------------------------------------------------------------------------

    def digit(self, index: float) -> PIL.Image.Image:
        """The held-out digit `index`, scaled up."""
        index = whole("digit", index, 0, len(self.digits) - 1)
        return image_grid(to_unit(self.digits[index : index + 1]), min_size=128)

    def likelihood(
        self,
        model: str,
        index: float,
        seed: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, float, str]:
        """The T terms of L_vlb (docs/math.md §5) of held-out digit `index` under `model`: the path
        of their plot (iDDPM Fig. 2), the bound in bits/dim and its parts."""
        pipe = self.model(model, self.digit_models)
        if not isinstance(pipe.scheduler, DiffusionScheduler):
            raise user_error(
                f"{model!r} has a {type(pipe.scheduler).__name__}; the bound needs DDPM's posterior"
            )
        index = whole("digit", index, 0, len(self.digits) - 1)
        seed = whole("seed", seed, 0, SEED_MAX)
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the full T-step chain
        T = scheduler.config.num_train_timesteps
        calls = 0

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the bound in float64
            nonlocal calls
            calls += 1
            progress((calls, T), desc="terms of the bound", unit="timesteps")
            return pipe.unet(x_t.to(pipe.unet.dtype), t).sample.to(x_t.dtype)

        x0 = self.digits[index : index + 1].double()  # (1, 1, 8, 8)
        result = nll(model_fn, scheduler, x0, batch_size=1, generator=torch.Generator().manual_seed(seed))
        plot = plot_vlb_terms({f"digit {index}, {model}": result}, self.output_folder() / "vlb_terms.png")
        terms = result.terms_bits_per_dim  # (T,)
        parts = (
            f"**{result.bits_per_dim:.3f} bits/dim** = L_0 (decoder) {terms[0].item():.3f} "
            f"+ Σ L_t, t = 1…{T - 1}: {terms[1:].sum().item():.3f} "
            f"+ L_T (prior) {result.prior_bits_per_dim:.2e}"
        )
        return str(plot), result.bits_per_dim, parts

    # ---- the page ------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        names = list(self.models)
        first = (self.image_models or names)[0]
        # The sliders' bounds are the largest any model allows (gradio checks API calls against
        # them); the page narrows them to the chosen model's, and `generate` checks that model's.
        T = max(pipe.scheduler.config.num_train_timesteps for pipe in self.models.values())
        most = max(max_batch_size(pipe) for pipe in self.models.values())
        figure_T = (
            self.models[FIGURE_MODEL].scheduler.config.num_train_timesteps
            if FIGURE_MODEL in self.models
            else 1000
        )
        with gr.Blocks(title="ddpm-pipelines", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
            gr.Markdown(
                "# ddpm-pipelines\nDenoising diffusion (DDPM, Ho et al. 2020; iDDPM, Nichol & Dhariwal 2021) "
                "with the models that ship with the package."
            )
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        model = gr.Dropdown(names, value=first, label="Model")
                        sampler = gr.Radio(
                            list(SAMPLERS),
                            value="ddim",
                            label="Sampler",
                            info="ddpm with fewer steps is respaced; dpm-solver++ and unipc are "
                            "diffusers' multistep solvers",
                        )
                        steps = gr.Slider(1, T, value=min(50, T), step=1, label="Steps")
                        seed = gr.Number(0, label="Seed", precision=0)
                        batch = gr.Slider(1, most, value=min(16, most), step=1, label="Batch size")
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Column(scale=2):
                        samples = gr.Image(
                            label="Samples", format="png", elem_id="samples", buttons=["download"]
                        )
                        gif = gr.File(label="The denoising as an animated GIF")
                gr.Markdown("**The denoising**: x_t and the predicted x_0 at the scheduler's timesteps t")
                strip = gr.Image(format="png", show_label=False, buttons=["download", "fullscreen"])
                run.click(
                    self.generate,
                    [model, sampler, steps, seed, batch],
                    [samples, strip, gif],
                    api_name="generate",
                )
                model.change(self.model_changed, model, [steps, batch], api_visibility="private")
                demo.load(self.model_changed, model, [steps, batch], api_visibility="private")

            with gr.Tab("Forward and reverse"):
                gr.Markdown(
                    "Sohl-Dickstein et al. 2015, Figure 1, drawn live from the shipped Swiss-roll model: "
                    "time slices of the forward trajectory q(x_t) (top), of the learned reverse trajectory "
                    "p(x_t) turning N(0, I) back into the roll (middle), and the drift f_θ(x_t, t) − x_t of "
                    "the reverse step (bottom), at t = 0, T/10, T/4, T/2 and T."
                )
                with gr.Row():
                    num_points = gr.Slider(10, MAX_FIGURE_POINTS, value=1000, step=10, label="Points")
                    figure_steps = gr.Slider(
                        1, figure_T, value=min(100, figure_T), step=1, label="Reverse steps"
                    )
                    figure_seed = gr.Number(0, label="Seed", precision=0)
                draw = gr.Button("Draw", variant="primary")
                picture = gr.Plot(label="q(x_t), p(x_t) and the drift")
                draw.click(self.figure, [num_points, figure_steps, figure_seed], picture, api_name="figure")

            with gr.Tab("Schedules"):
                with gr.Row():
                    schedule_T = gr.Slider(2, MAX_SCHEDULE_STEPS, value=1000, step=1, label="T")
                    beta_start = gr.Number(1e-4, label="β_start")
                    beta_end = gr.Number(0.02, label="β_end")
                    show = gr.Button("Plot", variant="primary")
                schedule_plot = gr.Plot(label="β_t, ᾱ_t, SNR and β̃_t")
                inputs = [schedule_T, beta_start, beta_end]
                show.click(self.schedules, inputs, schedule_plot, api_name="schedules")
                demo.load(self.schedules, inputs, schedule_plot, api_visibility="private")

            with gr.Tab("Likelihood"):
                gr.Markdown(
                    "The variational bound L_vlb = L_T + Σ L_{t−1} + L_0 (Ho et al. 2020, eq. 5) on the "
                    "negative log-likelihood of one held-out 8×8 digit: all T terms, one model call each, "
                    "in bits/dim (as in Nichol & Dhariwal 2021, Fig. 2)."
                    + ("" if self.digit_models else "\n\n*No model of 8×8 grey images is loaded.*")
                )
                with gr.Row():
                    with gr.Column(scale=1):
                        digit_model = gr.Dropdown(
                            self.digit_models, value=(self.digit_models or [None])[0], label="Model"
                        )
                        index = gr.Slider(0, len(self.digits) - 1, value=0, step=1, label="Held-out digit")
                        likelihood_seed = gr.Number(0, label="Seed", precision=0)
                        digit = gr.Image(label="The digit", format="png", height=160)
                        measure = gr.Button("Compute the bound", variant="primary")
                    with gr.Column(scale=2):
                        bits = gr.Number(label="Bits/dim (upper bound on −log₂ p(x_0) / D)")
                        parts = gr.Markdown()
                        terms = gr.Image(label="Terms of the bound", format="png")
                index.change(self.digit, index, digit, api_name="digit")
                demo.load(self.digit, index, digit, api_visibility="private")
                measure.click(
                    self.likelihood,
                    [digit_model, index, likelihood_seed],
                    [terms, bits, parts],
                    api_name="likelihood",
                )
        return demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The ddpm-pipelines demo (Gradio).")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="FOLDER_OR_REPO_ID",
        help="a pipeline to serve besides the shipped ones: a local folder or a Hub repo id (repeatable)",
    )
    # Hugging Face Spaces sets GRADIO_SERVER_NAME=0.0.0.0; elsewhere the demo listens on localhost only.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--concurrency", type=int, default=2, help="requests computed at once; others queue")
    parser.add_argument("--queue-size", type=int, default=64, help="requests that may wait; more are refused")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to itself

    # A stop (SIGTERM, as from a container or a Space) closes the server as Ctrl-C does, so that
    # the app exits normally and its temporary folder goes with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = Demo(load_models(args.model)).build()
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    # The page has no upload; max_file_size bounds what gradio's own upload route accepts.
    demo.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size="1mb")


if __name__ == "__main__":
    main()
