"""Many samples, written as they are drawn (docs/math.md §4 for the chain itself):
`sample_to_shards(pipe, out_dir, num_samples)`, or `ddpm-pipelines sample --num-samples`.

Sample i is drawn from a generator of (seed, i) (`data.seeded_generator`), so the set does not
depend on the batch size nor on how many processes share the work (under `accelerate launch`
or `torchrun`, process r draws the shards r, r + W, …). The samples go to `.npz` shards of
`shard_size` samples, each written atomically: images as uint8 (N, H, W, C) under `arr_0`,
the layout improved-diffusion's sampling script writes and the ADM evaluation suite reads;
points as float32 (N, D). `manifest.json` says what the shards hold (the pipeline's weights
by fingerprint, the seed, the steps); a run started again with the same arguments draws only
the shards that are missing, so a killed run loses nothing and writes nothing twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import hub
from .data import seeded_generator
from .images import to_uint8
from .pipeline import DDPMPipeline, _check_count, makes_points

MANIFEST = "manifest.json"
SHARD_FORMAT = "shard-{:06d}.npz"


def sample_to_shards(
    pipe: DDPMPipeline,
    out_dir: str | os.PathLike,
    num_samples: int,
    *,
    batch_size: int = 64,
    shard_size: int = 1000,
    seed: int = 0,
    num_inference_steps: int | None = None,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
) -> Path:
    """Draw samples 0 … num_samples − 1 of `pipe` into `out_dir` (see the module's docstring)
    and return `out_dir`. `rank` and `world` default to the launcher's RANK and WORLD_SIZE
    (one process without them); every process calls this with the same arguments."""
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("shard_size", shard_size)):
        _check_count(name, value)
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank!r} must be in [0, world={world!r})")
    out = Path(out_dir)
    manifest = _manifest(pipe, num_samples, shard_size, seed, num_inference_steps)
    _check_or_write_manifest(out / MANIFEST, manifest)
    shards = range(rank, math.ceil(num_samples / shard_size), world)
    missing = [k for k in shards if not (out / SHARD_FORMAT.format(k)).exists()]
    for k in missing:  # what a killed run left half-written (`hub.write_file_atomically`'s names)
        for torn in out.glob(f".{SHARD_FORMAT.format(k)}.*.tmp"):
            torn.unlink()
    todo = sum(len(_indices(k, shard_size, num_samples)) for k in missing)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=todo, desc=f"sampling (process {rank} of {world})", unit="sample", dynamic_ncols=True
        )
    pipe.set_progress_bar_config(disable=True)
    try:
        for k in missing:
            indices = _indices(k, shard_size, num_samples)
            parts = []
            for first in range(0, len(indices), batch_size):
                batch = indices[first : first + batch_size]
                parts.append(_draw(pipe, batch, seed, num_inference_steps))
                if bar is not None:
                    bar.update(len(batch))
            hub.write_file_atomically(out / SHARD_FORMAT.format(k), functools.partial(_save_npz, parts=parts))
    finally:
        if bar is not None:
            bar.close()
    return out


def read_shards(out_dir: str | os.PathLike) -> np.ndarray:
    """All the samples of a finished `sample_to_shards` folder, in order of their index."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    count = math.ceil(manifest["num_samples"] / manifest["shard_size"])
    paths = [out / SHARD_FORMAT.format(k) for k in range(count)]
    absent = [p.name for p in paths if not p.exists()]
    if absent:
        raise FileNotFoundError(
            f"{out} lacks {len(absent)} of its {count} shards (first: {absent[0]}); run the same "
            f"sampling command again to draw them"
        )
    arrays = []
    for path in paths:
        with np.load(path, allow_pickle=False) as shard:
            arrays.append(shard["arr_0"])
    return np.concatenate(arrays)


def _indices(k: int, shard_size: int, num_samples: int) -> range:
    return range(k * shard_size, min((k + 1) * shard_size, num_samples))


def _draw(pipe: DDPMPipeline, indices: range, seed: int, num_inference_steps: int | None) -> np.ndarray:
    """Samples `indices`, each from its own generator of (seed, index): images as uint8
    (B, H, W, C), points as float32 (B, D)."""
    device = pipe.device
    generators = [seeded_generator(seed, "sample", i, device=device) for i in indices]
    out = pipe(
        batch_size=len(indices),
        num_inference_steps=num_inference_steps,
        generator=generators,
        output_type="pt",
    ).images
    if makes_points(pipe.unet):
        return out.float().cpu().numpy()
    return to_uint8(out).permute(0, 2, 3, 1).numpy()


def _save_npz(path: Path, parts: list[np.ndarray]) -> None:
    """The batches of a shard as one array, `arr_0`, in an .npz file at `path`."""
    with open(path, "wb") as file:  # a file, so that numpy does not add ".npz" to the name
        np.savez(file, arr_0=np.concatenate(parts))


def _manifest(
    pipe: DDPMPipeline, num_samples: int, shard_size: int, seed: int, num_inference_steps: int | None
) -> dict[str, Any]:
    return dict(
        num_samples=num_samples,
        shard_size=shard_size,
        seed=seed,
        num_inference_steps=num_inference_steps,
        scheduler=type(pipe.scheduler).__name__,
        scheduler_config={k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")},
        weights=fingerprint(pipe.unet),
    )


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes), in hex."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_or_write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest or, where an earlier run left one, insist that it describes this
    run: shards of two runs must not mix. Every process writes the same bytes atomically, so
    whichever lands last changes nothing."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    if path.exists():
        earlier, now = json.loads(path.read_text(encoding="utf-8")), json.loads(text)
        differ = [key for key in sorted(now.keys() | earlier.keys()) if now.get(key) != earlier.get(key)]
        if differ:
            what = "; ".join(f"{key}: {earlier.get(key)!r} there, {now.get(key)!r} now" for key in differ)
            raise ValueError(
                f"{path.parent} holds the samples of another run ({what}): sample again with the "
                f"same arguments and pipeline to continue it, or choose another folder"
            )
        return
    hub.write_text_atomically(path, text)
