"""Training data: points of shape (N, 2) or images of shape (N, C, H, W) scaled to [−1, 1],
the range the models and docs/math.md §5.2's discretized decoder expect.

`load_dataset(name, split)` reads one whole, as a float32 tensor:
- "swiss-roll": scikit-learn's 2-D Swiss roll, (N, 2);
- "digits": scikit-learn's 8×8 handwritten digits, (N, 1, 8, 8), with a fixed held-out split;
- a path to a local folder of images, (N, C, H, W);
- "hf:NAME": a Hugging Face `datasets` dataset (a Hub name, or a local folder read with
  the "imagefolder" builder), (N, C, H, W).
`image_dataset` opens a folder or "hf:NAME" without decoding it (an `ImageDataset`, decoded
item by item), `StreamingImages` streams an "hf:NAME" dataset, and `example_batches` reads
a run's stream of examples from any of them, each process its own slices. scikit-learn and
datasets are optional (`pip install "ddpm-pipelines[train]"`) and are imported only when a
dataset needs them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

DATASET_NAMES = ("swiss-roll", "digits")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

SWISS_ROLL_SIZE = 10_000  # default number of points
DIGITS_TEST_FRACTION = 0.2
# The digits split is fixed: it uses this seed, never the caller's, and numpy's legacy
# RandomState, whose stream numpy keeps unchanged across versions, so "test" stays held out.
DIGITS_SPLIT_SEED = 20_240_601
_GREY_MODES = ("1", "L", "LA")  # PIL modes loaded as one channel; every other mode as "RGB"


def is_points(data: torch.Tensor) -> bool:
    """True for points, shape (N, D); False for images, shape (N, C, H, W)."""
    return data.ndim == 2


def load_dataset(
    name: str | os.PathLike[str],
    split: str = "train",
    *,
    num_samples: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The dataset `name`'s `split` ("train" or "test") as one float32 tensor: points (N, 2)
    or images (N, C, H, W) in [−1, 1].

    name: "swiss-roll", "digits", a path to a local folder of images, or "hf:NAME" (a
        Hugging Face dataset: a Hub name such as "hf:cifar10", or "hf:" and a local
        folder, read with datasets' "imagefolder" builder). The two built-in names win
        over a folder of the same name. A path (with a separator) that does not exist is a
        FileNotFoundError; any other unknown name a ValueError.
    num_samples: how many points to draw ("swiss-roll", default 10 000), or how many of the
        split's images to keep, the first ones (default all; more than the split holds is
        an error).
    image_size: for a folder or "hf:", resize every image to image_size × image_size
        (bicubic; the aspect ratio is not kept). Without it every image must already have
        one and the same square size.
    seed: the Swiss roll's draw, an integer in [0, 2**31): scikit-learn's random_state is
        2·seed for "train" and 2·seed + 1 for "test", so the two splits never share a random
        stream. The other datasets ignore it.

    Images are "RGB" (C = 3), or "L" (C = 1) when every image is greyscale (PIL mode "1",
    "L" or "LA"; a palette image, such as a GIF, counts as colour), scaled from 0..255 as
    x / 127.5 − 1. Images of more than 8 bits per channel are refused, not clipped.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; allowed values: {SPLITS}")
    for option, value in (("num_samples", num_samples), ("image_size", image_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{option}={value!r} must be a positive integer or None")
    name = os.fspath(name)  # a pathlib.Path to a folder is welcome

    if name in DATASET_NAMES and image_size is not None:
        raise ValueError(
            f"image_size={image_size!r} applies to a folder of images or 'hf:NAME'; "
            f"{name!r} has a fixed shape, so leave image_size unset"
        )
    if name == "swiss-roll":
        data = _swiss_roll(split, num_samples or SWISS_ROLL_SIZE, seed)
    elif name == "digits":
        data = _digits(split)
        data = data[: _count(len(data), num_samples, f"'digits' split {split!r}")]
    else:
        images = image_dataset(name, split, num_samples=num_samples, image_size=image_size)
        data = to_unit_range(torch.stack([images[i] for i in range(len(images))]))
    logger.info("loaded %r split %r: %s", name, split, tuple(data.shape))
    return data


# ---- built-in datasets (scikit-learn) --------------------------------------------------------


def _swiss_roll(split: str, num_samples: int, seed: int) -> torch.Tensor:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        # scikit-learn takes a random_state in [0, 2**32), and test's is 2·seed + 1
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**31) for 'swiss-roll'")
    sklearn_datasets = _optional_import("sklearn.datasets", "scikit-learn")
    random_state = 2 * seed + (split == "test")  # train: 2·seed, test: 2·seed + 1
    points, _ = sklearn_datasets.make_swiss_roll(num_samples, noise=0.5, random_state=random_state)
    # (N, 3) → the (x, z) plane, (N, 2): t·(cos t, sin t) with t ≤ 4.5π, plus noise, /10 → |x| ≲ 1.6
    return torch.from_numpy(points[:, [0, 2]] / 10).float()


def _digits(split: str) -> torch.Tensor:
    sklearn_datasets = _optional_import("sklearn.datasets", "scikit-learn")
    images = sklearn_datasets.load_digits().images  # (1797, 8, 8), grey levels 0..16
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(images))
    num_test = int(DIGITS_TEST_FRACTION * len(images))  # 359; train keeps 1438
    rows = order[:num_test] if split == "test" else order[num_test:]
    return torch.from_numpy(images[rows] / 8 - 1).float().unsqueeze(1)  # (N, 1, 8, 8) in [−1, 1]


# ---- images: a local folder, or a Hugging Face dataset, read on demand --------------------------


class ImageReadError(ValueError):
    """An image that cannot be decoded or used; the message names it."""


class ImageDataset(torch.utils.data.Dataset):
    """Images decoded on demand (in a DataLoader's worker processes, for training): item i is
    a uint8 tensor (C, S, S), `to_unit_range` scales a batch to [−1, 1] on its device.

    The first image fixes the format, so nothing reads the whole dataset up front: C = 1 when
    it is greyscale (PIL mode "1", "L" or "LA"; a palette image counts as colour), else 3,
    and S = `image_size`, or the first image's side when it is None (it must be square, and
    so must every other image, of that side). Each image is converted to that mode and, when
    its size differs from S × S, resized (bicubic): to S × S, or with `center_crop` its shorter
    side to S and the centre S × S cropped (the aspect ratio kept), as diffusers'
    train_unconditional.py. A colour image in a greyscale dataset, a size that does not fit,
    more than 8 bits per channel or a file that cannot be decoded: `ImageReadError`, naming it.
    """

    def __init__(self, source: _FileImages | _HubImages, image_size: int | None, center_crop: bool = False):
        self.source, self.center_crop, self.resize = source, center_crop, image_size is not None
        first = _decode(source, 0)
        self.mode = "L" if first.mode in _GREY_MODES else "RGB"
        if image_size is None:
            width, height = first.size
            if width != height:
                raise ImageReadError(
                    f"{source.label(0)} is {width}×{height}, not square: pass image_size=... "
                    "to resize the images to image_size × image_size"
                )
            image_size = width
        self.image_size = image_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, S, S), as a tensor of the whole dataset would have."""
        return (len(self), 1 if self.mode == "L" else 3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pixels(self.source, index)

    def pixels(self, source: _FileImages | _HubImages | _OneImage, index: int) -> torch.Tensor:
        """Image `index` of `source`, decoded and converted to this dataset's format."""
        image = _decode(source, index)
        if image.mode.startswith(("I", "F")):  # 16/32-bit: converting to 8 bits would clip
            raise ImageReadError(
                f"{source.label(index)} has the PIL mode {image.mode!r}; only 8-bit images are supported"
            )
        if self.mode == "L" and image.mode not in _GREY_MODES:
            raise ImageReadError(
                f"{source.label(index)} is a colour image (mode {image.mode!r}) in a dataset read as "
                f"greyscale because its first image, {self.source.label(0)}, is: convert them to one mode"
            )
        size = self.image_size
        if not self.resize and image.size != (size, size):
            width, height = image.size
            raise ImageReadError(
                f"the images must share one square size: {source.label(index)} is {width}×{height}, "
                f"{self.source.label(0)} is {size}×{size}; pass image_size=... to resize them all"
            )
        image = image.convert(self.mode)
        if self.center_crop:
            image = center_crop(image, size)
        elif image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)  # clamps to 0..255
        array = torch.from_numpy(np.array(image)).reshape(size, size, -1)  # (S, S, C)
        return array.permute(2, 0, 1).contiguous()  # (C, S, S) uint8


def _decode(source: _FileImages | _HubImages | _OneImage, index: int) -> Image.Image:
    """Image `index` of `source`, decoded; one that cannot be: ImageReadError naming it."""
    try:
        image = source.open(index)
        image.load()  # decode now, so a truncated file fails here, naming itself
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read the image {source.label(index)}: {err}") from err
    return image


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and crop the centre size × size, as
    torchvision's Resize(size) then CenterCrop(size)."""
    width, height = image.size
    short = min(width, height)
    width, height = max(size, int(size * width / short)), max(size, int(size * height / short))
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 → float32 in [−1, 1] (x / 127.5 − 1)."""
    return pixels.float() / 127.5 - 1


class _FileImages:
    """The image files of a folder, recursively, in sorted order."""

    def __init__(self, folder: Path, num_samples: int | None):
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            looked_for = ", ".join(IMAGE_EXTENSIONS)
            raise ValueError(f"no images in {str(folder)!r} (looked for {looked_for}, recursively)")
        self.paths = paths[: _count(len(paths), num_samples, f"the folder {str(folder)!r}")]

    def __len__(self) -> int:
        return len(self.paths)

    def open(self, index: int) -> Image.Image:
        return Image.open(self.paths[index])

    def label(self, index: int) -> str:
        return repr(str(self.paths[index]))


class _HubImages:
    """The image column of a map-style Hugging Face dataset, kept as encoded bytes (or
    paths) in its Arrow files: the rows are decoded on demand, never copied decoded."""

    def __init__(self, name: str, split: str, num_samples: int | None):
        datasets = _optional_import("datasets", "datasets")
        self.where = f"Hugging Face dataset {name!r} split {split!r}"
        dataset = _load_hub_dataset(datasets, name, split, self.where, streaming=False)
        self.column = _image_column(datasets, dataset, self.where)
        if len(dataset) == 0:
            raise ValueError(f"the {self.where} is empty")
        keep = _count(len(dataset), num_samples, f"the {self.where}")
        dataset = dataset.select_columns([self.column]).select(range(keep))
        self.dataset = dataset.cast_column(self.column, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.dataset)

    def open(self, index: int) -> Image.Image:
        return _open_encoded(self.dataset[index][self.column])

    def label(self, index: int) -> str:
        path = self.dataset[index][self.column].get("path")
        return f"{self.where}, row {index}" + (f" ({path})" if path else "")


class _OneImage:
    """One encoded image of a stream, as a source of one item."""

    def __init__(self, value: dict[str, Any], label: str):
        self.value, self._label = value, label

    def __len__(self) -> int:
        return 1

    def open(self, index: int) -> Image.Image:
        return _open_encoded(self.value)

    def label(self, index: int) -> str:
        return self._label


class StreamingImages:
    """A Hugging Face dataset read as a stream (`datasets.load_dataset(..., streaming=True)`),
    for data larger than the disk cache: nothing is downloaded or decoded ahead of the run.

    Epoch e of the stream is the dataset shuffled (its files, then through a buffer of
    `buffer_size` examples: datasets' `shuffle`) with a seed of (seed, e), so the order is a
    function of (seed, epoch) for a given list of data files. The format is fixed by the stream's first
    example, as `ImageDataset`'s by its first image. `shape[0]` is the split's size when the
    dataset's metadata says it, else None."""

    def __init__(
        self, name: str, split: str, image_size: int | None, center_crop: bool, seed: int, buffer_size: int
    ):
        datasets = _optional_import("datasets", "datasets")
        self.where = f"Hugging Face dataset {name!r} split {split!r} (streamed)"
        stream = _load_hub_dataset(datasets, name, split, self.where, streaming=True)
        self.column = _image_column(datasets, stream, self.where)
        stream = stream.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        try:
            first = next(iter(stream.iter(batch_size=1)))[self.column][0]
        except StopIteration:
            raise ValueError(f"the {self.where} is empty") from None
        self.format = ImageDataset(_OneImage(first, self._label(0, first)), image_size, center_crop)
        self.stream, self.seed, self.buffer_size = stream, seed, buffer_size
        splits = stream.info.splits or {}
        self.shape = (splits[split].num_examples if split in splits else None, *self.format.shape[1:])

    def examples(self, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, encoded image) from stream position `start` on, epoch after epoch,
        without decoding. Epochs wholly before `start` are skipped unread once the length of
        an epoch is known (they all hold the same examples): resuming re-reads at most one."""
        position, epoch = 0, 0
        while True:
            # A stream shuffled anew for each epoch, not datasets' set_epoch: its epoch is
            # shared by the DataLoader's workers, which would race to set it.
            shuffled = self.stream.shuffle(
                seed=_hash(self.seed, "epoch", epoch) % 2**32, buffer_size=self.buffer_size
            )
            length = 0
            # .iter() rather than iter(): the whole stream in every DataLoader worker, not a
            # share of its files, so that the order does not depend on the workers
            for batch in shuffled.iter(batch_size=1):
                if position >= start:
                    yield position, batch[self.column][0]
                position, length = position + 1, length + 1
            if length == 0:
                raise ValueError(f"the {self.where} is empty")
            skipped = max(0, start - position) // length
            epoch, position = epoch + 1 + skipped, position + skipped * length

    def pixels(self, position: int, value: dict[str, Any]) -> torch.Tensor:
        return self.format.pixels(_OneImage(value, self._label(position, value)), 0)

    def _label(self, position: int, value: dict[str, Any]) -> str:
        path = value.get("path")
        return f"{self.where}, example {position} of the stream" + (f" ({path})" if path else "")


class _StreamSlices(torch.utils.data.IterableDataset):
    """The slices of a stream that `example_batches` asks for, each (pixels (B, C, S, S),
    errors) as `_Reported` gives them. DataLoader worker w of n reads the whole stream and
    decodes slices w, w + n, …: the DataLoader takes one from each worker in turn, so the
    order is the stream's whatever the number of workers (which each read all of it)."""

    def __init__(self, images: StreamingImages, firsts: range, size: int):
        self.images, self.firsts, self.size = images, firsts, size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.firsts[worker::workers]
        if not mine:
            return
        examples = self.images.examples(mine[0])
        for first in mine:
            pixels, errors = [], []
            for position, value in examples:
                if position < first:
                    continue
                try:
                    pixels.append(self.images.pixels(position, value))
                    errors.append("")
                except ImageReadError as err:
                    pixels.append(torch.zeros(self.images.shape[1:], dtype=torch.uint8))
                    errors.append(str(err))
                if position == first + self.size - 1:
                    break
            yield torch.stack(pixels), errors


def _open_encoded(value: dict[str, Any]) -> Image.Image:
    """A `datasets.Image(decode=False)` value, {"bytes": ..., "path": ...}, opened."""
    return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])


def _load_hub_dataset(datasets, name: str, split: str, where: str, streaming: bool):
    try:
        if Path(name).is_dir():
            return datasets.load_dataset("imagefolder", data_dir=name, split=split, streaming=streaming)
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except ValueError as err:
        raise ValueError(f"cannot load the {where}: {err}") from err
    except OSError as err:  # not found, not cached, no network
        raise OSError(f"cannot load the {where}: {err}") from err


def _image_column(datasets, dataset, where: str) -> str:
    column = next((c for c, f in (dataset.features or {}).items() if isinstance(f, datasets.Image)), None)
    if column is None:
        raise ValueError(f"the {where} has no image column; its features: {dataset.features}")
    return column


def image_dataset(
    name: str | os.PathLike[str],
    split: str = "train",
    *,
    num_samples: int | None = None,
    image_size: int | None = None,
    center_crop: bool = False,
) -> ImageDataset:
    """A folder of images, or "hf:NAME", as an `ImageDataset`: only the first image is read
    now. The arguments are `load_dataset`'s."""
    name = os.fspath(name)
    if name.startswith("hf:"):
        return ImageDataset(_HubImages(name.removeprefix("hf:"), split, num_samples), image_size, center_crop)
    if Path(name).is_file():
        raise ValueError(f"dataset {name!r} is a file; pass the folder of images that holds it")
    if not Path(name).is_dir():
        if os.sep in name or (os.altsep and os.altsep in name):  # a path, not a name
            raise FileNotFoundError(
                f"dataset folder {name!r} not found; the built-in datasets are 'swiss-roll' and "
                "'digits', and a Hugging Face dataset is 'hf:NAME'"
            )
        raise ValueError(
            f"unknown dataset {name!r}; allowed: 'swiss-roll', 'digits', a folder of images, "
            "or 'hf:NAME' (a Hugging Face dataset)"
        )
    if split != "train":
        raise ValueError(
            f"a folder of images has only the split 'train', not {split!r}; "
            "pass a separate folder for held-out data"
        )
    return ImageDataset(_FileImages(Path(name), num_samples), image_size, center_crop)


# ---- helpers ---------------------------------------------------------------------------------


def _count(available: int, num_samples: int | None, where: str) -> int:
    """How many of the `available` items to keep, the first ones: `num_samples`, or all if None."""
    if num_samples is None:
        return available
    if num_samples > available:
        raise ValueError(f"num_samples={num_samples!r} is more than the {available} in {where}")
    return num_samples


def _optional_import(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this dataset needs {package}, which is not installed; "
            'install the training extras with: pip install "ddpm-pipelines[train]"'
        ) from err


# ---- the run's example stream ----------------------------------------------------------------


def data_indices(num_examples: int, seed: int, start: int, count: int) -> torch.Tensor:
    """Positions start … start+count−1 of the run's example stream: the concatenation of
    one random permutation of the dataset per epoch, epoch e's seeded by (seed, e)."""
    out, position = [], start
    while len(out) < count:
        epoch, offset = divmod(position, num_examples)
        take = _permutation(num_examples, seed, epoch)[offset : offset + count - len(out)].tolist()
        out += take
        position += len(take)
    return torch.tensor(out)


@functools.lru_cache(maxsize=2)  # the epoch being read, and the next
def _permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_examples, generator=seeded_generator(seed, "epoch", epoch))


def flips(seed: int, positions: torch.Tensor) -> torch.Tensor:
    """Whether the examples at these stream positions are flipped left-right: a fair coin
    of (seed, position), whoever reads the example."""
    return torch.tensor([_hash(seed, "flip", p) & 1 == 1 for p in positions.tolist()], dtype=torch.bool)


def example_batches(
    data: torch.Tensor | ImageDataset | StreamingImages,
    *,
    seed: int,
    start: int,
    count: int,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    random_flip: bool = False,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """This process's slices of `count` global batches of the run's example stream, from
    stream position `start`: global batch k holds positions start + k·W·B … + (k+1)·W·B − 1
    (W = world, B = batch_size), process `rank` the B of them from start + k·W·B + rank·B.
    Each slice comes as x_0 (B, ...) on `device`, images in [−1, 1] and, with `random_flip`,
    flipped left-right where `flips` says.

    A tensor is indexed where it lies; an ImageDataset is read by a DataLoader with
    `num_workers` worker processes (0: this one) that decode only this process's slices,
    prefetched, pinned and copied without blocking when `device` is CUDA; a StreamingImages
    is the stream itself, read by each worker (`_StreamSlices`). An image that cannot be read
    raises ImageReadError here, in the training process, naming it."""
    device = torch.device(device)
    firsts = range(start + rank * batch_size, start + count * world * batch_size, world * batch_size)
    loading = dict(num_workers=num_workers, pin_memory=device.type == "cuda")
    loading["prefetch_factor"] = 4 if num_workers else None
    if isinstance(data, torch.Tensor):
        slices = _Slices(len(data), seed, firsts, batch_size)
        batches = (data[torch.tensor(indices, device=data.device)] for indices in slices)
    else:
        if isinstance(data, StreamingImages):
            loader = torch.utils.data.DataLoader(_StreamSlices(data, firsts, batch_size), None, **loading)
        else:
            slices = _Slices(len(data), seed, firsts, batch_size)
            loader = torch.utils.data.DataLoader(_Reported(data), batch_sampler=slices, **loading)
        batches = (_checked(pixels, errors).to(device, non_blocking=True) for pixels, errors in loader)
    for first, x0 in zip(firsts, batches, strict=True):
        x0 = to_unit_range(x0) if x0.dtype == torch.uint8 else x0
        if random_flip:
            flipped = flips(seed, torch.arange(first, first + batch_size)).to(device)
            x0 = torch.where(flipped.view(-1, *[1] * (x0.dim() - 1)), x0.flip(-1), x0)
        yield x0


class _Slices:
    """The dataset indices of the examples at stream positions first … first + size − 1,
    for each `first`, made as they are asked for (a DataLoader's batch_sampler)."""

    def __init__(self, num_examples: int, seed: int, firsts: range, size: int):
        self.num_examples, self.seed, self.firsts, self.size = num_examples, seed, firsts, size

    def __len__(self) -> int:
        return len(self.firsts)

    def __iter__(self) -> Iterator[list[int]]:
        for first in self.firsts:
            yield data_indices(self.num_examples, self.seed, first, self.size).tolist()


def default_num_workers() -> int:
    """DataLoader workers for each training process: half its share of the CPUs, 1 to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cpus // (2 * processes_here)))


class _Reported(torch.utils.data.Dataset):
    """An ImageDataset whose items are (pixels, "") or, for an image that cannot be read,
    (zeros, the error's message): the training process raises it, with a clean message."""

    def __init__(self, images: ImageDataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self.images[index], ""
        except ImageReadError as err:
            return torch.zeros(self.images.shape[1:], dtype=torch.uint8), str(err)


def _checked(pixels: torch.Tensor, errors: list[str]) -> torch.Tensor:
    for error in errors:
        if error:
            raise ImageReadError(error)
    return pixels


def seeded_generator(seed: int, *parts: Any, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by (seed, parts), independent of every other such tuple."""
    return torch.Generator(device=device).manual_seed(_hash(seed, *parts))


def _hash(seed: int, *parts: Any) -> int:
    """64 bits of sha256 of (seed, parts)."""
    text = json.dumps([seed, *[str(p) for p in parts]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
