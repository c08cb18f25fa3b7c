"""`DDPMPipeline`: a model and a scheduler, and the sampling loop between them (docs/math.md §4):
x_T ~ N(0, I), then for each timestep t of the scheduler's chain, model output at (x_t, t)
→ `scheduler.step` → x_{t−1}.

It is a diffusers `DiffusionPipeline`, saved in diffusers' layout (model_index.json, unet/,
scheduler/): diffusers' DDPMPipeline loads what this saves, this loads what diffusers
saved, and the same generator gives the same images in both. Any scheduler with diffusers'
`set_timesteps` / `step` interface plugs in."""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, SchedulerMixin, UNet2DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

import schedulers
from schedulers.base import LEARNED_VARIANCES, check_choice

from . import hub
from .models import MLPModel, UNetModel

OUTPUT_TYPES = ("pil", "np", "pt")

# model_index.json entries: the classes a saved pipeline names, and what they load as. Our
# schedulers and UNet are saved under diffusers' names (their files are diffusers' own), so
# that diffusers loads them; diffusers' DDPM and DDIM schedulers load as ours.
MODEL_CLASSES = {"UNet2DModel": UNetModel, "UNetModel": UNetModel, "MLPModel": MLPModel}
SCHEDULER_CLASSES = {"DDPMScheduler": schedulers.DDPMScheduler, "DDIMScheduler": schedulers.DDIMScheduler}
# Samplers by name, for `with_sampler` and the command line: ours, and diffusers' multistep
# solvers (DPM-Solver++ of Lu et al. 2022, UniPC of Zhao et al. 2023), which plug in as they are.
SAMPLERS = ("ddpm", "ddim", "dpm-solver++", "unipc")
# The multistep solvers' own timestep spacing, not ours: their "leading" divides T by the steps
# + 1 and floors it, which starts 10 steps at t = 900 of 999, and 500 or more steps at t ≤ 500
# (at 1000, every t is 0).
SPREAD = {"timestep_spacing": "trailing"}
# The files of a pipeline folder (diffusers' layout).
COMPONENT_FILES = (
    "model_index.json",
    "unet/config.json",
    f"unet/{hub.WEIGHTS_NAME}",
    "scheduler/scheduler_config.json",
)


class Trajectory(NamedTuple):
    """Every k-th step of a sampling run (and its last), on the CPU in float32."""

    timesteps: list[int]  # the train timestep t of each kept step
    samples: torch.Tensor  # (K, B, ...) x_t, the input of the step at t
    pred_original_samples: torch.Tensor  # (K, B, ...) x̂_0 predicted at t


@dataclass
class DDPMPipelineOutput(BaseOutput):
    """`images`: PIL images, an array (B, H, W, C) in [0, 1] or a tensor (B, C, H, W) in
    [0, 1]; for a point model (MLPModel), the points, (B, features). `trajectory` when
    asked for with `trajectory_every`."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    trajectory: Trajectory | None = None


def makes_points(unet: torch.nn.Module) -> bool:
    """Whether the model works on points (B, features), like MLPModel, rather than images."""
    return "in_features" in unet.config


def _features(unet: torch.nn.Module) -> tuple[int, int]:
    """(input, output) channels of an image model, or features of a point model."""
    config = unet.config
    if makes_points(unet):
        return config.in_features, config.out_features or config.in_features
    return config.in_channels, config.out_channels


class DDPMPipeline(hub.PushToHubMixin, DiffusionPipeline):
    """Generate with `unet` (a UNetModel, diffusers' UNet2DModel or an MLPModel) and
    `scheduler` (ours or any diffusers scheduler):

        pipe = DDPMPipeline.from_pretrained("path/or/repo-id")
        images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images

    `pipe.to("cuda", torch.bfloat16)` runs the model in bf16; the scheduler's arithmetic
    stays in float32. `pipe.set_progress_bar_config(disable=True)` hides the progress bar.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: torch.nn.Module, scheduler: Any):
        super().__init__()
        if not isinstance(unet, torch.nn.Module) or not hasattr(unet, "config"):
            raise TypeError(
                f"unet must be a diffusers-style model (UNetModel, MLPModel), not {type(unet).__name__}"
            )
        if not all(hasattr(scheduler, name) for name in ("set_timesteps", "step", "timesteps")):
            raise TypeError(
                f"scheduler must have diffusers' scheduler interface (set_timesteps, step), "
                f"not {type(scheduler).__name__}"
            )
        variance_type = getattr(scheduler.config, "variance_type", None)
        n_in, n_out = _features(unet)
        needed = 2 * n_in if variance_type in LEARNED_VARIANCES else n_in
        # A model trained with a learned variance serves "analytic" too (that variance replaces
        # it), and a scheduler that takes the prediction alone (the loop hands it n_in channels).
        serves = n_out == 2 * n_in and (variance_type == "analytic" or not _splits_variance(scheduler))
        if n_out != needed and not serves:
            raise ValueError(
                f"the model outputs {n_out} channels for {n_in} input channels, but the scheduler's "
                f"variance_type={variance_type!r} needs {needed}"
                + (" (a learned variance doubles them)" if needed != n_in else "")
            )
        self.register_modules(unet=unet, scheduler=scheduler)

    # ---- sampling ------------------------------------------------------------------------

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """The shape of x_t: (B, C, H, W) for an image model, (B, features) for points."""
        config = self.unet.config
        if makes_points(self.unet):
            return (batch_size, config.in_features)
        size = config.sample_size
        return (batch_size, config.in_channels, *((size, size) if isinstance(size, int) else size))

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = None,
        return_dict: bool = True,
        trajectory_every: int | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> DDPMPipelineOutput | tuple:
        """Sample `batch_size` images (or points).

        num_inference_steps: steps of the chain (respaced with the scheduler's spacing);
            default all `num_train_timesteps`.
        generator: one torch.Generator, or a list of `batch_size` (one per sample).
        output_type: "pil", "np" or "pt"; default "pil" for images, "np" for points.
        trajectory_every: k to keep x_t and x̂_0 at every k-th step and the last, in
            `.trajectory` (for pictures of the denoising).
        callback: called after each step as `callback(step_index, timestep, x_{t−1}, x̂_0)`.
        """
        points = makes_points(self.unet)
        output_type = output_type or ("np" if points else "pil")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; allowed values: {OUTPUT_TYPES}")
        if points and output_type == "pil":
            raise ValueError("output_type='pil' is for images; this model makes points: use 'np' or 'pt'")
        T = self.scheduler.config.num_train_timesteps
        steps = T if num_inference_steps is None else num_inference_steps
        _check_count("batch_size", batch_size)
        _check_count("num_inference_steps", steps, T, f" (num_train_timesteps={T})")
        if trajectory_every is not None:
            _check_count("trajectory_every", trajectory_every)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators; it needs one per sample "
                f"(batch_size={batch_size})"
            )

        device, model_dtype = self._execution_device, self.unet.dtype
        # The scheduler's arithmetic in float32 even when the model runs in half precision.
        dtype = torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype
        # x_T ~ N(0, I) (docs/math.md §4), drawn as diffusers' DDPMPipeline draws it.
        sample = randn_tensor(self.sample_shape(batch_size), generator=generator, device=device, dtype=dtype)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(steps)  # CPU timesteps, as in diffusers' DDPMPipeline
        timesteps = self.scheduler.timesteps
        model_timesteps = timesteps.to(device)  # one copy; the model reads its step's view
        step_kwargs = {"generator": generator} if _accepts(self.scheduler.step, "generator") else {}
        kept: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        prediction_only = not _splits_variance(self.scheduler)  # the scheduler takes no variance channels
        # The first step whose model output is NaN or ±inf (len(timesteps): none), kept on the
        # device and read once after the loop: no host sync per step.
        first_non_finite = torch.full((), len(timesteps), device=device)

        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(sample, t).to(model_dtype)
            model_output = self.unet(model_input, model_timesteps[i]).sample.to(dtype)
            finite = torch.isfinite(model_output).all()
            first_non_finite = torch.where(finite, first_non_finite, first_non_finite.clamp(max=i))
            if prediction_only and model_output.shape[1] == 2 * sample.shape[1]:
                model_output = model_output[:, : sample.shape[1]]  # the prediction, not the variance
            result = self.scheduler.step(model_output, t, sample, **step_kwargs)
            keep = trajectory_every and (i % trajectory_every == 0 or i == len(timesteps) - 1)
            x0 = _predicted_x0(self.scheduler, result) if keep or callback is not None else None
            if keep:
                kept.append((int(t), sample.float().cpu(), x0.float().cpu()))
            sample = result.prev_sample
            if callback is not None:
                callback(i, int(t), sample, x0)

        _warn_if_non_finite(int(first_non_finite), timesteps)
        trajectory = None
        if kept:
            ts, xs, x0s = zip(*kept, strict=True)
            trajectory = Trajectory(list(ts), torch.stack(xs), torch.stack(x0s))
        if points:
            images = sample if output_type == "pt" else sample.float().cpu().numpy()
        else:
            images = self._to_images(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,) if trajectory is None else (images, trajectory)
        return DDPMPipelineOutput(images=images, trajectory=trajectory)

    def _to_images(self, sample: torch.Tensor, output_type: str) -> Any:
        """x_0 in [−1, 1] → [0, 1], as "pt" (B, C, H, W), "np" (B, H, W, C) or PIL."""
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        images = images.float().cpu().permute(0, 2, 3, 1).numpy()
        return images if output_type == "np" else self.numpy_to_pil(images)

    # ---- files and the Hub ---------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        torch_dtype: torch.dtype | None = None,
    ) -> DDPMPipeline:
        """Load a pipeline folder in diffusers' layout — ours, or one diffusers saved (such as
        google/ddpm-cifar10-32) — from a local folder or a Hub repo id at `revision`; offline
        (HF_HUB_OFFLINE=1) from the Hugging Face cache. Only safetensors weights are read."""
        folder = hub.resolve_folder(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            required=COMPONENT_FILES,
        )
        index = hub.read_config(folder / "model_index.json", ("DDPMPipeline", "DDIMPipeline"))
        missing = [name for name in ("unet", "scheduler") if name not in index]
        if missing:
            raise ValueError(f"{folder / 'model_index.json'} lacks the components {missing}")
        unet = _load_model(folder, index["unet"])
        if torch_dtype is not None:
            unet = unet.to(dtype=torch_dtype)
        return cls(unet=unet, scheduler=_load_scheduler(folder, index["scheduler"]))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write model_index.json, unet/ and scheduler/ (diffusers' layout), atomically."""

        def write(folder: Path) -> None:
            self.unet.save_pretrained(folder / "unet")
            # What scheduler.save_pretrained writes, without its log line naming the temporary folder.
            (folder / "scheduler").mkdir()
            (folder / "scheduler" / "scheduler_config.json").write_text(
                self.scheduler.to_json_string(), "utf-8"
            )
            index = {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": diffusers.__version__,
                "unet": _saved_as(self.unet),
                "scheduler": _saved_as(self.scheduler),
            }
            (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

        hub.save_atomically(write, save_directory)

    def _model_card(self, repo_id: str) -> str:
        return hub.model_card(repo_id, "DDPMPipeline", images=not makes_points(self.unet))


# The pretrained pipelines that ship inside the package (examples/train_pretrained.py made them).
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
PRETRAINED = ("swiss-roll", "digits")


def load_pretrained(name: str) -> DDPMPipeline:
    """A pipeline that ships with the package, offline: "swiss-roll" (an MLPModel on the 2-D
    Swiss roll) or "digits" (a UNet on scikit-learn's 8×8 digits). Their model cards
    (README.md in `PRETRAINED_DIR / name`) say how they were trained and measured."""
    if name not in PRETRAINED:
        raise ValueError(
            f"name={name!r} is not a pretrained pipeline of this package; allowed values: {PRETRAINED}"
        )
    folder = PRETRAINED_DIR / name
    if not (folder / "model_index.json").is_file():
        raise OSError(f"the pretrained pipeline {name!r} is missing from {folder}: reinstall ddpm-pipelines")
    return DDPMPipeline.from_pretrained(folder)


def _warn_if_non_finite(first: int, timesteps: torch.Tensor) -> None:
    """One warning naming the step where the model's output was first NaN or ±inf (`first`;
    len(timesteps) where it never was): from there on the samples are likely NaN."""
    if first < len(timesteps):
        warnings.warn(
            f"the model's output was NaN or infinite first at step {first} of {len(timesteps)} "
            f"(t={int(timesteps[first])}): the samples are likely NaN from there on (black images); "
            "check the weights, or run the model in float32 rather than float16",
            RuntimeWarning,
            stacklevel=4,  # the caller of pipe(...): past __call__ and torch.no_grad's wrapper
        )


def _check_count(name: str, value: Any, most: int | None = None, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (most and value > most):
        allowed = f"an integer in [1, {most}]" if most else "a positive integer"
        raise ValueError(f"{name}={value!r} must be {allowed}{why}")


def _splits_variance(scheduler: Any) -> bool:
    """Whether `scheduler.step` takes a learned variance's output (prediction and variance
    channels) itself: ours and diffusers' DDPMScheduler do; the other diffusers schedulers
    want the prediction alone (its multistep solvers cut 3 channels, right only for RGB)."""
    return isinstance(scheduler, (schedulers.DiffusionScheduler, diffusers.DDPMScheduler))


def with_sampler(pipe: DDPMPipeline, sampler: str) -> DDPMPipeline:
    """A pipeline with `pipe`'s model and a scheduler `sampler` (one of SAMPLERS) built from
    `pipe`'s scheduler config: the same β schedule and prediction type, another reverse rule."""
    check_choice("sampler", sampler, SAMPLERS)
    cls, options = {
        "ddpm": (schedulers.DDPMScheduler, {}),
        "ddim": (schedulers.DDIMScheduler, {}),
        "dpm-solver++": (diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", **SPREAD}),
        "unipc": (diffusers.UniPCMultistepScheduler, SPREAD),
    }[sampler]
    accepted = inspect.signature(cls.__init__).parameters  # not our extra keys: diffusers warns of them
    config = {key: value for key, value in pipe.scheduler.config.items() if key in accepted}
    return DDPMPipeline(unet=pipe.unet, scheduler=cls.from_config({**config, **options}))


def _predicted_x0(scheduler: Any, result: Any) -> torch.Tensor:
    """The step's x̂_0: its output's `pred_original_sample` (ours, diffusers' DDPM and DDIM);
    diffusers' multistep solvers (DPM-Solver++, UniPC) return `prev_sample` alone and keep the
    step's model output converted to x̂_0 (the data prediction they solve for, as `with_sampler`
    builds them) as the last of their `model_outputs`."""
    x0 = getattr(result, "pred_original_sample", None)
    return scheduler.model_outputs[-1] if x0 is None else x0


def _accepts(function: Callable, name: str) -> bool:
    return name in inspect.signature(function).parameters


def _saved_as(component: Any) -> list[str]:
    """The model_index.json entry [library, class] for a component."""
    if isinstance(component, UNet2DModel):
        return ["diffusers", "UNet2DModel"]
    if isinstance(component, MLPModel):
        return ["ddpm_pipelines", "MLPModel"]
    name = type(component).__name__
    if name in SCHEDULER_CLASSES or getattr(diffusers, name, None) is type(component):
        return ["diffusers", name]
    raise ValueError(f"cannot save a {name} in a pipeline: it is neither ours nor a diffusers class")


def _entry_class(folder: Path, entry: Any) -> str:
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise ValueError(
            f"{folder / 'model_index.json'}: a component entry must be [library, class], not {entry!r}"
        )
    return entry[1]


def _load_model(folder: Path, entry: Any) -> torch.nn.Module:
    name = _entry_class(folder, entry)
    if name not in MODEL_CLASSES:
        raise ValueError(
            f"{folder / 'model_index.json'} names the model class {name!r}; this loads {tuple(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[name].from_pretrained(folder / "unet")


def _load_scheduler(folder: Path, entry: Any) -> Any:
    """Ours for DDPM and DDIM; any other diffusers scheduler as diffusers' own class."""
    name = _entry_class(folder, entry)
    cls = SCHEDULER_CLASSES.get(name) or getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(
            f"{folder / 'model_index.json'} names the scheduler class {name!r}, which is neither "
            f"{tuple(SCHEDULER_CLASSES)} nor a diffusers scheduler"
        )
    path = folder / "scheduler" / "scheduler_config.json"
    return cls.from_config(hub.read_config(path, (name,)))
