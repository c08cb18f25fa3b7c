"""Time one `step` of our DDPMScheduler against diffusers' DDPMScheduler, in the same run.

The loop is the sampling loop without the model: `set_timesteps(1000)`, then `step` at
every timestep with a fixed model output, for 10,000 2-D points (where the step's own
overhead is all there is) and a 16×3×32×32 batch of images. Rounds alternate between
the two packages; the median round is reported, and the ratio diffusers/ours (> 1 means
ours is faster). Both draw the step's noise with the same torch.randn call (the same
generator must give the same samples in both), a floor neither can go below: it is timed
alone in the same rounds, and the ratio of the times above it is reported too.

    python benchmarks/scheduler_step.py [--device cuda] [--rounds 7] [--threads 1]

It prints a Markdown table, writes the figures as JSON (--out) and, where matplotlib is
installed (the [demo] extra), a bar chart beside it (.png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import diffusers
import torch
from common import pyplot, save_figure, sync

import schedulers

CASES = {"points 10000×2": (10_000, 2), "images 16×3×32×32": (16, 3, 32, 32)}
CONFIGS = {
    "epsilon, fixed_small, clip": dict(
        prediction_type="epsilon", variance_type="fixed_small", clip_sample=True
    ),
    "epsilon, fixed_large, no clip": dict(
        prediction_type="epsilon", variance_type="fixed_large", clip_sample=False
    ),
}


def time_loop(scheduler, shape, device: torch.device, steps: int) -> float:
    """Seconds per step over `set_timesteps(steps)` timesteps."""
    scheduler.set_timesteps(steps, device=device if isinstance(scheduler, schedulers.DDPMScheduler) else None)
    g = torch.Generator(device=device).manual_seed(0)
    sample = torch.randn(shape, generator=g, device=device)
    model_output = torch.randn(shape, generator=g, device=device)
    for t in scheduler.timesteps[:20]:  # warm-up: tables cast to the device, caches filled
        scheduler.step(model_output, t, sample, generator=g)
    sync(device)
    start = time.perf_counter()
    for t in scheduler.timesteps:  # the same inputs each step: no drift into huge or denormal values
        scheduler.step(model_output, t, sample, generator=g)
    sync(device)
    return (time.perf_counter() - start) / len(scheduler.timesteps)


def time_noise(shape, device: torch.device, steps: int) -> float:
    """Seconds per torch.randn draw of the step's noise: the floor under both steps."""
    g = torch.Generator(device=device).manual_seed(0)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        torch.randn(shape, generator=g, device=device)
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per case (default: 7)")
    parser.add_argument("--steps", type=int, default=1000, help="timesteps per round (default: 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/scheduler_step.json", help="JSON results file")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error(f"--rounds={args.rounds} and --steps={args.steps} must be ≥ 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {device}, {threads} threads")
    print("| case | config | ours µs/step | diffusers µs/step | diffusers/ours | noise µs | above noise |")
    print("|---|---|---|---|---|---|---|")
    for case, shape in CASES.items():
        for name, config in CONFIGS.items():
            ours, theirs = schedulers.DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
            t_ours, t_theirs, t_noise = [], [], []
            for _ in range(args.rounds):
                t_ours.append(time_loop(ours, shape, device, args.steps))
                t_theirs.append(time_loop(theirs, shape, device, args.steps))
                t_noise.append(time_noise(shape, device, args.steps))
            a, b, z = (statistics.median(t) * 1e6 for t in (t_ours, t_theirs, t_noise))
            above = (b - z) / (a - z)
            rows.append(
                dict(
                    case=case,
                    config=name,
                    ours_us=a,
                    diffusers_us=b,
                    noise_us=z,
                    ratio=b / a,
                    ratio_above_noise=above,
                )
            )
            print(f"| {case} | {name} | {a:.1f} | {b:.1f} | {b / a:.2f}× | {z:.1f} | {above:.2f}× |")

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        meta = dict(
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            device=str(device),
            threads=threads,
            machine=platform.processor() or platform.machine(),
        )
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    print(f"wrote {args.out}")
    plot(rows, os.path.splitext(args.out)[0] + ".png", f"{device}, {threads} threads")


def plot(rows: list[dict], path: str, title: str) -> None:
    """Bar chart of µs per step, ours beside diffusers, with the noise floor marked."""
    plt = pyplot()
    if plt is None:
        return
    labels = [f"{r['case']}\n{r['config']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(2.6 * len(rows), 4))
    ax.bar([i - 0.2 for i in x], [r["ours_us"] for r in rows], width=0.4, label="ddpm-pipelines")
    ax.bar([i + 0.2 for i in x], [r["diffusers_us"] for r in rows], width=0.4, label="diffusers")
    ax.scatter(list(x), [r["noise_us"] for r in rows], color="k", marker="_", s=900, label="noise draw alone")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("µs per step")
    ax.set_title(f"DDPMScheduler.step ({title})")
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
