"""The distribution (issue 14): the wheel and the sdist carry the licence, name it in the
current SPDX form, and the wheel carries the shipped pipelines."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel and the sdist, built offline (no isolation: the environment's setuptools)
    from a copy of the tracked files, so that the checkout gets no build/ or egg-info."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout, to copy its tracked files")
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--wheel",
            "--sdist",
            "--outdir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def test_the_wheel_carries_the_licence_its_spdx_name_and_the_shipped_pipelines(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
        licence = archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert metadata["License-Expression"] == "Apache-2.0" and metadata["License-File"] == "LICENSE"
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert licence == (ROOT / "LICENSE").read_text()
    shipped = {n for n in names if n.startswith("ddpm_pipelines/pretrained/")}
    for name in ("digits", "swiss-roll"):
        assert f"ddpm_pipelines/pretrained/{name}/model_index.json" in shipped
        assert any(
            n.startswith(f"ddpm_pipelines/pretrained/{name}/") and n.endswith(".safetensors") for n in shipped
        )


def test_the_sdist_carries_the_licence(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        top = names[0].split("/")[0]
        assert f"{top}/LICENSE" in names
        pkg_info = Parser().parsestr(archive.extractfile(f"{top}/PKG-INFO").read().decode())
    assert pkg_info["License-Expression"] == "Apache-2.0"
