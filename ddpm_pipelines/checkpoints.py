"""Training checkpoints: the complete state of a run (weights, EMA, optimizer, the timestep
sampler's history, the config, the run's time and loss so far) in safetensors and JSON only,
never pickle. Each is written to a temporary folder (.step-N.XXXX) and renamed into place,
and deleted by being renamed away (.step-N.deleting) first, so a crash mid-write or
mid-delete leaves the other checkpoints intact and no half checkpoint under a step-N name;
`remove_unfinished` clears what such a crash left."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from . import hub

if TYPE_CHECKING:
    from .training import TrainingConfig

CHECKPOINT_PREFIX = "step-"
# A checkpoint's files; state.json is written last. A checkpoint is complete when all are there.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors", "state.json")


class TrainingError(RuntimeError):
    """A run stopped: a non-finite loss, a dataset too small, a checkpoint that can't be read."""


class CheckpointReadError(TrainingError):
    """A file of a checkpoint cannot be read (truncated, corrupt): an older checkpoint may serve."""


@dataclass
class Checkpoint:
    """A checkpoint as read from disk, before it is loaded into a run's parts."""

    path: Path
    state: dict[str, Any]  # state.json: step, stream_position, processes, seconds, loss, config, ...
    tensors: dict[str, dict[str, torch.Tensor]]  # each .safetensors file's tensors, by file name


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in `output_dir/checkpoints` (every file there), oldest first."""
    return [path for path in _step_dirs(output_dir) if _complete(path)]


def _step_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The step-N folders in `output_dir/checkpoints`, complete or not, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in CHECKPOINT_FILES)


def remove_unfinished(output_dir: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted run left in `output_dir` and return it: checkpoints being
    written (.step-N.XXXX) or deleted (.step-N.deleting), step-N folders missing a file, and
    the temporary folders and files of `hub`'s atomic writes (.pipeline.saving-XXXX of
    `hub.save_atomically`, .NAME.XXXX.tmp of `hub.write_file_atomically`)."""
    output, root = Path(output_dir), Path(output_dir) / "checkpoints"
    found = list(root.glob(f".{CHECKPOINT_PREFIX}*"))
    found += [p for p in _step_dirs(output) if not _complete(p)]
    found += list(output.glob(".pipeline.saving-*"))
    for folder in (output, output / "samples", output / "pipeline"):
        found += [p for p in folder.glob(".*.tmp") if p.is_file()]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


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
    folder: Path,
    step: int,
    position: int,
    model,
    optimizer,
    ema,
    sampler,
    config: TrainingConfig,
    *,
    processes: int = 1,
    seconds: float = 0.0,
    loss: float = math.nan,
) -> Path:
    """Write checkpoints/step-N atomically (a temporary folder renamed into place), then
    delete all but the newest `keep_checkpoints` complete ones. `position`: the examples of
    the run's stream read so far, where a resumed run reads on from; `processes`: how many
    share the batch; `seconds`: the run's training time so far, over all its resumed parts;
    `loss`: step N's (`train` passes all three). A failed write (a full disk) raises a
    TrainingError naming the folder."""
    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        hub.set_default_mode(staging)  # mkdtemp makes it 0700
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
            processes=processes,
            seconds=seconds,
            loss=loss,
            optimizer=optimizer_meta,
            ema_optimization_step=ema.optimization_step if ema is not None else None,
            config=dataclasses.asdict(config),
        )
        _write_text(staging / "state.json", json.dumps(state, indent=2))  # last: complete now
        _fsync_dir(staging)
        if final.exists():  # the same step written again (a resumed run): replace it
            _remove(final)
        os.replace(staging, final)
        _fsync_dir(root)
    except (OSError, SafetensorError) as error:
        raise TrainingError(
            f"cannot save the checkpoint {final}: {_why(error)}; the previous checkpoints are intact"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed into place
    for old in checkpoint_dirs(folder)[: -config.keep_checkpoints or None] if config.keep_checkpoints else []:
        _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: renamed to .step-N.deleting first, so that a crash
    mid-way leaves a leftover `remove_unfinished` knows, not a half checkpoint."""
    trash = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _why(error: OSError | SafetensorError) -> str:
    """A failed write's reason: "no space left on device" for ENOSPC (an OSError from
    Python's writes; safetensors' own error, not an OSError, says "os error 28"), else the
    error's message."""
    if getattr(error, "errno", None) == errno.ENOSPC or f"(os error {errno.ENOSPC})" in str(error):
        return "no space left on device"
    return str(error)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint's files; a CheckpointReadError names the one that cannot be read."""
    state, tensors = {}, {}
    for name in CHECKPOINT_FILES:
        file = path / name
        try:
            if name == "state.json":
                state = json.loads(file.read_text(encoding="utf-8"))
            else:
                tensors[name] = safetensors.torch.load_file(file)
        except (OSError, ValueError, SafetensorError) as error:  # ValueError: JSON's
            raise CheckpointReadError(f"cannot read the checkpoint file {file}: {error}") from error
    return Checkpoint(path, state, tensors)


def load_checkpoint(checkpoint: Checkpoint, model, optimizer, ema, sampler) -> None:
    """Restore a checkpoint (`read_checkpoint`) into the run's parts."""
    path, state, tensors = checkpoint.path, checkpoint.state, checkpoint.tensors
    try:
        model.load_state_dict(tensors["model.safetensors"])
    except RuntimeError as error:
        raise TrainingError(f"the checkpoint {path} does not fit this run's model: {error}") from error
    optimizer.load_state_dict(_optimizer_state(tensors["optimizer.safetensors"], state["optimizer"]))
    extra = tensors["state.safetensors"]
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


def _save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    safetensors.torch.save_file(tensors, path)
    hub.set_default_mode(path)  # safetensors writes 0600
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
