"""Pictures of samples: a grid of images, a scatter of 2-D points (PIL only, no plotting
library), for training's sample grids and the demo."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as 8-bit pixels on the CPU (× 255, rounded, as diffusers' numpy_to_pil)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def image_grid(images: torch.Tensor, columns: int | None = None, min_size: int = 32) -> PIL.Image.Image:
    """Images (B, C, H, W) in [0, 1] (C = 1 or 3) side by side in a grid of `columns`
    (default ⌈√B⌉) with a 1-pixel gap, each scaled up by an integer factor (nearest
    neighbour) to at least `min_size` pixels so that 8×8 digits can be seen."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W), not {tuple(images.shape)}")
    B, C, H, W = images.shape
    columns = columns or math.ceil(math.sqrt(B))
    rows = math.ceil(B / columns)
    factor = max(1, math.ceil(min_size / max(H, W)))
    pixels = to_uint8(images)
    pixels = pixels.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # (B, C, fH, fW)
    h, w = H * factor, W * factor
    grid = torch.full((C, rows * (h + 1) - 1, columns * (w + 1) - 1), 255, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, columns)
        grid[:, r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = pixels[i]
    array = grid.permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(array[..., 0] if C == 1 else array, mode="L" if C == 1 else "RGB")


def points_image(
    points: torch.Tensor | np.ndarray, size: int = 256, limits: tuple[float, float] = (-2.0, 2.0)
) -> PIL.Image.Image:
    """2-D points (N, 2) as dark dots on white, x to the right and y up, over the square
    `limits` × `limits`; points outside are left out."""
    points = torch.as_tensor(points).detach().float().cpu()
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), not {tuple(points.shape)}")
    low, high = limits
    xy = ((points - low) / (high - low) * (size - 1)).round().long()  # (N, 2) pixel coordinates
    inside = ((xy >= 0) & (xy < size)).all(dim=1)
    x, y = xy[inside, 0], size - 1 - xy[inside, 1]
    canvas = np.full((size, size), 255, dtype=np.uint8)
    canvas[y.numpy(), x.numpy()] = 40
    return PIL.Image.fromarray(canvas, mode="L")
