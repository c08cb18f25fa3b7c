"""What the benchmark scripts share (they import it from their own folder)."""

from __future__ import annotations

import os
import subprocess
import time
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


def tree_pss_bytes(pid: int) -> int:
    """The proportional set size of a process and all its descendants (DataLoader workers
    included), from Linux's /proc/PID/smaps_rollup: shared pages count once in the sum."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass  # it ended while we looked
    return total


def peak_pss_bytes(command: list[str], interval: float = 0.02, **popen: Any) -> tuple[int, int]:
    """Run `command`; return (its exit status, the peak of `tree_pss_bytes` over its run,
    sampled every `interval` seconds)."""
    process = subprocess.Popen(command, **popen)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss_bytes(process.pid))
        time.sleep(interval)
    return process.returncode, peak
