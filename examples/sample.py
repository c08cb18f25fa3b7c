"""Generate with a pipeline and a sampler of your choice (DDPM, DDIM, DPM-Solver++, UniPC),
and save a picture:

    python examples/sample.py digits --out digits.png                   # a shipped pipeline
    python examples/sample.py runs/roll/pipeline --sampler dpm-solver++ --steps 20 --out roll.png
    python examples/sample.py digits --out digits.png --push your-name/digits-ddpm

The first argument is a shipped pipeline's name (ddpm_pipelines.PRETRAINED), a folder that
save_pretrained wrote, or a Hub repo id.
"""

from __future__ import annotations

import argparse

import torch

from ddpm_pipelines import PRETRAINED, DDPMPipeline, load_pretrained
from ddpm_pipelines.images import image_grid, points_image
from ddpm_pipelines.pipeline import SAMPLERS, makes_points, with_sampler


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pipeline")
    parser.add_argument("--out", required=True, help="a .png file")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the pipeline's own")
    parser.add_argument("--steps", type=int, default=None, help="inference steps (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 images or 2000 points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push", default=None, help="also push the pipeline to this Hub repo id")
    args = parser.parse_args()

    pipe = (
        load_pretrained(args.pipeline)
        if args.pipeline in PRETRAINED
        else DDPMPipeline.from_pretrained(args.pipeline)
    )
    if args.sampler:  # the same model and β schedule, another reverse rule
        pipe = with_sampler(pipe, args.sampler)
    points = makes_points(pipe.unet)
    batch_size = args.batch_size or (2000 if points else 64)
    generator = torch.Generator().manual_seed(args.seed)
    out = pipe(batch_size=batch_size, num_inference_steps=args.steps, generator=generator, output_type="pt")
    (points_image(out.images) if points else image_grid(out.images)).save(args.out)
    print(f"wrote {args.out}")
    if args.push:
        print(f"pushed to {args.push}: revision {pipe.push_to_hub(args.push).oid}")


if __name__ == "__main__":
    main()
