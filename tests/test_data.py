"""ddpm_pipelines.data: each dataset's shape, range and split, and each error's message."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_pipelines.data import (
    DATASET_NAMES,
    ImageReadError,
    StreamingImages,
    data_indices,
    default_num_workers,
    example_batches,
    flips,
    image_dataset,
    is_points,
    load_dataset,
)


def names(*patterns: str) -> str:
    """A regex matching a message that contains every one of `patterns`, in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in patterns)


def write_image(path, mode: str, size: tuple[int, int], value=0) -> None:
    """A flat image of `mode` and `size` (W, H); `value` per channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


# ---- swiss-roll ------------------------------------------------------------------------------


def test_swiss_roll_shape_and_default_size():
    data = load_dataset("swiss-roll")
    assert data.shape == (10_000, 2) and data.dtype == torch.float32
    assert is_points(data)
    # the roll's (x, z) plane spans about ±12 before the division by 10
    assert data.abs().max() < 2


def test_swiss_roll_is_sklearns_columns_0_and_2_over_10():
    from sklearn.datasets import make_swiss_roll

    points, _ = make_swiss_roll(50, noise=0.5, random_state=2 * 3)  # train of seed 3
    expected = torch.from_numpy(points[:, [0, 2]] / 10).float()
    assert torch.equal(load_dataset("swiss-roll", num_samples=50, seed=3), expected)
    points, _ = make_swiss_roll(50, noise=0.5, random_state=2 * 3 + 1)  # test of seed 3
    expected = torch.from_numpy(points[:, [0, 2]] / 10).float()
    assert torch.equal(load_dataset("swiss-roll", "test", num_samples=50, seed=3), expected)


def test_swiss_roll_seed_and_split():
    train = load_dataset("swiss-roll", num_samples=100, seed=1)
    assert torch.equal(train, load_dataset("swiss-roll", num_samples=100, seed=1))
    assert not torch.equal(train, load_dataset("swiss-roll", num_samples=100, seed=2))
    test = load_dataset("swiss-roll", "test", num_samples=100, seed=1)
    assert not torch.isin(test[:, 0], train[:, 0]).any()  # independent draws share no point
    # the streams never overlap: seed s's test is not seed s + 1's train
    assert not torch.equal(test, load_dataset("swiss-roll", num_samples=100, seed=2))


# ---- digits ----------------------------------------------------------------------------------


def test_digits_shape_range_and_levels():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8)
    assert train.dtype == torch.float32 and not is_points(train)
    assert train.min() == -1 and train.max() == 1
    assert torch.unique(torch.cat([train, test])).numel() == 17  # x / 8 − 1 for x = 0..16
    assert torch.equal(torch.unique(train), torch.arange(17) / 8 - 1)


def test_digits_split_is_a_fixed_partition():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits"), load_dataset("digits", "test", seed=7)
    assert torch.equal(train, load_dataset("digits", seed=123))  # the split ignores `seed`
    assert torch.equal(test, load_dataset("digits", "test"))
    # train and test together are exactly the 1797 images, each once (as a multiset of rows:
    # digits holds duplicate images, so pixels alone cannot prove the split disjoint)
    ours = torch.cat([train, test]).flatten(1).numpy()
    all_rows = (load_digits().images / 8 - 1).reshape(-1, 64).astype(np.float32)
    sort = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731
    assert np.array_equal(sort(ours), sort(all_rows))


def test_digits_num_samples_takes_the_first():
    assert torch.equal(load_dataset("digits", num_samples=10), load_dataset("digits")[:10])
    with pytest.raises(ValueError, match=names("num_samples=360", "359", "'digits'", "'test'")):
        load_dataset("digits", "test", num_samples=360)


# ---- a folder of images ----------------------------------------------------------------------


def test_folder_rgb(tmp_path):
    write_image(tmp_path / "b.png", "RGB", (4, 4), (255, 0, 0))
    write_image(tmp_path / "sub" / "c.JPG", "RGB", (4, 4), (0, 255, 0))  # recursive, any case
    write_image(tmp_path / "z.bmp", "L", (4, 4), 0)  # a greyscale image after a colour one: RGB
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.shape == (3, 3, 4, 4) and data.dtype == torch.float32
    assert data.min() >= -1 and data.max() <= 1
    # sorted by path: b.png, sub/c.JPG, z.bmp
    assert torch.equal(data[0, :, 0, 0], torch.tensor([1.0, -1, -1]))
    assert data[1, 1].mean() > 0.9  # green, through JPEG
    assert torch.equal(data[2], torch.full((3, 4, 4), -1.0))
    assert torch.equal(load_dataset(str(tmp_path), num_samples=2), data[:2])
    with pytest.raises(ValueError, match=names("num_samples=4", "3", re.escape(str(tmp_path)))):
        load_dataset(tmp_path, num_samples=4)


def test_folder_greyscale_stays_one_channel(tmp_path):
    write_image(tmp_path / "a.png", "L", (5, 5), 51)
    write_image(tmp_path / "b.png", "LA", (5, 5), (255, 0))
    data = load_dataset(tmp_path)
    assert data.shape == (2, 1, 5, 5)
    assert torch.allclose(data[:, 0, 0, 0], torch.tensor([51 / 127.5 - 1, 1.0]))


def test_the_first_image_fixes_the_mode_so_a_later_colour_image_is_named(tmp_path):
    """Nothing reads the whole dataset up front: a greyscale first image makes the dataset
    greyscale, and a colour image after it is an error naming both, not a silent conversion."""
    write_image(tmp_path / "a.png", "L", (4, 4), 9)
    write_image(tmp_path / "b.png", "RGB", (4, 4), (1, 2, 3))
    with pytest.raises(ValueError, match=names("b.png", "colour", "greyscale", "a.png")):
        load_dataset(tmp_path)


def test_folder_mixed_sizes_need_image_size(tmp_path):
    write_image(tmp_path / "a.png", "RGB", (8, 8), (10, 20, 30))
    write_image(tmp_path / "b.png", "RGB", (6, 10), (200, 100, 0))
    with pytest.raises(ValueError, match=names("b.png' is 6×10", "a.png' is 8×8", "image_size")):
        load_dataset(tmp_path)
    data = load_dataset(tmp_path, image_size=4)
    assert data.shape == (2, 3, 4, 4)
    # bicubic of a flat image is the same flat image
    assert torch.allclose(data[1, :, 2, 2], torch.tensor([200, 100, 0]) / 127.5 - 1)


def test_folder_one_non_square_size_needs_image_size(tmp_path):
    write_image(tmp_path / "a.png", "L", (6, 4))
    with pytest.raises(ValueError, match=names("a.png' is 6×4", "square", "image_size")):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, image_size=3).shape == (1, 1, 3, 3)


def test_folder_corrupt_image_is_named(tmp_path):
    write_image(tmp_path / "a.png", "RGB", (4, 4))
    (tmp_path / "x.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=names("cannot read", re.escape(repr(str(tmp_path / "x.png"))))):
        load_dataset(tmp_path)


def test_folder_truncated_image_is_named(tmp_path):
    write_image(tmp_path / "a.png", "RGB", (64, 64))
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=names("cannot read", "a.png")):
        load_dataset(tmp_path)


def test_folder_16_bit_image_is_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 40_000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match=names("deep.png", "mode 'I", "8-bit")):
        load_dataset(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=names("no images", re.escape(str(tmp_path)), r"\.png", r"\.webp")):
        load_dataset(tmp_path)


def test_folder_has_only_a_train_split(tmp_path):
    write_image(tmp_path / "a.png", "RGB", (4, 4))
    with pytest.raises(ValueError, match=names("only the split 'train'", "'test'", "separate folder")):
        load_dataset(tmp_path, "test")


# ---- hf: Hugging Face datasets ---------------------------------------------------------------


@pytest.fixture
def offline_datasets(monkeypatch):
    """datasets, told it is offline: tests never touch the internet."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


def test_hf_local_imagefolder(tmp_path, offline_datasets):
    folder = tmp_path / "images"
    for i in range(3):
        write_image(folder / f"{i}.png", "L", (6, 6), 40 * i)
    data = load_dataset(f"hf:{folder}")
    assert data.shape == (3, 1, 6, 6)
    assert torch.equal(data, load_dataset(folder))  # the same conversion as a folder
    assert load_dataset(f"hf:{folder}", image_size=3, num_samples=2).shape == (2, 1, 3, 3)
    with pytest.raises(ValueError, match=names("num_samples=4", "3", re.escape(repr(str(folder))))):
        load_dataset(f"hf:{folder}", num_samples=4)


def test_hf_local_imagefolder_mixed_sizes_need_image_size(tmp_path, offline_datasets):
    write_image(tmp_path / "a.png", "RGB", (4, 4))
    write_image(tmp_path / "b.png", "RGB", (5, 5))
    with pytest.raises(ValueError, match=names("4×4", "5×5", "row", "image_size")):
        load_dataset(f"hf:{tmp_path}")
    assert load_dataset(f"hf:{tmp_path}", image_size=2).shape == (2, 3, 2, 2)


def test_hf_missing_split_names_dataset_and_split(tmp_path, offline_datasets):
    write_image(tmp_path / "a.png", "RGB", (4, 4))
    with pytest.raises(ValueError, match=names(re.escape(repr(str(tmp_path))), "split 'test'")):
        load_dataset(f"hf:{tmp_path}", "test")


def test_hf_corrupt_image_names_the_row(tmp_path, offline_datasets):
    write_image(tmp_path / "a.png", "RGB", (4, 4))
    (tmp_path / "x.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=names("cannot read", "row 1", "x.png")):
        load_dataset(f"hf:{tmp_path}")


def test_hf_unreachable_hub_dataset_is_an_os_error(offline_datasets):
    with pytest.raises(OSError, match=names("'no-such-user/no-such-dataset'", "split 'train'")):
        load_dataset("hf:no-such-user/no-such-dataset")


def test_hf_dataset_without_images(monkeypatch, offline_datasets):
    table = offline_datasets.Dataset.from_dict({"text": ["a", "b"]})
    monkeypatch.setattr(offline_datasets, "load_dataset", lambda *args, **kwargs: table)
    with pytest.raises(ValueError, match=names("'some/text'", "split 'train'", "no image column")):
        load_dataset("hf:some/text")


# ---- options and errors ----------------------------------------------------------------------


def test_dataset_names():
    assert DATASET_NAMES == ("swiss-roll", "digits")


def test_unknown_dataset():
    message = (
        "unknown dataset 'mnist'; allowed: 'swiss-roll', 'digits', a folder of images, "
        "or 'hf:NAME' (a Hugging Face dataset)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset("mnist")


@pytest.mark.parametrize("where", ["path/that/does/not/exist", "absolute"])
def test_a_missing_folder_is_not_found(tmp_path, where):
    path = str(tmp_path / "missing") if where == "absolute" else where
    with pytest.raises(
        FileNotFoundError, match=names("not found", re.escape(repr(path)), "'swiss-roll'", "'digits'")
    ):
        load_dataset(path)
    with pytest.raises(FileNotFoundError, match=re.escape(repr(path))):
        image_dataset(path)


@pytest.mark.parametrize("split", ["validation", "Train", ""])
def test_bad_split(split):
    with pytest.raises(ValueError, match=names(re.escape(f"split={split!r}"), "'train'", "'test'")):
        load_dataset("swiss-roll", split)


@pytest.mark.parametrize("option", ["num_samples", "image_size"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_counts(tmp_path, option, value):
    write_image(tmp_path / "a.png", "RGB", (4, 4))
    with pytest.raises(ValueError, match=names(re.escape(f"{option}={value!r}"), "positive integer")):
        load_dataset(tmp_path, **{option: value})


@pytest.mark.parametrize("seed", [-1, 2**31, 1.0])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match=names(re.escape(f"seed={seed!r}"), "integer", "'swiss-roll'")):
        load_dataset("swiss-roll", seed=seed)
    load_dataset("digits", num_samples=1, seed=seed)  # digits ignores the seed, whatever it is


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_image_size_is_refused_for_fixed_shape_datasets(name):
    with pytest.raises(ValueError, match=names("image_size=16", re.escape(repr(name)), "fixed shape")):
        load_dataset(name, image_size=16)


MODULES = [("swiss-roll", "sklearn.datasets"), ("digits", "sklearn.datasets"), ("hf:x", "datasets")]


@pytest.mark.parametrize(("name", "module"), MODULES)
def test_missing_optional_dependency(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "ddpm-pipelines[train]"')):
        load_dataset(name)


def test_is_points():
    assert is_points(torch.zeros(3, 2))
    assert not is_points(torch.zeros(3, 1, 8, 8))


# ---- images read on demand, and the run's example stream -------------------------------------


def _columns_image(path, size: tuple[int, int]) -> None:
    """An RGB image (W, H) whose pixel (x, y) is (10·x, 10·y, 0): left differs from right
    and top from bottom, so a flip or a crop is seen exactly."""
    width, height = size
    x, y = np.meshgrid(np.arange(width), np.arange(height))  # (H, W)
    pixels = np.stack([10 * x, 10 * y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("size", [(8, 4), (4, 8)])
def test_center_crop_keeps_the_centre(tmp_path, size):
    """The shorter side is already 4: no resize, the centre 4 × 4 cropped (offset 2)."""
    _columns_image(tmp_path / "a.png", size)
    pixels = image_dataset(tmp_path, image_size=4, center_crop=True)[0]  # (3, 4, 4) uint8
    wide = size[0] > size[1]
    columns, rows = (range(2, 6), range(4)) if wide else (range(4), range(2, 6))
    assert torch.equal(pixels[0], torch.tensor([[10 * x for x in columns]] * 4, dtype=torch.uint8))
    assert torch.equal(pixels[1], torch.tensor([[10 * y] * 4 for y in rows], dtype=torch.uint8))


def test_center_crop_resizes_the_shorter_side_then_crops(tmp_path):
    write_image(tmp_path / "a.png", "RGB", (40, 20), (200, 30, 7))  # flat: resizing keeps it
    pixels = image_dataset(tmp_path, image_size=10, center_crop=True)[0]
    assert pixels.shape == (3, 10, 10) and torch.equal(pixels[:, 5, 5], torch.tensor([200, 30, 7]).byte())
    # without center_crop the image is squeezed to 10 × 10 instead
    assert image_dataset(tmp_path, image_size=10)[0].shape == (3, 10, 10)


def test_only_the_first_image_is_read_up_front(tmp_path, monkeypatch):
    for i in range(5):
        write_image(tmp_path / f"{i}.png", "L", (4, 4), i)
    opened = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    images = image_dataset(tmp_path)
    assert images.shape == (5, 1, 4, 4) and len(opened) == 1
    assert images[3][0, 0, 0] == 3 and len(opened) == 2


def test_flips_are_a_coin_of_the_stream_position(tmp_path):
    """An asymmetric image at every position: the flipped examples are exactly the mirror
    image, where `flips(seed, position)` says, about half of them, and the same whether
    one process reads the global batch or two processes read a half each."""
    _columns_image(tmp_path / "a.png", (4, 4))
    data = load_dataset(tmp_path).expand(64, -1, -1, -1)  # one image, 64 times
    one = torch.cat(list(example_batches(data, seed=3, start=5, count=4, batch_size=16, random_flip=True)))
    expected = flips(3, torch.arange(5, 5 + 64))
    assert 16 < int(expected.sum()) < 48
    assert torch.equal(one[expected], data[:1].flip(-1).expand(int(expected.sum()), -1, -1, -1))
    assert torch.equal(one[~expected], data[:1].expand(int((~expected).sum()), -1, -1, -1))
    halves = [
        list(example_batches(data, seed=3, start=5, count=4, batch_size=8, rank=r, world=2, random_flip=True))
        for r in range(2)
    ]
    assert torch.equal(torch.cat([torch.cat(pair) for pair in zip(*halves, strict=True)]), one)
    assert torch.equal(torch.cat(list(example_batches(data, seed=3, start=5, count=4, batch_size=16))), data)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataset_read_by_workers_gives_the_tensor_path_batches(tmp_path, num_workers):
    """The DataLoader (workers or not) yields what indexing the decoded tensor does: the
    stream's order is (seed, epoch)'s, across epochs, whoever decodes."""
    for i in range(10):
        write_image(tmp_path / f"{i:02d}.png", "RGB", (4, 4), (i, 2 * i, 3 * i))
    options = dict(seed=1, start=7, count=6, batch_size=3, rank=1, world=2, random_flip=True)
    lazy = list(example_batches(image_dataset(tmp_path), num_workers=num_workers, **options))
    eager = list(example_batches(load_dataset(tmp_path), **options))
    assert len(lazy) == 6 and all(torch.equal(a, b) for a, b in zip(lazy, eager, strict=True))
    # rank 1's slices of 6 global batches of 6 from position 7 (epochs 0 to 4 of the 10
    # images): image i is flat, with red level i
    indices = torch.cat([data_indices(10, 1, 7 + 6 * k + 3, 3) for k in range(6)])
    assert torch.equal(torch.cat(eager)[:, 0, 0, 0], indices.float() / 127.5 - 1)


def test_an_image_that_cannot_be_read_is_named_by_the_training_process(tmp_path):
    """A worker's decode error reaches the caller as one clean message naming the file."""
    for i in range(4):
        write_image(tmp_path / f"{i}.png", "RGB", (4, 4))
    (tmp_path / "2.png").write_bytes(b"not a png")
    batches = example_batches(image_dataset(tmp_path), seed=0, start=0, count=8, batch_size=2, num_workers=1)
    with pytest.raises(
        ImageReadError, match=names("cannot read the image", re.escape(repr(str(tmp_path / "2.png"))))
    ) as caught:
        list(batches)
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_stream_gives_one_order_whoever_reads_it(tmp_path, offline_datasets):
    """A streaming imagefolder over local files: the same batches with or without workers,
    read by one process or by two (each its slices), and from a resumed position; epoch
    after epoch, each a permutation of the 30 images, the next one different."""
    for i in range(30):
        write_image(tmp_path / f"{i:02d}.png", "RGB", (4, 4), (i, 0, 0))
    stream = StreamingImages(str(tmp_path), "train", None, False, seed=0, buffer_size=8)
    assert stream.shape == (None, 3, 4, 4)

    def reds(start=0, count=8, batch_size=8, **options) -> list[list[int]]:
        batches = example_batches(stream, seed=0, start=start, count=count, batch_size=batch_size, **options)
        return [(b[:, 0, 0, 0] * 127.5 + 127.5).round().int().tolist() for b in batches]

    one = reds()
    read = [red for batch in one for red in batch]
    epochs = read[:30], read[30:60]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(30)) and epochs[0] != epochs[1]
    assert reds(num_workers=2) == one
    # many short epochs, read by workers that start one after another
    assert reds(count=60, batch_size=2, num_workers=4) == reds(count=60, batch_size=2)
    halves = [reds(batch_size=4, rank=r, world=2) for r in range(2)]
    assert [a + b for a, b in zip(*halves, strict=True)] == one
    assert reds(start=40, count=2) == one[5:7]


def test_each_process_decodes_only_its_own_slices(tmp_path):
    """Process 1 of 2 decodes exactly the examples at its positions, nothing else."""
    for i in range(10):
        write_image(tmp_path / f"{i:02d}.png", "L", (4, 4), i)
    images = image_dataset(tmp_path)
    decoded = []
    real = images.pixels
    images.pixels = lambda source, index: decoded.append(index) or real(source, index)
    batches = example_batches(images, seed=2, start=3, count=4, batch_size=3, rank=1, world=2)
    read = torch.cat([b[:, 0, 0, 0] for b in batches])
    mine = torch.cat([data_indices(10, 2, 3 + 6 * k + 3, 3) for k in range(4)])
    assert decoded == mine.tolist()
    assert torch.equal(read, mine.float() / 127.5 - 1)


@pytest.mark.parametrize(
    ("cpus", "local_processes", "workers"), [(2, 1, 1), (16, 1, 8), (64, 1, 8), (16, 8, 1), (32, 4, 4)]
)
def test_default_workers_are_half_of_each_process_share_of_the_cpus(
    monkeypatch, cpus, local_processes, workers
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    assert default_num_workers() == workers
