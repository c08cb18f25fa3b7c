"""Files and the Hugging Face Hub: finding a pretrained folder (local, Hub or cache),
reading configs and safetensors weights strictly, saving atomically, and pushing with a
model card. Only safetensors are ever loaded: pickle files (`.bin`, `.pt`, ...) can run
code when read, so they are refused with a clear error, never opened."""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects
from safetensors import SafetensorError

from schedulers.io import fsync_file, set_default_mode
from schedulers.io import write_file_atomically as write_file_atomically  # hub's API too
from schedulers.io import write_text_atomically as write_text_atomically

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the file diffusers' models read and write
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# What a download fetches: configs, safetensors weights and the model card; never pickles.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.md")
NO_HUB = "Hub cannot be asked (offline, HF_HUB_OFFLINE=1 or local_files_only=True, or unreachable)"


# ---- finding a pretrained folder -------------------------------------------------------------


def resolve_folder(
    name_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    required: Sequence[str] = (),
) -> Path:
    """The local folder holding `name_or_path`'s files (joined with `subfolder`): the path
    itself if it is a folder, else a snapshot of the Hub repo of that id at `revision`,
    downloaded into (or, offline with HF_HUB_OFFLINE=1 or `local_files_only`, read from)
    the Hugging Face cache. Offline, a cached snapshot that lacks one of the `required` files
    (paths in the folder returned) is an error naming them."""
    path = Path(name_or_path)
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} selects a Hub commit, but {str(path)!r} is a local folder"
            )
        return path / subfolder if subfolder else path
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; pass the folder that holds it")
    repo_id = str(name_or_path)
    patterns = [f"{subfolder}/{p}" for p in ALLOW_PATTERNS] if subfolder else list(ALLOW_PATTERNS)
    at = f" at revision {revision!r}" if revision else ""
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=patterns,
        )
    except HFValidationError as err:
        raise OSError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id: {err}") from err
    except RepositoryNotFoundError as err:
        raise OSError(
            f"{repo_id!r} is not a local folder, and the Hub at {constants.ENDPOINT} has no repo "
            "of that name that you can access (check the id, or log in for a private repo)"
        ) from err
    except RevisionNotFoundError as err:
        raise OSError(f"revision {revision!r} does not exist in the Hub repo {repo_id!r}") from err
    except LocalEntryNotFoundError as err:
        # huggingface_hub ≥ 1.x: a cached snapshot that its cached file list shows is partial
        folder = getattr(err, "snapshot_path", None)
        if folder is None:
            raise OSError(
                f"{repo_id!r}{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the "
                f"{NO_HUB}; download it once while online"
            ) from err
        local_files_only = True  # the Hub was not asked
    folder = Path(folder) / subfolder if subfolder else Path(folder)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing and (local_files_only or constants.HF_HUB_OFFLINE):
        raise OSError(
            f"{repo_id!r}{at} is not fully in the Hugging Face cache ({constants.HF_HUB_CACHE}): it "
            f"lacks {', '.join(missing)}, and the {NO_HUB}; download it again while online"
        )
    return folder


# ---- reading ---------------------------------------------------------------------------------


def read_config(path: Path, class_names: Sequence[str]) -> dict[str, Any]:
    """The JSON config at `path`, whose `_class_name` must be one of `class_names`."""
    if not path.is_file():
        raise OSError(f"{path} not found: a pretrained folder needs its {path.name}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(config).__name__}")
    name = config.get("_class_name")
    if name not in class_names:
        raise ValueError(f"{path} is a config for the class {name!r}; this loads only {tuple(class_names)}")
    return config


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load `folder`/diffusion_pytorch_model.safetensors into `model`, strictly: every
    weight present, none unexpected, every shape right; a clear error names the file."""
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise OSError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}), and they are never "
                f"loaded: unpickling a file can run arbitrary code. Convert them to {WEIGHTS_NAME} "
                "(safetensors) with a tool you trust, then load again."
            )
        raise OSError(
            f"{path} not found: a pretrained model folder needs its safetensors weights (pickle "
            "weights such as .bin files are never downloaded or loaded)"
        )
    try:
        state = safetensors.torch.load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise OSError(f"{path} is not a readable safetensors file (corrupted or truncated?): {err}") from err
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {type(model).__name__} as its config describes it: "
            f"{len(missing)} missing weights {missing[:5]}, "
            f"{len(unexpected)} unexpected weights {unexpected[:5]}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{path}: weight {key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)


# ---- writing ---------------------------------------------------------------------------------


def save_atomically(write: Callable[[Path], None], directory: str | os.PathLike) -> None:
    """Let `write` fill a fresh folder beside `directory`, then move each file into place
    with `os.replace`: whatever interrupts the save, every file in `directory` is either
    the previous one or the new one, never a torn write. Files and folders get the modes of
    new ones (`set_default_mode`), whatever mode `write`'s writers gave them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.saving-") as tmp:
        write(Path(tmp))
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        for src in files:  # on disk before any rename, so that a power cut cannot tear them
            set_default_mode(src)  # safetensors writes 0600
            fsync_file(src)
        for src in files:
            dst = directory / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)


def model_card(repo_id: str, class_name: str, *, images: bool) -> str:
    """A README.md for the Hub: YAML metadata, what the repo holds and how to load it."""
    tags = ["ddpm", "ddpm-pipelines", "diffusers"]
    if images:
        tags.append("unconditional-image-generation")
    metadata = ModelCardData(
        license="apache-2.0",
        library_name="diffusers",
        tags=tags,
        pipeline_tag="unconditional-image-generation" if images else None,
    )
    if class_name == "DDPMPipeline":
        usage = f'pipe = DDPMPipeline.from_pretrained("{repo_id}")\n'
        usage += "images = pipe(batch_size=4).images" if images else "points = pipe(batch_size=1000).images"
    else:
        usage = f'model = {class_name}.from_pretrained("{repo_id}")'
    return (
        f"---\n{metadata.to_yaml()}\n---\n\n# {repo_id}\n\n"
        f"A denoising diffusion probabilistic model (DDPM, Ho et al. 2020) saved by "
        f"[ddpm-pipelines](https://pypi.org/project/ddpm-pipelines/) in diffusers' file layout "
        f"(safetensors weights).\n\n"
        f"## Usage\n\n```python\nfrom ddpm_pipelines import {class_name}\n\n{usage}\n```\n"
    )


class PushToHubMixin:
    """`push_to_hub` for a class with `save_pretrained(folder)` and `_model_card(repo_id)`."""

    def _model_card(self, repo_id: str) -> str:
        raise NotImplementedError

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Create `repo_id` if needed and upload, as one commit, what `save_pretrained`
        writes plus a model card (README.md). Returns huggingface_hub's CommitInfo: its
        `.oid` is the new revision, which `from_pretrained(repo_id, revision=oid)` loads."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp))
            (Path(tmp) / "README.md").write_text(self._model_card(repo_id), encoding="utf-8")
            return push_folder(
                tmp,
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Create `repo_id` if needed and upload a saved folder's configs, safetensors and
    model card as one commit (never its pickles or anything else); returns the CommitInfo.
    A card that `model_card` wrote for another name (training names the local folder) is
    uploaded retitled for `repo_id` (`card_for`); the folder's own card is left as it is.
    A Hub that cannot be reached is a ConnectionError that says so."""
    folder = Path(folder)
    if not ((folder / "model_index.json").is_file() or (folder / "config.json").is_file()):
        raise ValueError(
            f"{str(folder)!r} holds no model_index.json or config.json: pass a folder that "
            f"save_pretrained wrote"
        )
    names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    operations = [
        CommitOperationAdd(name, str(folder / name))
        for name in filter_repo_objects(names, allow_patterns=list(ALLOW_PATTERNS))
        if name != "README.md"
    ]
    if (folder / "README.md").is_file():
        card = card_for((folder / "README.md").read_text(encoding="utf-8"), repo_id)
        operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload with ddpm-pipelines",
            revision=revision,
            create_pr=create_pr,
        )
    except _no_answer_errors() as err:
        raise ConnectionError(
            f"could not reach the Hub at {api.endpoint} ({type(err).__name__}: {err}): check the "
            "network connection and HF_ENDPOINT, then push again"
        ) from err


def card_for(card: str, repo_id: str) -> str:
    """A model card that `model_card` wrote for another name, retitled for `repo_id`: its
    title and its from_pretrained lines. Any other card is returned as it is."""
    title = re.search(r"^# (.+)$", card, re.MULTILINE)
    if title is None or f'from_pretrained("{title[1]}")' not in card:
        return card
    retitled = card[: title.start()] + f"# {repo_id}" + card[title.end() :]
    return retitled.replace(f'from_pretrained("{title[1]}")', f'from_pretrained("{repo_id}")')


def _no_answer_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub's HTTP client raises when no answer came (refused, timed out, no
    route or name): httpx2's TransportError (huggingface_hub 2.x), httpx's (1.x), requests'
    ConnectionError and Timeout (0.x)."""
    found = []
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            pass
    return tuple(found)
