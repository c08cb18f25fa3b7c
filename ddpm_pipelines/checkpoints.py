"""Training checkpoints: the complete state of a run (weights, EMA, optimizer, the timestep
sampler's history, the config) in safetensors and JSON only, never pickle. Each is written
to a temporary folder and renamed into place, so a crash mid-write leaves the previous
checkpoints intact."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from . import hub

if TYPE_CHECKING:
    from .training import TrainingConfig

CHECKPOINT_PREFIX = "step-"


class TrainingError(RuntimeError):
    """A run stopped: a non-finite loss, a dataset too small, a checkpoint that can't be read."""


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict split into safetensors tensors and JSON (no pickle)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path, step: int, position: int, model, optimizer, ema, sampler, config: TrainingConfig
) -> Path:
    """Write checkpoints/step-N atomically (a temporary folder renamed into place), then
    delete all but the newest `keep_checkpoints`. `position`: the examples of the run's
    stream read so far, where a resumed run reads on from."""
    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            staging / "model.safetensors",
        )
        tensors, optimizer_meta = _optimizer_tensors(optimizer)
        _save_file(tensors, staging / "optimizer.safetensors")
        extra: dict[str, torch.Tensor] = {}
        if ema is not None:
            extra |= {f"ema.{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}
        if sampler is not None:
            extra |= {f"sampler.{k}": v for k, v in sampler.state_dict().items()}
        _save_file(extra, staging / "state.safetensors")
        state = dict(
            step=step,
            stream_position=position,
            optimizer=optimizer_meta,
            ema_optimization_step=ema.optimization_step if ema is not None else None,
            config=dataclasses.asdict(config),
        )
        _write_text(staging / "state.json", json.dumps(state, indent=2))
        _fsync_dir(staging)
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in checkpoint_dirs(folder)[: -config.keep_checkpoints or None] if config.keep_checkpoints else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, ema, sampler) -> tuple[int, int]:
    """Restore a checkpoint into the run's parts; returns its step and stream position."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        weights = safetensors.torch.load_file(path / "model.safetensors")
        optimizer_tensors = safetensors.torch.load_file(path / "optimizer.safetensors")
        extra = safetensors.torch.load_file(path / "state.safetensors")
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise TrainingError(f"cannot read the checkpoint {path}: {error}") from error
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise TrainingError(f"the checkpoint {path} does not fit this run's model: {error}") from error
    optimizer.load_state_dict(_optimizer_state(optimizer_tensors, state["optimizer"]))
    if ema is not None:
        shadow = [extra[f"ema.{i}"] for i in range(len(ema.shadow_params))]
        ema.shadow_params = [s.to(p.device) for s, p in zip(shadow, ema.shadow_params, strict=True)]
        ema.optimization_step = state["ema_optimization_step"]
    if sampler is not None:
        try:
            sampler.load_state_dict(
                {k[len("sampler.") :]: v for k, v in extra.items() if k.startswith("sampler.")}
            )
        except ValueError as error:
            raise TrainingError(str(error)) from error
    return int(state["step"]), int(state["stream_position"])


def _save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    safetensors.torch.save_file(tensors, path)
    hub.fsync_file(path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    hub.fsync_file(path)


def _fsync_dir(path: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
