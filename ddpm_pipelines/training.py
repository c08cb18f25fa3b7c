"""Training a DDPM (docs/math.md §5): `train(TrainingConfig(...))`, or `ddpm-pipelines train`.

One loop for one CPU or many GPUs (Hugging Face accelerate; the same command runs under
`accelerate launch` or `torchrun`): a batch x_0 → t (uniform, or importance-sampled by the
loss's second moment, iDDPM §3.3) → `losses.training_losses` → AdamW with warm-up, gradient
clipping and accumulation → an EMA of the weights.

Everything random in a step is drawn from generators seeded by (seed, micro-batch) (`draws`),
the data order of every epoch by (seed, epoch) and each image's flip by (seed, its position
in the run's stream of examples) (`data.example_batches`), so the state of a run is its step
count, its stream position and what the checkpoint holds (`checkpoints`: weights, EMA,
optimizer, the importance sampler's history, `resample`; the options, the time and the loss
so far): `resume=True` continues a killed run exactly where it stopped, whatever DataLoader
workers read the images, from the newest checkpoint that can be read and with the options it
was written with (`allow_changed_options` to change those outside RESUME_MAY_CHANGE). It
first removes what the killed run left half-written and the metrics it logged past that
checkpoint, so that the output folder holds what an uninterrupted run's would.

`train` strings the parts together: `_start` builds a run (`_Run`), `_optimizer_step` does
one step, and the loop logs, samples and checkpoints. On the CPU the steps run inside
`_heap_kept`, so that each step's large activations reuse the last step's memory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

import schedulers
from schedulers.base import check_choice

from . import hub
from .checkpoints import (
    CheckpointReadError,
    TrainingError,
    checkpoint_dirs,
    load_checkpoint,
    read_checkpoint,
    remove_unfinished,
    save_checkpoint,
)
from .data import (
    DATASET_NAMES,
    ImageDataset,
    ImageReadError,
    StreamingImages,
    default_num_workers,
    example_batches,
    image_dataset,
    load_dataset,
    seeded_generator,
)
from .losses import LOSS_TYPES, training_losses
from .models import UNET_PRESETS, MLPModel, UNetModel
from .pipeline import DDPMPipeline, makes_points
from .resample import TIMESTEP_SAMPLERS, LossSecondMomentSampler

logger = logging.getLogger(__name__)

MixedPrecision = Literal["no", "fp16", "bf16"]
LRSchedule = Literal["constant", "cosine", "linear"]
MIXED_PRECISIONS: tuple[str, ...] = get_args(MixedPrecision)
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
MODELS = ("mlp", *UNET_PRESETS)
# The options that may differ from the checkpoint's on resume (besides resume itself): how far
# the run goes (with a cosine or linear lr_schedule the decay then follows the new max_steps)
# and how it is run, watched, saved and pushed. Any other changes what the run computes.
RESUME_MAY_CHANGE = (
    "max_steps",
    "num_workers",
    "compile",
    "channels_last",
    "log_every",
    "sample_every",
    "sample_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "push_to_hub",
    "push_every_checkpoint",
    "tensorboard",
    "progress",
    "output_dir",
)


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainingConfig:
    """Every option of a run; saved as `training_config.json` in `output_dir`."""

    output_dir: str = field(metadata={"help": "where checkpoints, metrics, samples and the pipeline go"})
    dataset: str = _option("swiss-roll", "swiss-roll, digits, a folder of images, or hf:NAME")
    num_samples: int | None = _option(None, "the dataset's size (default: the dataset's own)")
    image_size: int | None = _option(None, "resize images to this (folders and hf: datasets)")
    center_crop: bool = _option(False, "resize the shorter side to image_size and crop the centre")
    random_flip: bool | None = _option(None, "flip images left-right at random (default: on, off for digits)")
    num_workers: int | None = _option(None, "processes decoding images (default: half the CPUs, ≤ 8)")
    streaming: bool = _option(False, "read an hf: dataset as a stream, for data larger than the disk")
    shuffle_buffer: int = _option(10_000, "with streaming: examples in the shuffle buffer")
    model: str = _option("mlp", "mlp (points) or a UNet preset (images)")
    loss: str = _option("simple", "simple, vlb or hybrid (docs/math.md §5)")
    variance_type: str | None = _option(None, "default: fixed_small for simple, learned_range otherwise")
    beta_schedule: str = _option("linear", "linear, scaled_linear, cosine or sigmoid (docs/math.md §1)")
    num_train_timesteps: int = _option(1000, "T, the length of the forward process")
    timestep_sampler: str = _option("uniform", "uniform, or importance (iDDPM §3.3; for vlb)")
    batch_size: int = _option(128, "per process and per micro-batch")
    gradient_accumulation_steps: int = _option(1, "micro-batches per optimizer step")
    max_steps: int = _option(1000, "optimizer steps")
    learning_rate: float = _option(1e-3, "AdamW's peak learning rate")
    lr_schedule: str = _option("constant", "after the warm-up: constant, cosine or linear decay")
    warmup_steps: int = _option(100, "steps of linear learning-rate warm-up")
    weight_decay: float = _option(0.0, "AdamW's decoupled weight decay")
    max_grad_norm: float | None = _option(1.0, "clip the gradient's norm to this")
    ema_decay: float = _option(0.9999, "the EMA's largest decay; 0 turns the EMA off")
    ema_power: float = _option(2 / 3, "EMA warm-up: decay = 1 − (1 + step)^−power, up to ema_decay")
    mixed_precision: str = _option("no", "no, fp16 or bf16 (CUDA)")
    compile: bool = _option(False, "run the model under torch.compile (one graph, compiled once)")
    channels_last: bool = _option(False, "images and the UNet's weights in channels-last memory format")
    seed: int = _option(0, "seeds the weights, the data order and every draw")
    log_every: int = _option(50, "steps between lines of metrics.jsonl (0: only at the end)")
    sample_every: int = _option(0, "steps between sample grids (0: none)")
    sample_steps: int = _option(100, "inference steps of those samples")
    checkpoint_every: int = _option(500, "steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = _option(3, "how many of the newest complete checkpoints to keep (0: all)")
    resume: bool = _option(
        False,
        "continue from the newest checkpoint in output_dir that can be read, with its options "
        "(see allow_changed_options)",
    )
    allow_changed_options: bool = _option(
        False,
        "with resume: continue although options that change what the run computes (batch_size × "
        "processes, learning_rate, seed, model, loss, …) differ from the checkpoint's; these may "
        f"change without it: {', '.join(RESUME_MAY_CHANGE)}",
    )
    push_to_hub: str | None = _option(None, "a Hub repo id: push the pipeline at the end")
    push_every_checkpoint: bool = _option(False, "also push at every checkpoint")
    tensorboard: bool = _option(True, "also log to TensorBoard when it is installed")
    progress: bool = _option(True, "show a progress bar")
    command: str | None = field(
        default=None, repr=False, metadata={"help": "the command line, for the model card"}
    )

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_choice("loss", self.loss, LOSS_TYPES)
        check_choice("timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "num_train_timesteps"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
            _check_int(name, getattr(self, name), 0)
        _check_int("sample_steps", self.sample_steps, 1)
        _check_int("shuffle_buffer", self.shuffle_buffer, 1)
        if self.streaming and not self.dataset.startswith("hf:"):
            raise ValueError(f"streaming=True reads an hf:NAME dataset, not {self.dataset!r}")
        if self.streaming and self.num_samples is not None:
            raise ValueError(
                f"num_samples={self.num_samples!r} applies to a dataset read whole, not a stream"
            )
        if self.num_workers is not None:
            _check_int("num_workers", self.num_workers, 0)
        if self.dataset in DATASET_NAMES and self.center_crop:
            raise ValueError(f"center_crop=True applies to a folder or hf:NAME, not {self.dataset!r}")
        if self.dataset == "swiss-roll" and self.random_flip:
            raise ValueError("random_flip=True applies to images; 'swiss-roll' holds points")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate={self.learning_rate!r} must be a positive number")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} must be in [0, 1)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be positive (or None: no clipping)")
        if self.push_every_checkpoint and not self.push_to_hub:
            raise ValueError("push_every_checkpoint=True needs push_to_hub=<repo id>")

    @property
    def learned_variance(self) -> bool:
        return self.resolved_variance_type in ("learned", "learned_range")

    @property
    def resolved_random_flip(self) -> bool:
        if self.random_flip is not None:
            return self.random_flip
        return self.dataset not in DATASET_NAMES  # a mirrored digit is not a digit

    @property
    def resolved_variance_type(self) -> str:
        if self.variance_type is not None:
            return self.variance_type
        return "fixed_small" if self.loss == "simple" else "learned_range"


def _check_int(name: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer ≥ {least}")


@dataclass
class TrainResult:
    pipeline_dir: Path  # the final pipeline (EMA weights when the EMA is on)
    steps: int
    seconds: float  # wall time of the training, over all of a resumed run's parts
    final_loss: float  # the last step's loss, averaged over all processes
    push_error: str | None = None  # set when a push failed; everything stays local


# ---- building the parts ------------------------------------------------------------------------------


def training_data(config: TrainingConfig) -> torch.Tensor | ImageDataset | StreamingImages:
    """The Swiss roll and the digits as a tensor in memory; a folder or hf: dataset as an
    ImageDataset, decoded as the run reads it (only its first image is read now), or with
    `streaming` as a StreamingImages."""
    if config.dataset in DATASET_NAMES:
        return load_dataset(config.dataset, "train", num_samples=config.num_samples, seed=config.seed)
    if config.streaming:
        name = config.dataset.removeprefix("hf:")
        return StreamingImages(
            name, "train", config.image_size, config.center_crop, config.seed, config.shuffle_buffer
        )
    return image_dataset(
        config.dataset,
        "train",
        num_samples=config.num_samples,
        image_size=config.image_size,
        center_crop=config.center_crop,
    )


def build_scheduler(config: TrainingConfig, shape: tuple[int, ...]) -> schedulers.DDPMScheduler:
    """ε prediction; x̂_0 clipped to [−1, 1] for images (N, C, H, W), not for points (N, D):
    they are not bounded."""
    return schedulers.DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        variance_type=config.resolved_variance_type,
        clip_sample=len(shape) == 4,
    )


def build_model(config: TrainingConfig, shape: tuple[int, ...]) -> torch.nn.Module:
    """An MLPModel for points of shape (N, D); a UNetModel preset for images (N, C, H, W),
    sized to them."""
    factor = 2 if config.learned_variance else 1
    if config.model == "mlp":
        if len(shape) != 2:
            raise ValueError(f"model='mlp' is for points (N, D); dataset {config.dataset!r} holds images")
        return MLPModel(in_features=shape[1], out_features=factor * shape[1])
    if len(shape) != 4:
        raise ValueError(
            f"model={config.model!r} is a UNet for images; dataset {config.dataset!r} holds points"
        )
    _, channels, height, _ = shape
    return UNetModel.from_preset(
        config.model, learned_variance=config.learned_variance, in_channels=channels, sample_size=height
    )


def draws(
    x0: torch.Tensor,
    index: int,
    config: TrainingConfig,
    rank: int,
    world: int,
    sampler: LossSecondMomentSampler | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This process's draws for the run's micro-batch `index`, on x0's device: (t (B,),
    noise (B, ...), importance weights (B,) or None).

    They are drawn for the global micro-batch (all processes) from generators of (seed,
    micro-batch), and each process takes its slice, as it does of the examples
    (`data.example_batches`): W processes with batch B compute what one with W·B does."""
    device, global_batch = x0.device, config.batch_size * world
    mine = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
    generator = seeded_generator(config.seed, "batch", index, device=device)
    weights = None
    if sampler is not None:  # the sampler's probabilities live on the CPU
        t, weights = sampler.sample(global_batch, seeded_generator(config.seed, "t", index))
        t, weights = t[mine].to(device), weights[mine].to(device)
    else:
        T = config.num_train_timesteps
        t = torch.randint(0, T, (global_batch,), generator=generator, device=device)[mine]  # (B,)
    noise = torch.randn((global_batch, *x0.shape[1:]), generator=generator, device=device)[mine]
    return t, noise, weights


def _write_atomically(path: Path, text: str) -> None:
    hub.write_text_atomically(path, text)


# ---- the loop ----------------------------------------------------------------------------------------


def train(config: TrainingConfig) -> TrainResult:
    """Run (or, with `resume=True`, continue) the training that `config` describes."""
    run = _start(config)
    accelerator, output = run.accelerator, Path(config.output_dir)
    metrics = _MetricsLog(output, config.tensorboard, run.step) if accelerator.is_main_process else None
    bar = None
    if config.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=run.step, desc="training", unit="step", dynamic_ncols=True)
    started, loss, push_error, pushed_step = time.perf_counter(), run.loss, None, None
    window_start, window_examples = time.perf_counter(), 0

    def seconds() -> float:  # the run's training time: its earlier parts', then this process's
        return run.seconds + time.perf_counter() - started

    run.model.train()
    try:
        with _heap_kept() if accelerator.device.type == "cpu" else nullcontext():
            while run.step < config.max_steps:
                try:
                    loss, grad_norm = _optimizer_step(run)
                except TrainingError as error:
                    last_good = checkpoint_dirs(output)
                    where = (
                        f"the last good checkpoint is {last_good[-1]}" if last_good else "no checkpoint yet"
                    )
                    raise TrainingError(f"{error}; {where}") from None
                run.step += 1
                run.position += run.per_step
                step = run.step
                window_examples += run.per_step
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if metrics is not None and (step == config.max_steps or _every(step, config.log_every)):
                    now = time.perf_counter()
                    metrics.log(
                        step,
                        loss=loss,
                        lr=run.lr_scheduler.get_last_lr()[0],
                        grad_norm=grad_norm if config.max_grad_norm is not None else None,
                        examples_per_second=window_examples / max(now - window_start, 1e-9),
                        epoch=run.position / run.data.shape[0] if run.data.shape[0] else None,
                    )
                    window_start, window_examples = now, 0
                if _every(step, config.sample_every) and accelerator.is_main_process:
                    _save_samples(output / "samples" / f"step-{step:08d}.png", _pipeline(run), config)
                if step == config.max_steps or _every(step, config.checkpoint_every):
                    accelerator.wait_for_everyone()
                    if accelerator.is_main_process:
                        model = accelerator.unwrap_model(run.model)
                        path = save_checkpoint(
                            output,
                            step,
                            run.position,
                            model,
                            run.optimizer,
                            run.ema,
                            run.sampler,
                            config,
                            processes=accelerator.num_processes,
                            seconds=seconds(),
                            loss=loss,
                        )
                        logger.info("saved %s", path)
                        if config.push_every_checkpoint:
                            folder = _save_pipeline(run, seconds(), loss)
                            push_error, pushed_step = _push(folder, config, step), step
                    accelerator.wait_for_everyone()
        total = seconds()
        if accelerator.is_main_process:
            folder = _save_pipeline(run, total, loss)
            if config.push_to_hub and pushed_step != run.step:
                push_error = _push(folder, config, run.step)
    finally:
        run.batches.close()  # the DataLoader's workers
        for stream in (metrics, bar):
            if stream is not None:
                stream.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output / "pipeline", run.step, total, loss, push_error)


def _every(step: int, period: int) -> bool:
    """Whether `step` is a multiple of a period of steps (0: never)."""
    return period > 0 and step % period == 0


def _optimizer_step(run: _Run) -> tuple[float, float]:
    """One optimizer step over the step's micro-batches (gradients accumulated, synchronised
    across processes on the last one): clipping, AdamW, the learning-rate schedule, the EMA.
    Returns (the loss, the gradient's norm before clipping (0 without clipping)): the step's
    one host read. Raises TrainingError, with the weights unchanged, when an image cannot be
    read or the loss is not finite."""
    config, accelerator, model = run.config, run.accelerator, run.model
    rank, world = accelerator.process_index, accelerator.num_processes
    accumulation = config.gradient_accumulation_steps
    total = torch.zeros((), device=accelerator.device)
    for micro in range(accumulation):
        index = run.step * accumulation + micro  # the run's micro-batch number
        try:
            x0 = next(run.batches).contiguous(memory_format=run.memory_format)
        except ImageReadError as error:
            raise TrainingError(
                f"{error} (at step {run.step + 1}). Fix or remove the file and continue with resume=True "
                "(--resume)"
            ) from None
        t, noise, weights = draws(x0, index, config, rank, world, run.sampler)
        last = micro == accumulation - 1
        with (
            accelerator.no_sync(model) if not last else nullcontext(),
            _dropout_seed(config.seed, index, rank),
        ):
            with accelerator.autocast():
                losses = training_losses(
                    lambda x, s: model(x, s).sample,
                    run.scheduler,
                    x0,
                    config.loss,
                    t=t,
                    noise=noise,
                    decoder="discretized" if run.images else "continuous",
                )  # (B,)
            loss = (losses * weights).mean() if weights is not None else losses.mean()
            accelerator.backward(loss / accumulation)
        if run.sampler is not None:
            all_t, all_losses = accelerator.gather((t, losses.detach().float()))
            run.sampler.update(all_t.cpu(), all_losses.cpu())
        total += loss.detach() / accumulation
    total = accelerator.reduce(total, "mean")
    norm = torch.zeros((), device=accelerator.device)  # the gradient's norm, when it is clipped
    if config.max_grad_norm is not None:
        norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    loss_value, grad_norm = torch.stack([total.float(), norm.to(total.device, torch.float32)]).tolist()
    if not math.isfinite(loss_value):
        run.optimizer.zero_grad(set_to_none=True)
        raise TrainingError(
            f"the loss is {loss_value} at step {run.step + 1}: stopping without applying it. "
            f"Try a lower learning_rate or mixed_precision='no'"
        )
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(accelerator.unwrap_model(model).parameters())
    return loss_value, grad_norm


# ---- setting a run up --------------------------------------------------------------------------------


@dataclass
class _Run:
    """A run's parts, as `_start` builds them, and where it stands."""

    config: TrainingConfig
    accelerator: Any
    data: torch.Tensor | ImageDataset | StreamingImages
    scheduler: schedulers.DDPMScheduler
    model: torch.nn.Module  # as accelerate prepared it (wrapped in DDP across processes)
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    ema: Any  # diffusers' EMAModel, or None
    sampler: LossSecondMomentSampler | None
    memory_format: torch.memory_format
    batches: Iterator[torch.Tensor]  # this process's micro-batches, from `position` on
    step: int  # optimizer steps done
    position: int  # examples of the run's stream read, by all processes
    seconds: float  # training time before this process: a resumed run's earlier parts
    loss: float  # the last step's loss (nan before the first step)

    @property
    def images(self) -> bool:
        return len(self.data.shape) == 4

    @property
    def per_step(self) -> int:
        """Examples of the stream read by one optimizer step (all processes, all micro-batches)."""
        config = self.config
        return config.batch_size * self.accelerator.num_processes * config.gradient_accumulation_steps


def _start(config: TrainingConfig) -> _Run:
    """Everything a run needs before its first step: the processes, the data, the model,
    optimizer, EMA and timestep sampler (from the newest checkpoint with `resume`), the
    learning-rate schedule at the run's step, and the batches from the run's position."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    # Several processes without CUDA (torchrun or accelerate launch on CPUs): gloo, which
    # accelerate picks only when told the run is on CPUs.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision: forget it (not the distributed setup) so that each run sets its own.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=multi_cpu)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    output = Path(config.output_dir)
    data = training_data(config)
    size = data.shape[0]  # None for a stream of unknown length
    if size is not None and size < config.batch_size * world:
        raise TrainingError(
            f"the dataset {config.dataset!r} has {size} examples, fewer than one batch "
            f"(batch_size={config.batch_size} × {world} processes): lower batch_size or add data"
        )
    scheduler = build_scheduler(config, data.shape)
    with torch.random.fork_rng(devices=[]):  # the initial weights from the run's seed
        torch.manual_seed(config.seed)
        model = build_model(config, data.shape)
    images = len(data.shape) == 4
    memory_format = torch.channels_last if config.channels_last and images else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type in ("cuda", "cpu"),  # one kernel for all the weights
    )
    ema = None
    if config.ema_decay > 0:
        ema = EMAModel(
            model.parameters(),
            decay=config.ema_decay,
            use_ema_warmup=True,
            power=config.ema_power,
            foreach=True,  # one kernel for all the weights rather than one each
        )
    sampler = (
        LossSecondMomentSampler(config.num_train_timesteps)
        if config.timestep_sampler == "importance"
        else None
    )
    state = dict(step=0, stream_position=0)  # optimizer steps done; examples of the stream read
    existing = checkpoint_dirs(output)
    if existing and not config.resume:
        raise TrainingError(
            f"{output} already holds checkpoints (newest {existing[-1].name}): pass resume=True "
            f"(--resume) to continue that run, or choose another output_dir"
        )
    if accelerator.is_main_process:
        for path in remove_unfinished(output):
            logger.info("removed %s, left by an interrupted run", path)
    if existing:
        state = _resume(existing, config, world, model, optimizer, ema, sampler)
    step, position = int(state["step"]), int(state["stream_position"])
    lr_scheduler = get_scheduler(
        "constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.max_steps,
    )
    with warnings.catch_warnings():  # replaying: no optimizer step is due before these
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        for _ in range(step):  # the schedule is a function of the step: replay it
            lr_scheduler.step()
    if config.compile:  # in place, before DDP wraps it: DDP's forward calls the compiled module
        # static shapes: a run has one; dynamic ones after a second size fail in inductor
        model.compile(fullgraph=True, dynamic=False)
    model, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.to(device)
    if isinstance(data, torch.Tensor):
        data = data.to(device)
    batches = example_batches(
        data,
        seed=config.seed,
        start=position,
        count=(config.max_steps - step) * config.gradient_accumulation_steps,
        batch_size=config.batch_size,
        rank=rank,
        world=world,
        random_flip=config.resolved_random_flip,
        num_workers=default_num_workers() if config.num_workers is None else config.num_workers,
        device=device,
    )
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        _write_atomically(output / "training_config.json", json.dumps(dataclasses.asdict(config), indent=2))
    return _Run(
        config,
        accelerator,
        data,
        scheduler,
        model,
        optimizer,
        lr_scheduler,
        ema,
        sampler,
        memory_format,
        batches,
        step,
        position,
        state.get("seconds", 0.0),
        state.get("loss", float("nan")),
    )


def _resume(
    existing: list[Path], config: TrainingConfig, world: int, model, optimizer, ema, sampler
) -> dict[str, Any]:
    """Load the newest of the `existing` checkpoints that can be read into the run's parts,
    once its options are checked (`_changed_options`), and return its state.json. A newer one
    that cannot be read (a truncated file) is skipped with a warning naming the file."""
    unreadable = []
    for path in reversed(existing):
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointReadError as error:
            unreadable.append(str(error))
            continue
        if unreadable:
            logger.warning(
                "%s: resuming from %s, the newest checkpoint that can be read", "; ".join(unreadable), path
            )
        changed = _changed_options(checkpoint.state, config, world)
        if changed and not config.allow_changed_options:
            raise TrainingError(
                f"the checkpoint {path} was written with other options ({'; '.join(changed)}): resume "
                f"with the checkpoint's, or pass allow_changed_options=True (--allow-changed-options) "
                f"to continue with these. Options that may change: {', '.join(RESUME_MAY_CHANGE)}"
            )
        if changed:
            logger.warning("resuming %s with changed options: %s", path, "; ".join(changed))
        load_checkpoint(checkpoint, model, optimizer, ema, sampler)
        step, position = checkpoint.state["step"], checkpoint.state["stream_position"]
        logger.info("resuming from %s (step %d, example %d of the stream)", path, step, position)
        return checkpoint.state
    raise TrainingError(
        f"{'; '.join(unreadable)}: no checkpoint in {existing[-1].parent} can be read; remove them to "
        f"start the run again, or choose another output_dir"
    )


def _changed_options(state: dict[str, Any], config: TrainingConfig, world: int) -> list[str]:
    """The options outside RESUME_MAY_CHANGE that differ from those a checkpoint's state.json
    records, as "name: then in the checkpoint, now now". The batch is compared over all
    processes: W processes with batch_size B compute what one with W·B does (`draws`)."""
    saved, saved_world = state["config"], state.get("processes", world)
    ignored = (*RESUME_MAY_CHANGE, "resume", "allow_changed_options", "command")
    changed = []
    for f in dataclasses.fields(config):
        then, now = saved.get(f.name, f.default), getattr(config, f.name)
        if f.name in ignored or (f.name == "batch_size" and then * saved_world == now * world):
            continue
        if f.name == "batch_size" and saved_world != world:
            where = f"{then} × {saved_world} in the checkpoint, {now} × {world} now"
            changed.append(f"batch_size × processes: {where}")
        elif then != now:
            changed.append(f"{f.name}: {then!r} in the checkpoint, {now!r} now")
    return changed


@contextmanager
def _heap_kept() -> Iterator[None]:
    """Inside, on Linux with glibc: every allocation from the heap (none mmap'd) and up to
    1 GiB freed at its top kept, so that a step's large activations reuse the last step's
    pages instead of faulting in fresh zeroed ones (the CPU allocator caches nothing). After:
    glibc's defaults again, and the kept memory returned. Elsewhere: nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl)
        libc = None
    if libc is None or not hasattr(libc, "malloc_trim"):
        yield
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, 65536)  # the defaults
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)


@contextmanager
def _dropout_seed(seed: int, index: int, rank: int) -> Iterator[None]:
    """Inside: the global RNG (which dropout draws from) seeded by (seed, micro-batch,
    rank). After: the caller's RNG state, as it was."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seeded_generator(seed, "dropout", index, rank).initial_seed() % 2**63)
        yield


def _pipeline(run: _Run) -> DDPMPipeline:
    """A CPU pipeline with a fresh model (contiguous, not compiled) holding the EMA weights
    (the trained ones without an EMA)."""
    with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave the RNG be
        net = build_model(run.config, run.data.shape)
    net.load_state_dict(run.accelerator.unwrap_model(run.model).state_dict())
    if run.ema is not None:
        run.ema.copy_to(net.parameters())
    scheduler = schedulers.DDPMScheduler.from_config(run.scheduler.config)
    pipe = DDPMPipeline(unet=net.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _save_samples(path: Path, pipe: DDPMPipeline, config: TrainingConfig) -> None:
    """A grid of 64 samples (images) or a picture of 2,000 points, with a fixed seed."""
    from .images import image_grid, points_image

    generator = torch.Generator().manual_seed(config.seed)
    points = makes_points(pipe.unet)
    out = pipe(
        batch_size=2000 if points else 64,
        num_inference_steps=config.sample_steps,
        generator=generator,
        output_type="pt",
    )
    picture = points_image(out.images) if points else image_grid(out.images)
    hub.write_file_atomically(path, lambda tmp: picture.save(tmp, format="PNG"))


def _save_pipeline(run: _Run, seconds: float, loss: float) -> Path:
    """output_dir/pipeline: the run's pipeline and its model card (how it was trained)."""
    folder = Path(run.config.output_dir) / "pipeline"
    pipe = _pipeline(run)
    pipe.save_pretrained(folder)
    processes, device = run.accelerator.num_processes, run.accelerator.device.type
    card = training_card(pipe, run.config, run.step, seconds, loss, processes=processes, device=device)
    _write_atomically(folder / "README.md", card)
    return folder


def _push(folder: Path, config: TrainingConfig, step: int) -> str | None:
    """Push the saved pipeline; on failure log why and how to retry, and return that."""
    try:
        hub.push_folder(folder, config.push_to_hub, commit_message=f"ddpm-pipelines: step {step}")
    except Exception as error:  # the network, a token, the Hub: training keeps everything
        message = (
            f"pushing to {config.push_to_hub!r} failed ({type(error).__name__}: {error}); everything is "
            f"kept in {config.output_dir}. Retry with: ddpm-pipelines push {folder} {config.push_to_hub}"
        )
        logger.error(message)
        return message
    logger.info("pushed step %d to %s", step, config.push_to_hub)
    return None


def training_card(
    pipe: DDPMPipeline,
    config: TrainingConfig,
    steps: int,
    seconds: float,
    loss: float,
    *,
    processes: int = 1,
    device: str = "cpu",
) -> str:
    """The pipeline's model card: the Hub card, titled with the repo it is pushed to or the
    folder that holds it (output_dir/pipeline), plus how it was trained: `seconds` over all
    of a resumed run's parts, the batch over the `processes` (on `device`, a torch device
    type) and the accumulated micro-batches, the last step's `loss` averaged over them."""
    images = not makes_points(pipe.unet)
    command = config.command or f"train(TrainingConfig(**{dataclasses.asdict(config)!r}))"
    name = config.push_to_hub or str(Path(config.output_dir) / "pipeline")
    factors = [str(config.batch_size)]  # per process and micro-batch
    if processes > 1:
        factors.append(f"{processes} processes")
    if config.gradient_accumulation_steps > 1:
        factors.append(f"{config.gradient_accumulation_steps} accumulated micro-batches")
    batch = config.batch_size * processes * config.gradient_accumulation_steps
    batch_text = f"{batch} ({' × '.join(factors)})" if len(factors) > 1 else str(batch)
    hardware = {"cuda": "a CUDA GPU", "cpu": "the CPU"}.get(device, device)
    if processes > 1:
        hardware = f"{processes} CUDA GPUs" if device == "cuda" else f"{processes} processes on {hardware}"
    return hub.model_card(name, "DDPMPipeline", images=images) + (
        f"\n## Training\n\n"
        f"- data: `{config.dataset}`; model: `{config.model}` "
        f"({sum(p.numel() for p in pipe.unet.parameters()):,} parameters); loss: `{config.loss}`, "
        f"variance: `{config.resolved_variance_type}`, timesteps: `{config.timestep_sampler}`\n"
        f"- {steps} steps of batch {batch_text}, {seconds / 60:.1f} minutes on {hardware}; "
        f"final loss {loss:.4f}\n\n"
        f"```\n{command}\n```\n"
    )


class _MetricsLog:
    """metrics.jsonl in the output folder (one JSON object per line), and TensorBoard's
    event files in output/tensorboard when it is installed and asked for. A run that starts
    at `step` (resumed) first drops what an interrupted run logged past it, so that each
    step is logged once, as by an uninterrupted run."""

    def __init__(self, output: Path, tensorboard: bool, step: int):
        path = output / "metrics.jsonl"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if _logged_step(line) <= step]
            if len(kept) < len(lines):
                _write_atomically(path, "".join(f"{line}\n" for line in kept))
        self.file = open(path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("TensorBoard is not installed: metrics go to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=step + 1)

    def log(self, step: int, **values: float | None) -> None:
        record = {"step": step, "time": time.time(), **{k: v for k, v in values.items() if v is not None}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time"):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _logged_step(line: str) -> float:
    """The step of a line of metrics.jsonl; infinite for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
