"""Training throughput: our `train` loop against diffusers' unconditional training recipe
(examples/unconditional_image_generation/train_unconditional.py: a shuffled DataLoader,
noise and t drawn per batch, `add_noise`, the UNet, an MSE loss, `accelerator.backward`,
gradient clipping, AdamW, a warm-up schedule and diffusers' EMAModel, the loss read back
every step for its logs) on the same model, data, batch size and precision, in one run.

  --device cpu (default): the "tiny-8" UNet on scikit-learn's 8×8 digits, batch 128.
  --device cuda: the "ddpm-cifar10-32" preset (35.7M parameters), batch 128, on random
      32×32 RGB data (CIFAR-10 itself needs a download), fp32 and --mixed-precision bf16.

Both loops use L_simple with uniform t (the recipe's objective), so the work per step is
the same; ours adds what it always does (its per-step seeded generators, the NaN check,
metrics). Steps are timed after `--warmup` steps; the figure is examples per second.

    python benchmarks/training.py [--device cuda] [--steps 50] [--warmup 5] [--batch-size 128]

It prints a Markdown table and writes benchmarks/results/training_<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import sync

from ddpm_pipelines.data import load_dataset
from ddpm_pipelines.models import UNetModel
from ddpm_pipelines.training import TrainingConfig, train


def diffusers_recipe(model, data, batch_size, steps, warmup, device, mixed_precision) -> float:
    """Examples per second of train_unconditional.py's inner loop over `steps` steps."""
    import diffusers
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

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
    return steps * batch_size / (time.perf_counter() - start)


def ours(dataset, preset, batch_size, steps, warmup, mixed_precision) -> float:
    """Examples per second of `train`, from its own metrics after the warm-up steps."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainingConfig(
            output_dir=out,
            dataset=dataset,
            model=preset,
            batch_size=batch_size,
            max_steps=steps + warmup,
            log_every=warmup,
            checkpoint_every=0,
            learning_rate=1e-4,
            lr_schedule="cosine",
            warmup_steps=10,
            ema_decay=0.9999,
            mixed_precision=mixed_precision,
            progress=False,
            tensorboard=False,
        )
        train(config)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    # Logged at steps warmup, 2·warmup, …, steps + warmup: the first to the last spans `steps`.
    return steps * batch_size / (records[-1]["time"] - records[0]["time"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    for flag, value in (
        ("--steps", args.steps),
        ("--warmup", args.warmup),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            parser.error(f"{flag}={value} must be ≥ 1")
    if args.steps % args.warmup:
        parser.error(
            f"--steps={args.steps} must be a multiple of --warmup={args.warmup} (the metrics window)"
        )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is available")
    if device.type == "cpu":
        dataset, preset, precisions = "digits", "tiny-8", ["no"]
        data = load_dataset("digits")
    else:
        preset, precisions = "ddpm-cifar10-32", ["no", "bf16"]
        folder = tempfile.mkdtemp()
        data = torch.rand(2048, 3, 32, 32) * 2 - 1
        _write_images(data, folder)
        dataset = folder
    torch.manual_seed(0)
    model = UNetModel.from_preset(preset, in_channels=data.shape[1], sample_size=data.shape[-1])
    rows = []
    for precision in precisions:
        theirs = diffusers_recipe(
            copy.deepcopy(model), data, args.batch_size, args.steps, args.warmup, device, precision
        )
        mine = ours(dataset, preset, args.batch_size, args.steps, args.warmup, precision)
        rows.append(dict(precision=precision, diffusers=theirs, ours=mine, ratio=mine / theirs))
        print(f"  {precision}: diffusers {theirs:.0f}, ours {mine:.0f} examples/s", file=sys.stderr)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\n{preset}, batch {args.batch_size}, {args.steps} timed steps, {name}, torch {torch.__version__}\n"
    )
    print("| precision | diffusers recipe examples/s | ours examples/s | ours/diffusers |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['diffusers']:.0f} | {r['ours']:.0f} | {r['ratio']:.2f}× |")
    out = args.out or f"benchmarks/results/training_{device.type}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(dict(preset=preset, batch_size=args.batch_size, device=name, rows=rows), f, indent=2)
    print(f"wrote {out}")


def _write_images(data: torch.Tensor, folder: str) -> None:
    """Random RGB data as PNG files (8-bit, so the folder loader reads back the same grid)."""
    import PIL.Image

    pixels = ((data + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(pixels):
        PIL.Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
    data.copy_(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1)


if __name__ == "__main__":
    main()
