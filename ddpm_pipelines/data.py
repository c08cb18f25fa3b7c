"""Training data as in-memory float32 tensors: points of shape (N, 2) or images of shape
(N, C, H, W) scaled to [−1, 1], the range the models and docs/math.md §5.2's discretized decoder
expect.

`load_dataset(name, split)` reads one of
- "swiss-roll": scikit-learn's 2-D Swiss roll, (N, 2);
- "digits": scikit-learn's 8×8 handwritten digits, (N, 1, 8, 8), with a fixed held-out split;
- a path to a local folder of images, (N, C, H, W);
- "hf:NAME": a Hugging Face `datasets` dataset (a Hub name, or a local folder read with
  the "imagefolder" builder), (N, C, H, W).
scikit-learn and datasets are optional (`pip install "ddpm-pipelines[train]"`) and are
imported only when a dataset needs them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image as PILImage

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
        over a folder of the same name.
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
    elif name.startswith("hf:"):
        data = _hugging_face(name.removeprefix("hf:"), split, num_samples, image_size)
    elif Path(name).is_dir():
        data = _folder(Path(name), split, num_samples, image_size)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; allowed: 'swiss-roll', 'digits', a folder of images, "
            "or 'hf:NAME' (a Hugging Face dataset)"
        )
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


# ---- images: a local folder, or a Hugging Face dataset --------------------------------------


def _folder(folder: Path, split: str, num_samples: int | None, image_size: int | None) -> torch.Tensor:
    if split != "train":
        raise ValueError(
            f"a folder of images has only the split 'train', not {split!r}; "
            "pass a separate folder for held-out data"
        )
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        looked_for = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"no images in the folder {str(folder)!r} (looked for {looked_for}, recursively)")
    paths = paths[: _count(len(paths), num_samples, f"the folder {str(folder)!r}")]
    from PIL import Image

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so a truncated file fails here, naming itself
                images.append(image)
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read the image {str(path)!r}: {err}") from err
    return _to_tensor(images, [str(p) for p in paths], image_size)


def _hugging_face(name: str, split: str, num_samples: int | None, image_size: int | None) -> torch.Tensor:
    datasets = _optional_import("datasets", "datasets")
    where = f"Hugging Face dataset {name!r} split {split!r}"
    try:
        if Path(name).is_dir():
            dataset = datasets.load_dataset("imagefolder", data_dir=name, split=split)
        else:
            dataset = datasets.load_dataset(name, split=split)
    except ValueError as err:
        raise ValueError(f"cannot load the {where}: {err}") from err
    except OSError as err:  # not found, not cached, no network
        raise OSError(f"cannot load the {where}: {err}") from err
    column = next((c for c, f in dataset.features.items() if isinstance(f, datasets.Image)), None)
    if column is None:
        raise ValueError(f"the {where} has no image column; its features: {dataset.features}")
    if len(dataset) == 0:
        raise ValueError(f"the {where} is empty")
    keep = _count(len(dataset), num_samples, f"the {where}")
    dataset = dataset.select_columns([column]).select(range(keep))
    if not dataset.features[column].decode:  # rows would be {"bytes", "path"} dicts, not images
        dataset = dataset.cast_column(column, datasets.Image(decode=True))
    images, labels = [], []
    for row in range(len(dataset)):
        labels.append(f"{where}, row {row}")
        try:
            images.append(dataset[row][column])
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read the image of {labels[-1]}: {err}") from err
    return _to_tensor(images, labels, image_size)


def _to_tensor(images: list[PILImage.Image], labels: list[str], image_size: int | None) -> torch.Tensor:
    """PIL images → (N, C, S, S) float32 in [−1, 1]; `labels` name each image in errors."""
    from PIL import Image

    for image, label in zip(images, labels, strict=True):
        if image.mode.startswith(("I", "F")):  # 16/32-bit: converting to 8 bits would clip
            raise ValueError(f"{label} has the PIL mode {image.mode!r}; only 8-bit images are supported")
    if image_size is None:
        sizes = {image.size: label for image, label in zip(images, labels, strict=True)}  # (W, H) → a file
        if len(sizes) > 1 or any(w != h for w, h in sizes):
            found = "; ".join(f"{label} is {w}×{h}" for (w, h), label in list(sizes.items())[:3])
            raise ValueError(
                f"the images must share one square size ({found}); "
                "pass image_size=... to resize them all to image_size × image_size"
            )
        image_size = images[0].size[0]
    mode = "L" if all(image.mode in _GREY_MODES for image in images) else "RGB"
    channels = 1 if mode == "L" else 3
    pixels = torch.empty(len(images), channels, image_size, image_size, dtype=torch.uint8)  # (N, C, S, S)
    for i, image in enumerate(images):
        image = image.convert(mode)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)  # clamps to 0..255
        array = torch.from_numpy(np.array(image)).reshape(image_size, image_size, channels)  # (S, S, C)
        pixels[i] = array.permute(2, 0, 1)
    return pixels.float() / 127.5 - 1  # 0..255 → [−1, 1]


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


# ---- the order of examples ----------------------------------------------------------------------


def data_indices(num_examples: int, seed: int, start: int, count: int) -> torch.Tensor:
    """Positions start … start+count−1 of the run's example stream: the concatenation of
    one random permutation of the dataset per epoch, epoch e's seeded by (seed, e)."""
    out, position = [], start
    while len(out) < count:
        epoch, offset = divmod(position, num_examples)
        permutation = torch.randperm(num_examples, generator=seeded_generator(seed, "epoch", epoch))
        take = permutation[offset : offset + count - len(out)].tolist()
        out += take
        position += len(take)
    return torch.tensor(out)


def seeded_generator(seed: int, *parts: Any, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by (seed, parts), independent of every other such tuple."""
    text = json.dumps([seed, *[str(p) for p in parts]])
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.Generator(device=device).manual_seed(value)
