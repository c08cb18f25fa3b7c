"""Training throughput, model FLOP utilization and memory of our `train` loop, against
diffusers' unconditional training recipe, in one run (issue 12).

1. Throughput (examples per second) of the same model, batch and precision, fed from a
   folder of generated PNG images, per image size:
   - "diffusers recipe": train_unconditional.py's inner loop (a shuffled DataLoader over
     the decoded images in memory, noise and t drawn per batch, `add_noise`, the UNet, an
     MSE loss, `accelerator.backward`, clipping, AdamW, a warm-up schedule, diffusers'
     EMAModel, the loss read back every step for its logs);
   - "diffusers recipe, heap kept" (CPU only): the same inside the glibc allocator setting
     that `train` runs its CPU steps in (`training._heap_kept`), which spares every step
     faulting in fresh pages for its large activations: what the setting alone gives;
   - "ours, in memory": `train` on the folder decoded whole into one tensor
     (`data.load_dataset`, the old way);
   - "ours, loader": `train` as it is, reading the folder lazily through its DataLoader
     with the default number of worker processes (`data.default_num_workers`);
   - "ours compiled, loader": the same with compile=True (not with --no-compile).
   Both loops use L_simple with uniform t, so the work per step is the same. Each run is a
   child process of its own (the hidden --measure-child flag), so that none inherits
   another's allocator state, heap or compiled code, and is timed over `--steps` steps after
   `--warmup` untimed ones (which cover torch.compile); ours from its own metrics.jsonl,
   logged every step. `--rounds` rounds run every
   variant once, in an order rotated each round; a variant's figure is its median over
   the rounds, and a ratio the median over the rounds of the ratio within each round (so
   that the machine's drifts between rounds cancel). Ratios: loader / in memory (the
   issue's target ≥ 0.90), ours eager (loader) / diffusers and ours compiled (loader) /
   diffusers (target ≥ 1.2), and ours compiled / diffusers with the heap kept (how much of
   the gain is not the allocator's).
2. Model FLOP utilization beside each figure: the forward FLOPs of one sample, counted in
   the run by torch.utils.flop_counter.FlopCounterMode (attention through the math
   backend, so that its matmuls are counted), times 3 for a training step (forward and
   backward), times examples per second, over a peak measured in the same run: the best
   of several large square matmuls (float32 on the CPU, bfloat16 on CUDA).
3. The step alone (`steps_in_turn`), without either loop around it: one step of the
   recipe's (foreach AdamW, diffusers' EMA tensor by tensor) and of ours (fused AdamW, a
   foreach EMA; eager, compiled, and compiled with channels-last) in turn, for
   `--step-rounds` rounds in one process, so that the machine's slow drifts cancel within a
   round; on the CPU also the share of our eager step's time in the convolutions forward
   and backward, which every variant calls alike (torch.profiler).
4. Memory: the peak proportional set size of a training run's whole process tree (the
   DataLoader's workers included; `common.peak_pss_bytes`), a few steps on a folder of
   `--memory-images` PNGs against the same on the first `--memory-few` of them (the
   issue's bound: within 150 MB), read by the loader and, for comparison, decoded in
   memory. Each run is a child process of this script (the hidden --memory-child flag),
   repeated `--memory-repeats` times, the two folders alternating; the figure is the
   median of the repeats.

  --device cpu (default): the "small-32" UNet (sized to the images), batch 64, fp32, on
      smooth images (uniform noise at a quarter of the side, upsampled bicubic, so that
      their PNGs decode about as natural images do), 32×32 and 64×64; memory on 64×64.
  --device cuda: the "ddpm-cifar10-32" preset, batch 128, fp32 and --mixed-precision bf16,
      on random 32×32 images (CIFAR-10 itself needs a download); MFU against the bf16
      matmul peak for both precisions.

The figures in the README come from

    python benchmarks/training.py                  # and: --device cuda

(--steps, --warmup, --rounds, --step-rounds, --batch-size, --sizes, --images, --memory-images,
--memory-few, --memory-size, --memory-repeats, --no-memory and --no-compile make shorter
runs.) It prints Markdown tables and writes the figures to
benchmarks/results/training_<device>.json (--out).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from common import peak_pss_bytes, sync

from ddpm_pipelines import training
from ddpm_pipelines.data import default_num_workers, load_dataset
from ddpm_pipelines.models import UNetModel

# Per device: the UNet preset, the batch size, the precisions, the image sizes, and the
# side of the noise that is upsampled into each image (as a fraction of the image's side).
SETUPS = {
    "cpu": dict(preset="small-32", batch_size=64, precisions=("no",), sizes="32,64", detail=1 / 4),
    "cuda": dict(preset="ddpm-cifar10-32", batch_size=128, precisions=("no", "bf16"), sizes="32", detail=1),
}
VARIANTS = (
    "diffusers recipe",
    "diffusers recipe, heap kept",
    "ours, in memory",
    "ours, loader",
    "ours compiled, loader",
)
DIFFUSERS, DIFFUSERS_KEPT, IN_MEMORY, LOADER, COMPILED = VARIANTS
RATIOS = {  # name: (numerator, denominator)
    "loader_over_in_memory": (LOADER, IN_MEMORY),
    "eager_over_diffusers": (LOADER, DIFFUSERS),
    "compiled_over_diffusers": (COMPILED, DIFFUSERS),
    "compiled_over_diffusers_heap_kept": (COMPILED, DIFFUSERS_KEPT),
}
MEMORY_STEPS = 3
MB = 1e6


# ---- the two loops ---------------------------------------------------------------------------------


def diffusers_recipe(model, data, batch_size, steps, warmup, device, mixed_precision) -> tuple[float, float]:
    """(examples per second of train_unconditional.py's inner loop over `steps` steps after
    `warmup`, seconds from the call to the end of the warm-up steps)."""
    import diffusers
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    called = time.perf_counter()
    AcceleratorState._reset_state(reset_partial_state=False)  # a precision of its own, as `train` does
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data), batch_size=batch_size, shuffle=True
    )
    lr_scheduler = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=10, num_training_steps=steps + warmup
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, power=3 / 4)
    ema.to(accelerator.device)
    model.train()
    done, start = 0, None
    while done < steps + warmup:
        for (clean,) in loader:
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            noise = torch.randn(clean.shape, device=clean.device)
            t = torch.randint(0, 1000, (clean.shape[0],), device=clean.device).long()
            noisy = scheduler.add_noise(clean, noise, t)
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(noisy, t).sample.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema.step(model.parameters())
            loss.detach().item()  # the recipe logs the loss every step
            done += 1
            if done == steps + warmup:
                break
    sync(device)
    return steps * batch_size / (time.perf_counter() - start), start - called


def ours(
    folder, preset, batch_size, steps, warmup, mixed_precision, *, in_memory: bool, compile: bool
) -> tuple[float, float]:
    """(examples per second of `train` over `steps` steps after `warmup`, from its own
    metrics, logged every step; seconds from the call to the end of the warm-up steps:
    reading the data, building the model, compiling it, the steps)."""
    with tempfile.TemporaryDirectory() as out:
        called = time.time()  # the metrics' clock
        with decoded_in_memory(in_memory):
            config = run_config(out, folder, preset, batch_size, steps + warmup, mixed_precision, compile)
            training.train(config)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    first, last = records[warmup - 1], records[-1]  # records[i] is step i + 1
    return steps * batch_size / (last["time"] - first["time"]), first["time"] - called


def run_config(
    out, folder, preset, batch_size, max_steps, mixed_precision, compile
) -> training.TrainingConfig:
    """The recipe's settings (L_simple, uniform t, AdamW at 1e-4 with 10 warm-up steps and a
    cosine decay, EMA), a line of metrics every step, no checkpoint before the end."""
    return training.TrainingConfig(
        output_dir=out,
        dataset=folder,
        model=preset,
        batch_size=batch_size,
        max_steps=max_steps,
        log_every=1,
        checkpoint_every=0,
        learning_rate=1e-4,
        lr_schedule="cosine",
        warmup_steps=10,
        ema_decay=0.9999,
        mixed_precision=mixed_precision,
        compile=compile,
        progress=False,
        tensorboard=False,
    )


@contextmanager
def decoded_in_memory(enabled: bool) -> Iterator[None]:
    """While inside (when `enabled`), `train` gets its folder decoded whole into one float32
    tensor by `load_dataset` (the old way) instead of an ImageDataset read by workers."""
    original = training.training_data
    if enabled:
        training.training_data = lambda config: load_dataset(config.dataset, num_samples=config.num_samples)
    try:
        yield
    finally:
        training.training_data = original


# ---- FLOPs -------------------------------------------------------------------------------------------


def forward_flops(model: torch.nn.Module, size: int) -> int:
    """The forward FLOPs of one sample (3, size, size), counted by FlopCounterMode; attention
    through the math backend, whose matmuls it counts (the fused CPU kernel it does not)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).cpu()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size), torch.tensor([1]))
    return counter.get_total_flops()


def peak_flops(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, how it was measured): the best of 10 square matmuls, float32 n = 2048 on the
    CPU, bfloat16 n = 8192 on CUDA."""
    n, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    dtype_name = str(dtype).removeprefix("torch.")
    return 2 * n**3 / best, f"best of 10 torch.mm of {n}×{n} {dtype_name} matrices on {device.type}"


# ---- data --------------------------------------------------------------------------------------------


def write_images(folder: Path, count: int, size: int, detail: int, seed: int = 0) -> Path:
    """`count` RGB PNGs of size × size: uniform noise at detail × detail, upsampled bicubic
    (detail == size: the noise itself)."""
    import PIL.Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for first in range(0, count, 256):
        noise = torch.rand(min(256, count - first), 3, detail, detail, generator=generator)
        images = F.interpolate(noise, size=size, mode="bicubic").clamp(0, 1)  # (n, 3, S, S)
        pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (n, S, S, 3)
        for i, image in enumerate(pixels):
            PIL.Image.fromarray(image).save(folder / f"{first + i:05d}.png")
    return folder


# ---- throughput --------------------------------------------------------------------------------------


def throughput(size, folder, flops, peak, args) -> tuple[list[dict], list[dict]]:
    """The rows and ratios of one image size, each precision: `args.rounds` rounds of every
    variant, in an order rotated each round. The heap is kept only on the CPU (`train` keeps
    it only there); --no-compile leaves the compiled variant out."""
    left_out = {DIFFUSERS_KEPT} if args.device != "cpu" else set()
    left_out |= {COMPILED} if args.no_compile else set()
    variants = [variant for variant in VARIANTS if variant not in left_out]
    rows, ratios = [], []
    for precision in SETUPS[args.device]["precisions"]:
        speeds, startups = {variant: [] for variant in variants}, {}
        for turn in range(args.rounds):
            for variant in variants[turn % len(variants) :] + variants[: turn % len(variants)]:
                speed, startup = measure(variant, folder, precision, args)
                speeds[variant].append(speed)
                startups.setdefault(variant, startup)  # the first round's: a cold compile
                print(f"  {size}×{size} {precision} {variant}: {speed:.1f} examples/s", file=sys.stderr)
        for variant in variants:
            speed = statistics.median(speeds[variant])
            rows.append(
                dict(
                    size=size,
                    precision=precision,
                    variant=variant,
                    examples_per_second=speed,
                    rounds=speeds[variant],
                    mfu=3 * flops * speed / peak,
                    startup_seconds=startups[variant],
                )
            )
        ratio = dict(size=size, precision=precision)
        for name, (top, bottom) in RATIOS.items():
            if top in variants and bottom in variants:
                ratio[name] = statistics.median(
                    a / b for a, b in zip(speeds[top], speeds[bottom], strict=True)
                )
            else:
                ratio[name] = None
        ratios.append(ratio)
    return rows, ratios


def measure(variant: str, folder: Path, precision: str, args: argparse.Namespace) -> tuple[float, float]:
    """(examples per second, start-up seconds) of one run of `variant` on `folder`, in a child
    process of its own (this script with the hidden --measure-child), as a user runs either
    loop: no run inherits another's allocator settings, heap, compiled code or warm caches."""
    command = [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--measure-child", variant, str(folder), precision]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"the run {variant!r} failed (exit status {done.returncode}):\n{done.stderr[-4000:]}"
        )
    speed, startup = json.loads(done.stdout.splitlines()[-1])
    return speed, startup


def measure_child(args: argparse.Namespace) -> None:
    """One run, as --measure-child VARIANT FOLDER PRECISION says; prints [examples/s, start-up s].
    The recipe trains the model `train` builds from the same seed, on the folder decoded into
    memory; "heap kept" runs it inside `train`'s allocator setting (`training._heap_kept`)."""
    variant, folder, precision = args.measure_child
    preset, device = SETUPS[args.device]["preset"], torch.device(args.device)
    if variant in (DIFFUSERS, DIFFUSERS_KEPT):
        data = load_dataset(folder)
        torch.manual_seed(0)  # the weights `train` starts from (config.seed = 0)
        model = UNetModel.from_preset(preset, in_channels=3, sample_size=data.shape[-1])
        with training._heap_kept() if variant == DIFFUSERS_KEPT else nullcontext():
            result = diffusers_recipe(
                model, data, args.batch_size, args.steps, args.warmup, device, precision
            )
    else:
        in_memory, compile = variant == IN_MEMORY, variant == COMPILED
        result = ours(
            folder,
            preset,
            args.batch_size,
            args.steps,
            args.warmup,
            precision,
            in_memory=in_memory,
            compile=compile,
        )
    print(json.dumps(result))


# ---- steps in turn -----------------------------------------------------------------------------------

STEP_VARIANTS = ("recipe's step", "ours, eager", "ours, compiled", "ours, compiled, channels-last")


def steps_in_turn(size: int, model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """The step alone, without either loop around it: one step of each variant in turn, for
    `args.step_rounds` rounds in one process, on one random batch, inside `train`'s heap
    setting on the CPU (so that no variant pays for page faults). The recipe's step is
    foreach AdamW and diffusers' EMA tensor by tensor; ours fused AdamW and a foreach EMA,
    eager or compiled. A round's ratios cancel the machine's drifts, which are slower than a
    round. On the CPU also `convolution_share` of our eager step."""
    from diffusers.training_utils import EMAModel

    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    parts = {}
    for variant in STEP_VARIANTS if not args.no_compile else STEP_VARIANTS[:2]:
        net = copy.deepcopy(model).to(device)
        memory_format = torch.channels_last if "channels-last" in variant else torch.contiguous_format
        net.to(memory_format=memory_format)
        ours = variant != STEP_VARIANTS[0]
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=ours)
        ema = EMAModel(net.parameters(), decay=0.9999, use_ema_warmup=True, power=3 / 4, foreach=ours)
        if "compiled" in variant:
            net.compile(fullgraph=True, dynamic=False)
        parts[variant] = (net, optimizer, ema, x.contiguous(memory_format=memory_format))

    def step(variant: str) -> None:
        net, optimizer, ema, batch = parts[variant]
        noise = torch.randn_like(batch)
        t = torch.randint(0, 1000, (batch.shape[0],), device=device)
        F.mse_loss(net(batch + noise, t).sample, noise).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(net.parameters())
        sync(device)

    variants, seconds = list(parts), {variant: [] for variant in parts}
    with training._heap_kept() if device.type == "cpu" else nullcontext():
        for variant in variants:
            for _ in range(2):  # warm-up, and the compiles
                step(variant)
        for turn in range(args.step_rounds):
            for variant in variants[turn % len(variants) :] + variants[: turn % len(variants)]:
                started = time.perf_counter()
                step(variant)
                seconds[variant].append(time.perf_counter() - started)
        share = convolution_share(lambda: step(STEP_VARIANTS[1])) if device.type == "cpu" else None
    recipe = seconds[STEP_VARIANTS[0]]
    rows = [
        dict(
            variant=variant,
            ms_per_step=1e3 * statistics.median(seconds[variant]),
            speed_over_recipe=statistics.median(r / s for r, s in zip(recipe, seconds[variant], strict=True)),
        )
        for variant in variants
    ]
    print(
        f"  {size}×{size} steps in turn: " + ", ".join(f"{r['speed_over_recipe']:.2f}" for r in rows),
        file=sys.stderr,
    )
    return dict(size=size, rounds=args.step_rounds, rows=rows, convolution_share=share)


def convolution_share(step: Callable[[], None]) -> float:
    """The share of a CPU step's self time spent in the convolutions, forward and backward
    (torch.profiler): oneDNN kernels that eager and compiled steps alike call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        step()
    events = profiled.key_averages()
    convolutions = sum(
        e.self_cpu_time_total
        for e in events
        if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward")
    )
    return convolutions / sum(e.self_cpu_time_total for e in events)


# ---- memory ------------------------------------------------------------------------------------------


def memory(folder: Path, args: argparse.Namespace) -> list[dict]:
    """The peak PSS of a short training run on the first `args.memory_few` images of
    `folder` and on all of them, read by the loader and decoded in memory: the median of
    `args.memory_repeats` runs each, alternating."""
    few = folder.parent / "memory-few"
    few.mkdir()
    for path in sorted(folder.iterdir())[: args.memory_few]:
        shutil.copy(path, few / path.name)
    out = []
    for source in ("loader", "memory"):
        peaks = {"few": [], "many": []}
        for _ in range(args.memory_repeats):
            for name, where in (("few", few), ("many", folder)):
                peaks[name].append(peak_memory(where, source, args))
        small, large = statistics.median(peaks["few"]), statistics.median(peaks["many"])
        out.append(dict(data=source, few_bytes=small, many_bytes=large, difference_bytes=large - small))
        out[-1].update(few_repeats=peaks["few"], many_repeats=peaks["many"])
        print(f"  memory, {source}: {small / MB:.0f} MB, {large / MB:.0f} MB", file=sys.stderr)
    return out


def peak_memory(folder: Path, source: str, args: argparse.Namespace) -> int:
    """The peak PSS, in bytes, of a child process training on `folder` and its workers."""
    command = [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size)]
    command += ["--memory-child", str(folder), "--memory-child-data", source]
    status, peak = peak_pss_bytes(command)
    if status != 0:
        raise SystemExit(f"the memory run failed (exit status {status}): {' '.join(command)}")
    return peak


def memory_child(args: argparse.Namespace) -> None:
    """A few steps of `train` on the folder --memory-child, read as --memory-child-data says."""
    preset = SETUPS[args.device]["preset"]
    with tempfile.TemporaryDirectory() as out, decoded_in_memory(args.memory_child_data == "memory"):
        training.train(run_config(out, args.memory_child, preset, args.batch_size, MEMORY_STEPS, "no", False))


# ---- the run -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (`argv`, default sys.argv), checked: a bad value exits with status 2,
    naming the flag."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=tuple(SETUPS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every variant (default 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on cpu, 128 on cuda")
    parser.add_argument(
        "--sizes", default=None, help="image sides, comma-separated (default 32,64 on cpu, 32 on cuda)"
    )
    parser.add_argument("--images", type=int, default=2000, help="images per throughput folder")
    parser.add_argument("--memory-images", type=int, default=8000, help="the large memory folder")
    parser.add_argument("--memory-few", type=int, default=500, help="the small memory folder")
    parser.add_argument("--memory-size", type=int, default=64, help="the memory folders' image side")
    parser.add_argument("--memory-repeats", type=int, default=3, help="runs on each memory folder")
    parser.add_argument("--step-rounds", type=int, default=8, help="rounds of the steps in turn (default 8)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled runs")
    parser.add_argument("--out", default=None, help="default benchmarks/results/training_<device>.json")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure-child", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child-data", choices=("loader", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup = SETUPS[args.device]
    args.batch_size = setup["batch_size"] if args.batch_size is None else args.batch_size
    sizes = setup["sizes"] if args.sizes is None else args.sizes
    for flag, value, least, why in (
        ("--steps", args.steps, 1, ""),
        ("--warmup", args.warmup, 1, ""),
        ("--rounds", args.rounds, 1, ""),
        ("--step-rounds", args.step_rounds, 1, ""),
        ("--batch-size", args.batch_size, 1, ""),
        ("--images", args.images, args.batch_size, " (one batch)"),
        ("--memory-few", args.memory_few, args.batch_size, " (one batch)"),
        ("--memory-images", args.memory_images, args.memory_few + 1, " (more than --memory-few)"),
        ("--memory-repeats", args.memory_repeats, 1, ""),
    ):
        if value < least:
            parser.error(f"{flag}={value} must be ≥ {least}{why}")
    try:
        args.sizes = [int(side) for side in sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes={sizes} must be image sides separated by commas, e.g. 32,64")
    for flag, side in [("--sizes", side) for side in args.sizes] + [("--memory-size", args.memory_size)]:
        if side < 8 or side % 8:
            parser.error(f"{flag}: {side} is not a multiple of 8 (the UNets halve the side up to 3 times)")
    if (args.memory_child is None) != (args.memory_child_data is None):
        parser.error("--memory-child and --memory-child-data go together")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is available")
    return args


def main() -> None:
    args = parse_args()
    if args.memory_child:
        memory_child(args)
        return
    if args.measure_child:
        measure_child(args)
        return
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    device, setup = torch.device(args.device), SETUPS[args.device]
    peak, peak_how = peak_flops(device)
    rows, ratios, flops, peaks, turns = [], [], {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            detail = max(1, round(size * setup["detail"]))
            folder = write_images(Path(tmp) / f"images-{size}", args.images, size, detail)
            model = UNetModel.from_preset(setup["preset"], in_channels=3, sample_size=size)
            flops[size] = forward_flops(model, size)
            more_rows, more_ratios = throughput(size, folder, flops[size], peak, args)
            rows += more_rows
            ratios += more_ratios
            turns.append(steps_in_turn(size, model, args))
        if not args.no_memory:
            detail = max(1, round(args.memory_size * setup["detail"]))
            many = write_images(Path(tmp) / "memory-many", args.memory_images, args.memory_size, detail)
            peaks = memory(many, args)

    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    meta = dict(
        preset=setup["preset"],
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        step_rounds=args.step_rounds,
        rounds=args.rounds,
        images=args.images,
        device=name,
        torch=torch.__version__,
        num_workers=default_num_workers(),
        peak_flops=peak,
        peak_how=peak_how,
        forward_flops_per_sample={str(size): f for size, f in flops.items()},
        load_average=[load_before, os.getloadavg()[0]],
        seconds=time.perf_counter() - began,
        memory=dict(
            images=args.memory_images, few=args.memory_few, size=args.memory_size, steps=MEMORY_STEPS
        ),
    )
    report(meta, rows, ratios, turns, peaks)
    out = args.out or f"benchmarks/results/training_{device.type}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(dict(meta=meta, rows=rows, ratios=ratios, steps_in_turn=turns, memory=peaks), f, indent=2)
    print(f"wrote {out}")


def report(meta: dict, rows: list[dict], ratios: list[dict], turns: list[dict], peaks: list[dict]) -> None:
    """The Markdown tables."""
    gflops = ", ".join(f"{s}×{s}: {f / 1e9:.3f}" for s, f in meta["forward_flops_per_sample"].items())
    print(
        f"\n{meta['preset']}, batch {meta['batch_size']}, {meta['rounds']} round(s) of "
        f"{meta['steps']} timed steps after {meta['warmup']}, {meta['images']} images per folder, "
        f"{meta['device']}, torch {meta['torch']}, {meta['num_workers']} loader worker(s)\n"
        f"forward GFLOP per sample (FlopCounterMode): {gflops}; a training step counted as 3× forward\n"
        f"peak {meta['peak_flops'] / 1e9:.1f} GFLOP/s: {meta['peak_how']}\n"
        f"1-minute load average {meta['load_average'][0]:.2f} at the start, "
        f"{meta['load_average'][1]:.2f} at the end; {meta['seconds'] / 60:.1f} minutes in all\n"
    )
    print("| size | precision | variant | examples/s (median) | MFU | each round | start-up s, first round |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        each = ", ".join(f"{speed:.1f}" for speed in r["rounds"])
        print(
            f"| {r['size']}×{r['size']} | {r['precision']} | {r['variant']} | "
            f"{r['examples_per_second']:.1f} | {100 * r['mfu']:.1f}% | {each} | {r['startup_seconds']:.0f} |"
        )
    print("\nRatios: the median over the rounds of each round's ratio.\n")
    print(
        "| size | precision | loader / in memory (target ≥ 0.90) | ours eager (loader) / diffusers "
        "| ours compiled (loader) / diffusers (target ≥ 1.2) | ours compiled / diffusers with the heap kept |"
    )
    print("|---|---|---|---|---|---|")
    for r in ratios:
        cells = ["–" if r[name] is None else f"{r[name]:.2f}" for name in RATIOS]
        print(f"| {r['size']}×{r['size']} | {r['precision']} | " + " | ".join(cells) + " |")
    print(
        "\nThe step alone, one step of each variant in turn in one process (median ms; speed: the "
        "median over the rounds of the recipe's step time over the variant's):\n"
    )
    print(
        "| size | rounds | variant | ms per step | speed / recipe's step "
        "| convolutions' share of our eager step |"
    )
    print("|---|---|---|---|---|---|")
    for turn in turns:
        share = "–" if turn["convolution_share"] is None else f"{100 * turn['convolution_share']:.0f}%"
        for r in turn["rows"]:
            print(
                f"| {turn['size']}×{turn['size']} | {turn['rounds']} | {r['variant']} | "
                f"{r['ms_per_step']:.0f} | {r['speed_over_recipe']:.2f} | {share} |"
            )
    if peaks:
        m = meta["memory"]
        print(
            f"\nPeak PSS of the training process tree, {m['steps']} steps of batch {meta['batch_size']} "
            f"on {m['size']}×{m['size']} PNGs, median of {len(peaks[0]['few_repeats'])} run(s) "
            f"(MB = 10^6 bytes; each run in brackets):\n"
        )
        print(
            f"| data | {m['few']} images | {m['images']} images | difference (bound for the loader: 150 MB) |"
        )
        print("|---|---|---|---|")
        for p in peaks:
            label = "loader (lazy)" if p["data"] == "loader" else "decoded in memory (the old way)"
            few, many = (
                ", ".join(f"{b / MB:.0f}" for b in p[key]) for key in ("few_repeats", "many_repeats")
            )
            print(
                f"| {label} | {p['few_bytes'] / MB:.0f} MB ({few}) | "
                f"{p['many_bytes'] / MB:.0f} MB ({many}) | {p['difference_bytes'] / MB:+.0f} MB |"
            )


if __name__ == "__main__":
    main()
