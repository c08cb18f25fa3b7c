"""Analytic-DPM (Bao et al. 2022; docs/math.md §8) on the shipped pipelines, on a CPU:

    python examples/analytic_dpm.py --output-dir runs/analytic

For "swiss-roll" and "digits": estimates Γ_t from training data once (`estimate_gamma`),
then, for K-step chains (the pipeline's own spacing), the bound on the held-out data in
bits/dim with fixed_small, fixed_large and analytic variances (for images also analytic with
Bao et al.'s clip of the noise before the last step, `analytic_clip_pixels`, which changes
the samples and not the bound; and the model's own learned variance where it has one), and
the sample quality at the smaller K: the energy distance of generated samples to the
held-out data (points, or the digits' 64 pixels) over the real-vs-real floor, the mean over
--quality-seeds draws. Writes results.json, table.md and analytic_dpm.png to --output-dir.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddpm_pipelines import evaluation, load_pretrained
from ddpm_pipelines.analytic import estimate_gamma
from ddpm_pipelines.data import load_dataset
from ddpm_pipelines.losses import ModelFn
from ddpm_pipelines.pipeline import makes_points
from schedulers import DDPMScheduler
from schedulers.base import LEARNED_VARIANCES, DiffusionScheduler

PIPELINES = ("swiss-roll", "digits")
VARIANCES = ("fixed_small", "fixed_large", "analytic")


def _mean_only(model_fn: ModelFn, channels: int) -> ModelFn:
    """The model's prediction without a learned variance's channels (dim 1), for fixed variances."""
    return lambda x_t, t: model_fn(x_t, t)[:, :channels]


@torch.no_grad()
def _sample(model_fn: ModelFn, scheduler: DiffusionScheduler, shape, k: int, generator) -> torch.Tensor:
    """DDPMPipeline's loop: x_T ~ N(0, I), then model and scheduler.step along the K-step chain."""
    scheduler.set_timesteps(k)
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(model_fn(x, t.expand(shape[0])), t, x, generator=generator).prev_sample
    return x


def measure(name: str, args: argparse.Namespace) -> dict:
    pipe = load_pretrained(name)
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    model_fn = evaluation.as_model_fn(pipe.unet)
    gamma = estimate_gamma(
        pipe, train[: args.gamma_examples], generator=torch.Generator().manual_seed(0), progress=True
    )
    own = pipe.scheduler.config.variance_type
    variants = {variance: {"variance_type": variance} for variance in VARIANCES}
    if not makes_points(pipe.unet):  # Bao et al.'s clip of the noise before the last step, for images
        clipped = {"variance_type": "analytic", "analytic_clip_pixels": args.clip_pixels}
        variants[f"analytic, clip {args.clip_pixels:g} px"] = clipped
    if own in LEARNED_VARIANCES:
        variants[own] = {"variance_type": own}
    held_out = test[: args.nll_examples].double()
    real = test.flatten(1).double()
    n = min(args.num_samples, len(train))
    floor = evaluation.energy_distance(train[:n].flatten(1), real)
    result = {
        "gamma": gamma.tolist(),
        "energy_distance_floor": floor,
        "num_samples": n,
        "quality_seeds": args.quality_seeds,
        "variances": {},
    }
    for variant, options in variants.items():
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config, analytic_gamma=gamma.tolist(), **options)
        variance = options["variance_type"]
        fn = model_fn if variance in (own, "analytic") else _mean_only(model_fn, test.shape[1])
        rows = {}
        for k in args.steps:
            scheduler.set_timesteps(k)
            bound = evaluation.nll(
                fn, scheduler, held_out, timesteps=scheduler.timesteps.tolist(),
                batch_size=1000, generator=torch.Generator().manual_seed(1),
            )  # fmt: skip
            rows[k] = {"bits_per_dim": bound.bits_per_dim, "std_error": bound.bits_per_dim_std_error}
            if k in args.quality_steps:
                ratios = []
                for seed in range(args.quality_seeds):
                    fake = _sample(
                        fn, scheduler, (n, *test.shape[1:]), k, torch.Generator().manual_seed(seed)
                    )
                    fake = fake if makes_points(pipe.unet) else fake.clamp(-1, 1)  # as the pipeline's images
                    ratios.append(evaluation.energy_distance(fake.flatten(1).double(), real) / floor)
                rows[k].update(energy_distance_ratios=ratios, energy_distance_ratio=sum(ratios) / len(ratios))
            print(f"{name} {variant} K={k}: {rows[k]}", flush=True)
        result["variances"][variant] = rows
    return result


def table(results: dict, steps: list[int], quality_steps: list[int]) -> str:
    lines = []
    for name, result in results.items():
        lines += [
            f"**{name}**: bound in bits/dim on held-out data (lower is better); sample quality as the energy "
            f"distance to held-out data over the real-vs-real floor ({result['num_samples']} samples, the "
            f"mean of {result['quality_seeds']} seeds; 1× is as good as real data)",
            "",
            "| variance | " + " | ".join(f"K = {k}" for k in steps) + " | "
            + " | ".join(f"quality, K = {k}" for k in quality_steps) + " |",
            "|---" * (1 + len(steps) + len(quality_steps)) + "|",
        ]  # fmt: skip
        for variance, rows in result["variances"].items():
            bounds = [f"{rows[k]['bits_per_dim']:.3f}" for k in steps]
            quality = [f"{rows[k]['energy_distance_ratio']:.2f}×" for k in quality_steps]
            lines.append(f"| {variance} | " + " | ".join(bounds + quality) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, steps: list[int], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(results), 3.4), dpi=120)
    FigureCanvasAgg(fig)
    for i, (name, result) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        bounds = {
            variance: [rows[k]["bits_per_dim"] for k in steps]
            for variance, rows in result["variances"].items()
        }
        for variance, values in bounds.items():
            if "clip" not in variance:  # the clip changes the samples only: its bound is analytic's
                ax.plot(steps, values, marker="o", label=variance)
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(k) for k in steps])
        if min(min(values) for values in bounds.values()) > 0:  # a continuous decoder's bound can be < 0
            ax.set_yscale("log")
        ax.set_xlabel("steps K")
        ax.set_ylabel("bound (bits/dim)")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100], help="chain lengths K")
    parser.add_argument("--quality-steps", type=int, nargs="+", default=[10, 25], help="K with samples")
    parser.add_argument(
        "--gamma-examples", type=int, default=1000, help="training examples for Γ (default 1000)"
    )
    parser.add_argument("--nll-examples", type=int, default=2000, help="held-out examples for the bound")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples for the energy distance")
    parser.add_argument("--quality-seeds", type=int, default=3, help="sampling seeds for the quality (mean)")
    parser.add_argument(
        "--clip-pixels", type=float, default=2.0, help="analytic_clip_pixels of the clipped variant (images)"
    )
    args = parser.parse_args()
    if not set(args.quality_steps) <= set(args.steps):
        parser.error(f"--quality-steps {args.quality_steps} must be among --steps {args.steps}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: measure(name, args) for name in args.pipelines}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    text = table(results, args.steps, args.quality_steps)
    (out / "table.md").write_text(text, encoding="utf-8")
    plot(results, args.steps, out / "analytic_dpm.png")
    print(text)


if __name__ == "__main__":
    main()
