"""What the benchmark scripts share (they import it from their own folder)."""

from __future__ import annotations

from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None (saying so) where it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib, or the [demo] extra)")
        return None
    return plt


def save_figure(fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
