"""Time whole sampling runs of our DDPMPipeline against diffusers on the same weights, in one run.

Both sides get the same model object (or an exact copy of its weights), the same number of
steps and a generator with the same seed; after timing, their outputs are compared (max
abs difference) to show that both did the same computation. The ratio is diffusers' time
over ours: > 1 means ours is faster. Rounds alternate between the variants (in an order
rotated each round); the median time is reported, and the median over rounds of the
ratio within each round (so that the machine's drifts in speed between rounds cancel).
Cases:

  --device cpu (default)
    unet: UNetModel.from_preset("small-32") (1.1M parameters), 16 images 32×32, 50 steps:
        our DDPMPipeline, eager and with the model compiled (torch.compile), vs diffusers'
        DDPMPipeline with the SAME unet (eager, its default), each with its own
        DDPMScheduler().
    mlp: MLPModel() (default size), 10,000 2-D points, 1000 steps: our pipeline, eager and
        with the model compiled (torch.compile), and a prototype that compiles the model
        and the step's arithmetic as one function (see `FusedSampler`), vs a plain loop
        driving the same MLP with diffusers' DDPMScheduler. Also timed alone, per step: the
        MLP's forward (eager and compiled), its six 10,000×128×128 matmuls and seven SiLUs
        (which any float32 forward must do: together, a floor under it), on the whole
        batch and on blocks of BLOCK_ROWS rows that stay in cache (the floor of a fused,
        cache-blocked forward), and each package's `step`, each with its share of the
        diffusers loop's step.
  --device cuda
    unet: the "ddpm-cifar10-32" preset (35.7M parameters), 256 images, 1000 steps: ours in
        float32 and in bfloat16 (`pipe.to("cuda", torch.bfloat16)`, on a copy of the
        weights), and with --compile also bf16 with the model compiled, vs diffusers'
        DDPMPipeline in float32 (its default). The bf16 outputs differ from float32 ones
        by the model's rounding; their difference is printed but not held to the
        float32 tolerance.

    python benchmarks/sampling.py [--device cuda] [--rounds 3] [--threads 2] [--no-compile]
                                  [--steps-unet 50] [--steps-mlp 1000] [--compile-mode default]

--steps-unet and --steps-mlp shorten the runs (e.g. `--steps-unet 2 --steps-mlp 5
--rounds 1 --no-compile` takes ~15 s). --steps-unet is the UNet case's steps on either
device (default 50 on CPU, 1000 on CUDA). A default CPU run takes about 9 minutes on 2
cores (each MLP run 25–45 s, each UNet run ~6 s; compiling the UNet takes 50–75 s, each
MLP compile 8–12 s); compile times are measured cold (inductor's caches are off in this
script) and reported apart from the steady-state times, which are taken after a warm-up
run of every variant.

It prints Markdown tables, writes the figures as JSON (--out, default
benchmarks/results/sampling_<device>.json) and, where matplotlib is installed (the [demo]
extra), a bar chart beside it (.png). It exits with status 1 if a float32 variant's output
differs from diffusers' by more than 1e-3 (1e-2 on CUDA, where convolutions run in TF32).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import diffusers
import torch
import torch.nn.functional as F
from common import pyplot, save_figure, sync

import schedulers
from ddpm_pipelines import DDPMPipeline
from ddpm_pipelines.models import MLPModel, UNetModel

SEED = 0
# The largest max abs difference (images in [0, 1], points in [−1, 1]) between a float32
# variant and diffusers that still counts as the same computation: float32 rounding of the
# two schedulers' arithmetic, carried through the chain; on CUDA, the convolutions run in
# TF32 (torch.backends.cudnn.allow_tf32, on by default), which rounds more.
CPU_TOLERANCE, CUDA_TOLERANCE = 1e-3, 1e-2
COMPONENT_STEPS = 50  # timesteps over which the per-step components are timed, each round
MATMULS, SILUS = "its 6 hidden matmuls alone", "its 7 SiLUs alone"
BLOCK_ROWS = 1000  # rows of a cache-sized block: 1000×128 float32 activations are 0.5 MB
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds, result) of one call, with the device synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(SEED)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """An exact copy of `model` (same weights) whose forward runs compiled; the original is
    left eager. `nn.Module.compile` keeps the module's class, so the pipeline's checks of
    `unet.config` see the same model."""
    model = copy.deepcopy(model)
    model.compile(mode=None if mode == "default" else mode)
    return model


# ---- runs: each is a callable steps -> output (images in [0, 1] or points) --------------------------


def pipeline_run(pipe, batch_size: int, device: torch.device) -> Callable[[int], torch.Tensor]:
    """A sampling run of a pipeline (ours or diffusers'), to tensors ("pt")."""

    def run(steps: int) -> torch.Tensor:
        out = pipe(
            batch_size=batch_size, num_inference_steps=steps, generator=_generator(device), output_type="pt"
        )
        return out.images

    return run


def diffusers_loop(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device):
    """The plain loop of the issue: the model and diffusers' DDPMScheduler, nothing else."""
    scheduler = diffusers.DDPMScheduler()

    @torch.no_grad()
    def run(steps: int) -> torch.Tensor:
        g = _generator(device)
        x = torch.randn(shape, generator=g, device=device)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            out = model(x, t).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
        return x

    return run


class FusedSampler:
    """Prototype of a `compile` option for DDPMPipeline: the model's forward and the DDPM
    step's arithmetic compiled as ONE function, `x_{t−1} = fused(x_t, t, coefficients,
    noise)`, so that inductor can fuse the step into the model's last kernels and no step
    op runs eagerly. What cannot be traced stays outside, eager: the coefficients (a
    (steps, 5) table computed once per run from the scheduler's ᾱ) and the noise draw,
    which uses the generator in the same order as our pipeline (x_T, then one draw per
    step but the last). For the default DDPMScheduler only (epsilon, fixed_small,
    clip_sample to [−1, 1]).
    """

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, mode: str):
        self.scheduler = schedulers.DDPMScheduler()
        self.model, self.shape, self.device = model, shape, device
        self.fused = torch.compile(self._step, mode=None if mode == "default" else mode)

    def _step(self, sample: torch.Tensor, timestep: torch.Tensor, c: torch.Tensor, noise: torch.Tensor):
        eps = self.model(sample, timestep).sample
        x0 = torch.addcmul(c[0] * sample, c[1], eps, value=-1).clamp(-1.0, 1.0)  # x_t/√ᾱ − √(1/ᾱ−1) ε
        mean = torch.addcmul(c[3] * sample, c[2], x0)  # μ̃_t = c0 x̂_0 + ct x_t
        return torch.addcmul(mean, c[4], noise)

    def coefficients(self, steps: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The chain's timesteps and, per step, [1/√ᾱ_t, √(1/ᾱ_t − 1), c0, ct, σ_t] in float32,
        from the scheduler's float64 ᾱ (docs/math.md §2, §4): σ_t = 0 at the last step."""
        self.scheduler.set_timesteps(steps)
        chain = self.scheduler.timesteps
        ab = self.scheduler.alphas_cumprod.to(torch.float64)
        ab_t = ab[chain]
        ab_prev = torch.cat([ab[chain[1:]], torch.ones(1, dtype=torch.float64)])
        beta = 1 - ab_t / ab_prev  # β'_t of the respaced chain
        variance = (1 - ab_prev) / (1 - ab_t) * beta
        std = variance.clamp(min=1e-20).sqrt()
        std[-1] = 0.0
        table = torch.stack(
            [
                ab_t.rsqrt(),
                (1 / ab_t - 1).sqrt(),
                ab_prev.sqrt() * beta / (1 - ab_t),
                (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t),
                std,
            ],
            dim=1,
        ).to(self.device, torch.float32)
        # One tensor per step (not views of one), so the compiled function sees the same
        # storage offsets every step and is not recompiled.
        return chain, [t.clone() for t in chain.to(self.device)], [row.clone() for row in table]

    @torch.no_grad()
    def __call__(self, steps: int) -> torch.Tensor:
        chain, timesteps, rows = self.coefficients(steps)
        g = _generator(self.device)
        x = torch.randn(self.shape, generator=g, device=self.device)
        no_noise = torch.zeros_like(x)
        for i in range(len(chain)):
            last = i == len(chain) - 1
            noise = no_noise if last else torch.randn(x.shape, generator=g, device=self.device)
            x = self.fused(x, timesteps[i], rows[i], noise)
        return x


# ---- per-step components (MLP case) --------------------------------------------------------------


def per_step_forward(model, x: torch.Tensor, timesteps: torch.Tensor) -> float:
    """Seconds per call of model(x, t) over `timesteps` (a fixed x), after one warm-up call."""
    with torch.no_grad():
        model(x, timesteps[0])
        start = time.perf_counter()
        for t in timesteps:
            model(x, t)
        return (time.perf_counter() - start) / len(timesteps)


def per_step_matmuls(model: MLPModel, x: torch.Tensor, n: int, rows: int | None = None) -> float:
    """Seconds for the MLP's hidden-layer matmuls alone (two per block, with bias) on a
    (B, hidden) input: with the SiLUs, the floor under any float32 forward of this model.
    With `rows`, they run on one block of that many rows, which stays in cache, and the
    time is scaled to B rows: the floor of a forward that works block by block."""
    blocks = x.shape[0] / rows if rows else 1
    h = torch.randn(rows or x.shape[0], model.config.hidden_features)
    layers = [layer for block in model.blocks for layer in (block.fc1, block.fc2)]
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(round(n * blocks)):
            for layer in layers:
                torch.addmm(layer.bias, h, layer.weight.t())
        return (time.perf_counter() - start) / n


def per_step_silus(model: MLPModel, x: torch.Tensor, n: int, rows: int | None = None) -> float:
    """Seconds for the MLP's SiLUs on (B, hidden) activations alone (two per block and one
    before proj_out): exp-bound on a CPU, the other floor under any float32 forward. `rows`
    as in `per_step_matmuls`."""
    blocks = x.shape[0] / rows if rows else 1
    h = torch.randn(rows or x.shape[0], model.config.hidden_features)
    count = 2 * len(model.blocks) + 1
    start = time.perf_counter()
    for _ in range(round(n * blocks)):
        for _ in range(count):
            F.silu(h)
    return (time.perf_counter() - start) / n


def per_step_scheduler(scheduler, x: torch.Tensor, n: int) -> float:
    """Seconds per `step` of a scheduler over the first n timesteps of a 1000-step chain,
    after a warm-up pass over them (tables cast, caches filled)."""
    scheduler.set_timesteps(1000)
    g = _generator(x.device)
    model_output = torch.randn(x.shape, generator=g)
    for t in scheduler.timesteps[:n]:
        scheduler.step(model_output, t, x, generator=g)
    start = time.perf_counter()
    for t in scheduler.timesteps[:n]:
        scheduler.step(model_output, t, x, generator=g)
    return (time.perf_counter() - start) / n


# ---- the cases -------------------------------------------------------------------------------------


def cpu_unet_case(steps: int, compile_mode: str | None) -> dict:
    unet = UNetModel.from_preset("small-32").eval()
    ours = _quiet(DDPMPipeline(unet, schedulers.DDPMScheduler()))
    theirs = _quiet(diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler()))
    cpu = torch.device("cpu")
    variants = {
        "diffusers DDPMPipeline": pipeline_run(theirs, 16, cpu),
        "ours, eager": pipeline_run(ours, 16, cpu),
    }
    compiled = ()
    if compile_mode:
        ours_compiled = _quiet(DDPMPipeline(_compiled(unet, compile_mode), schedulers.DDPMScheduler()))
        variants["ours, model compiled"] = pipeline_run(ours_compiled, 16, cpu)
        compiled = ("ours, model compiled",)
    return dict(
        name="unet small-32, 16×3×32×32",
        steps=steps,
        baseline="diffusers DDPMPipeline",
        variants=variants,
        compiled=compiled,
        loose=(),
        tolerance=CPU_TOLERANCE,
    )


def cpu_mlp_case(steps: int, compile_mode: str | None) -> dict:
    mlp = MLPModel().eval()
    cpu = torch.device("cpu")
    shape = (10_000, 2)
    ours = _quiet(DDPMPipeline(mlp, schedulers.DDPMScheduler()))
    variants = {
        "diffusers loop": diffusers_loop(mlp, shape, cpu),
        "ours, eager": pipeline_run(ours, shape[0], cpu),
    }
    compiled = ()
    if compile_mode:
        ours_compiled = _quiet(DDPMPipeline(_compiled(mlp, compile_mode), schedulers.DDPMScheduler()))
        variants["ours, model compiled"] = pipeline_run(ours_compiled, shape[0], cpu)
        variants["prototype: model+step compiled"] = FusedSampler(
            copy.deepcopy(mlp), shape, cpu, compile_mode
        )
        compiled = ("ours, model compiled", "prototype: model+step compiled")
    return dict(
        name="mlp, 10000×2 points",
        steps=steps,
        baseline="diffusers loop",
        variants=variants,
        compiled=compiled,
        loose=(),
        tolerance=CPU_TOLERANCE,
        mlp=mlp,
        mlp_compiled=ours_compiled.unet if compile_mode else None,
    )


def gpu_unet_case(
    steps: int,
    compile_mode: str | None,
    device: torch.device | None = None,
    preset: str = "ddpm-cifar10-32",
    batch_size: int = 256,
) -> dict:
    """Ours in float32 and bfloat16 vs diffusers' DDPMPipeline in float32 (its default).
    The device (default CUDA), preset and batch are arguments so that it can be tried small."""
    device = device or torch.device("cuda")
    unet = UNetModel.from_preset(preset).eval().to(device)  # eval: the CIFAR-10 preset has dropout
    theirs = _quiet(diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler()))
    ours = _quiet(DDPMPipeline(unet, schedulers.DDPMScheduler()))
    # .to(dtype) converts the model in place: bf16 gets its own copy, so the shared unet stays fp32.
    ours_bf16 = _quiet(DDPMPipeline(copy.deepcopy(unet), schedulers.DDPMScheduler()))
    ours_bf16.to(device.type, torch.bfloat16)
    variants = {
        "diffusers DDPMPipeline fp32": pipeline_run(theirs, batch_size, device),
        "ours, fp32": pipeline_run(ours, batch_size, device),
        "ours, bf16": pipeline_run(ours_bf16, batch_size, device),
    }
    compiled, loose = (), ("ours, bf16",)
    if compile_mode:
        bf16_compiled = _quiet(
            DDPMPipeline(_compiled(ours_bf16.unet, compile_mode), schedulers.DDPMScheduler())
        )
        variants["ours, bf16, model compiled"] = pipeline_run(bf16_compiled, batch_size, device)
        compiled, loose = ("ours, bf16, model compiled",), (*loose, "ours, bf16, model compiled")
    size = unet.config.sample_size
    return dict(
        name=f"unet {preset}, {batch_size}×{unet.config.in_channels}×{size}×{size}",
        steps=steps,
        baseline="diffusers DDPMPipeline fp32",
        variants=variants,
        compiled=compiled,
        loose=loose,
        tolerance=CUDA_TOLERANCE,
    )


def run_case(case: dict, rounds: int, device: torch.device) -> tuple[list[dict], list[dict], list[dict]]:
    """Warm up (and compile) every variant, then time `rounds` alternating rounds of full
    runs; returns (rows, compile rows, component rows)."""
    names, steps = list(case["variants"]), case["steps"]
    warmup_steps = min(2, steps)
    compile_rows = []
    for name, run in case["variants"].items():
        seconds, _ = timed(lambda run=run: run(warmup_steps), device)
        if name in case["compiled"]:
            compile_rows.append(dict(case=case["name"], variant=name, first_call_s=seconds))
            _log(f"  compiled {name!r}: first {warmup_steps}-step call {seconds:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in names}
    components: dict[str, list[float]] = {}
    outputs: dict[str, torch.Tensor] = {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, out = timed(lambda name=name: case["variants"][name](steps), device)
            times[name].append(seconds)
            outputs[name] = out.float().cpu()
            _log(f"  round {r + 1}/{rounds}: {name}: {seconds:.2f} s")
        if "mlp" in case:
            for key, value in mlp_components(case, min(steps, COMPONENT_STEPS)).items():
                components.setdefault(key, []).append(value)

    baseline, tolerance = times[case["baseline"]], case["tolerance"]
    rows = []
    for name in names:
        t = statistics.median(times[name])
        diff = float((outputs[name] - outputs[case["baseline"]]).abs().max())
        loose = name in case["loose"]
        rows.append(
            dict(
                case=case["name"],
                variant=name,
                steps=steps,
                seconds=t,
                ms_per_step=t / steps * 1e3,
                # Each round's diffusers time over this variant's in the same round: drifts
                # of the machine's speed between rounds cancel.
                ratio=statistics.median(b / v for b, v in zip(baseline, times[name], strict=True)),
                max_abs_diff=diff,
                tolerance=None if loose else tolerance,
                agrees=loose or diff <= tolerance,
                round_seconds=times[name],
            )
        )
    loop_ms = statistics.median(baseline) / steps * 1e3
    component_rows = [
        dict(
            case=case["name"],
            component=key,
            ms_per_step=statistics.median(v) * 1e3,
            share_of_diffusers_loop=statistics.median(v) * 1e3 / loop_ms,
        )
        for key, v in components.items()
    ]
    return rows, compile_rows, component_rows


def mlp_components(case: dict, n: int) -> dict[str, float]:
    """Per-step seconds of the MLP case's parts, each over n timesteps."""
    mlp, compiled = case["mlp"], case["mlp_compiled"]
    g = _generator(torch.device("cpu"))
    x = torch.randn(10_000, 2, generator=g)
    timesteps = torch.arange(999, -1, -1)[:n]
    parts = {"MLP forward, eager": per_step_forward(mlp, x, timesteps)}
    if compiled is not None:
        parts["MLP forward, compiled"] = per_step_forward(compiled, x, timesteps)
    parts[MATMULS] = per_step_matmuls(mlp, x, n)
    parts[SILUS] = per_step_silus(mlp, x, n)
    parts[f"{MATMULS}, in blocks of {BLOCK_ROWS} rows"] = per_step_matmuls(mlp, x, n, BLOCK_ROWS)
    parts[f"{SILUS}, in blocks of {BLOCK_ROWS} rows"] = per_step_silus(mlp, x, n, BLOCK_ROWS)
    parts["diffusers DDPMScheduler.step"] = per_step_scheduler(diffusers.DDPMScheduler(), x, n)
    parts["our DDPMScheduler.step"] = per_step_scheduler(schedulers.DDPMScheduler(), x, n)
    return parts


def mlp_ceiling(rows: list[dict], component_rows: list[dict]) -> dict | None:
    """The MLP case's floors (its matmuls and SiLUs, which every float32 forward must do),
    on the whole batch and in cache-sized blocks, and the largest diffusers/ours ratio each
    leaves: the loop's time over the floor."""
    parts = {r["component"]: r["ms_per_step"] for r in component_rows}
    if MATMULS not in parts or SILUS not in parts:
        return None
    loop_ms = next(r["ms_per_step"] for r in rows if r["variant"] == "diffusers loop")
    floor = parts[MATMULS] + parts[SILUS]
    suffix = f", in blocks of {BLOCK_ROWS} rows"
    blocked = parts[MATMULS + suffix] + parts[SILUS + suffix]
    return dict(
        floor_ms=floor,
        max_ratio=loop_ms / floor,
        blocked_floor_ms=blocked,
        blocked_max_ratio=loop_ms / blocked,
    )


def cpu_busy(seconds: float = 1.0) -> float | None:
    """The fraction of CPU time other processes used over `seconds` (from /proc/stat, so
    Linux only; None elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _dynamo_counts(functions: int) -> dict[str, int]:
    """Graphs and graph breaks torch.compile made for `functions` compiled functions: one
    graph each and no breaks means each ran whole and was never recompiled."""
    from torch._dynamo.utils import counters

    return dict(
        compiled_functions=functions,
        graphs=int(counters["stats"]["unique_graphs"]),
        graph_breaks=int(sum(counters["graph_break"].values())),
        graph_break_reasons=sorted(counters["graph_break"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu or cuda (default: cpu)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default: 3)")
    parser.add_argument(
        "--steps-unet",
        type=int,
        default=None,
        help="steps of the UNet case (default: 50 on cpu, 1000 on cuda)",
    )
    parser.add_argument("--steps-mlp", type=int, default=1000, help="steps of the MLP case (default: 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the torch.compile variants (default: on)",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode (default: default)",
    )
    parser.add_argument(
        "--out", default=None, help="JSON results file (default: benchmarks/results/sampling_<device>.json)"
    )
    args = parser.parse_args()
    steps_unet = args.steps_unet if args.steps_unet is not None else (1000 if args.device == "cuda" else 50)
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds} must be ≥ 1")
    for flag, value in (("--steps-unet", steps_unet), ("--steps-mlp", args.steps_mlp)):
        if not 1 <= value <= 1000:
            parser.error(f"{flag}={value} must be in [1, 1000] (the schedulers' num_train_timesteps)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads} must be ≥ 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or f"benchmarks/results/sampling_{device.type}.json"
    compile_mode = args.compile_mode if args.compile else None
    if compile_mode:
        import torch._inductor.config as inductor_config

        inductor_config.force_disable_caches = True  # cold compile times, every run
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")

    threads = torch.get_num_threads()
    busy = cpu_busy()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {device}, {threads} threads")
    if device.type == "cpu" and busy is not None and busy > 0.1:
        print(
            f"note: the CPUs were {busy:.0%} busy before the run: other processes share them, times are noisy"
        )

    torch.manual_seed(SEED)  # the models' random initial weights
    if device.type == "cuda":
        cases = [gpu_unet_case(steps_unet, compile_mode)]
    else:
        cases = [cpu_unet_case(steps_unet, compile_mode), cpu_mlp_case(args.steps_mlp, compile_mode)]
    rows, compile_rows, component_rows = [], [], []
    for case in cases:
        _log(f"{case['name']}, {case['steps']} steps:")
        r, c, k = run_case(case, args.rounds, device)
        rows += r
        compile_rows += c
        component_rows += k

    print()
    print("| case | variant | steps | s/run | ms/step | diffusers/ours | max abs diff vs diffusers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        check = " (bf16: no tolerance)" if r["tolerance"] is None else "" if r["agrees"] else " ✗ DIFFERENT"
        print(
            f"| {r['case']} | {r['variant']} | {r['steps']} | {r['seconds']:.2f} | {r['ms_per_step']:.2f} "
            f"| {r['ratio']:.2f}× | {r['max_abs_diff']:.1e}{check} |"
        )
    if component_rows:
        print()
        print("| case | component alone | ms/step | share of the diffusers loop's step |")
        print("|---|---|---|---|")
        for r in component_rows:
            print(
                f"| {r['case']} | {r['component']} | {r['ms_per_step']:.2f} "
                f"| {100 * r['share_of_diffusers_loop']:.0f}% |"
            )
    ceiling = mlp_ceiling(rows, component_rows)
    if ceiling:
        print(
            f"floor under a float32 forward of the MLP, its matmuls + SiLUs: {ceiling['floor_ms']:.2f} "
            f"ms/step on the whole batch, so a forward made of whole-batch kernels (eager or "
            f"compiled) beats the diffusers loop by at most ≈{ceiling['max_ratio']:.2f}× here; "
            f"{ceiling['blocked_floor_ms']:.2f} ms/step in blocks of {BLOCK_ROWS} rows, so a fused "
            f"forward that keeps each block in cache could reach ≈{ceiling['blocked_max_ratio']:.2f}× "
            f"(as noisy as the times above)"
        )
    dynamo = _dynamo_counts(len(compile_rows)) if compile_mode else None
    if compile_rows:
        print()
        print("| case | compiled variant | first 2-step call (compile, cold) s |")
        print("|---|---|---|")
        for r in compile_rows:
            print(f"| {r['case']} | {r['variant']} | {r['first_call_s']:.1f} |")
        print(
            f"torch.compile: {dynamo['graphs']} graphs for {dynamo['compiled_functions']} compiled "
            f"functions (more would be recompiles), {dynamo['graph_breaks']} graph breaks"
        )

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        meta = dict(
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            device=str(device),
            gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
            threads=threads,
            machine=platform.processor() or platform.machine(),
            cpu_busy_before=busy,
            rounds=args.rounds,
            compile_mode=compile_mode,
            dynamo=dynamo,
        )
        results = dict(meta=meta, rows=rows, compile=compile_rows, components=component_rows, ceiling=ceiling)
        json.dump(results, f, indent=2)
    print(f"wrote {out}")
    plot(rows, os.path.splitext(out)[0] + ".png", f"{device}, {threads} threads")
    if not all(r["agrees"] for r in rows):
        print("error: a float32 variant's output differs from diffusers' by more than its tolerance")
        sys.exit(1)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Bar chart of ms per step of every variant, one panel per case, diffusers first."""
    plt = pyplot()
    if plt is None:
        return
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        case_rows = [r for r in rows if r["case"] == case]
        labels = [r["variant"].replace(", ", ",\n").replace(": ", ":\n") for r in case_rows]
        colors = ["tab:gray" if r["variant"].startswith("diffusers") else "tab:blue" for r in case_rows]
        bars = ax.bar(range(len(case_rows)), [r["ms_per_step"] for r in case_rows], color=colors)
        for bar, r in zip(bars, case_rows, strict=True):
            x, y = bar.get_x() + bar.get_width() / 2, bar.get_height()
            ax.annotate(f"{r['ratio']:.2f}×", (x, y), xytext=(0, 2), textcoords="offset points", ha="center")
        ax.margins(y=0.1)
        ax.set_xticks(range(len(case_rows)), labels, fontsize=7)
        ax.set_ylabel("ms per step")
        ax.set_title(f"{case}, {case_rows[0]['steps']} steps", fontsize=9)
    fig.suptitle(f"sampling, diffusers/ours above the bars ({title})", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
