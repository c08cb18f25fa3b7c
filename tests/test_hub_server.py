"""The local Hub of tests/hub_server.py, driven by the real huggingface_hub client (no network).

Each test works in its own repo, named after the test: the `hub` server lives for the whole session.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub import (
    HfApi,
    ModelCard,
    RepoFile,
    RepoFolder,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.sha import git_hash

WEIGHTS = random.Random(0).randbytes(2**20)  # ~1 MB of binary
NOTES = b"nested file\n"


@pytest.fixture(autouse=True)
def _no_server_failures(hub):
    """Whatever a test checks, the server must not have failed on any request it made."""
    yield
    assert hub.errors == [], hub.errors[0]


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi()


@pytest.fixture
def repo_id(hub, request) -> str:
    """A repo id of this test's own (not created)."""
    return f"{hub.user}/{re.sub(r'[^A-Za-z0-9._-]', '-', request.node.name)}"


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@dataclass
class TwoCommits:
    repo_id: str
    first: str  # commit oid of the first upload
    second: str  # commit oid of the second upload


@pytest.fixture
def two_commits(api, repo_id, tmp_path) -> TwoCommits:
    """A repo with two upload_folder commits: config.json changes in the second, the rest does not."""
    api.create_repo(repo_id)
    one = _write(
        tmp_path / "one", {"config.json": b'{"v": 1}', "weights.bin": WEIGHTS, "nested/notes.txt": NOTES}
    )
    first = api.upload_folder(repo_id=repo_id, folder_path=one, commit_message="first upload")
    two = _write(
        tmp_path / "two", {"config.json": b'{"v": 2}', "weights.bin": WEIGHTS, "nested/notes.txt": NOTES}
    )
    second = api.upload_folder(repo_id=repo_id, folder_path=two, commit_message="second upload")
    return TwoCommits(repo_id, first.oid, second.oid)


def _raw_get(url: str) -> tuple[int, dict]:
    """Status and JSON body of an unauthenticated GET, outside the client."""
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_whoami(api, hub):
    assert api.whoami(cache=False)["name"] == "tester"
    status, body = _raw_get(f"{hub.url}/api/whoami-v2")  # no token
    assert status == 401 and "error" in body


def test_unknown_route_is_a_json_404(hub):
    status, body = _raw_get(f"{hub.url}/api/no-such-route")
    assert status == 404 and "error" in body


def test_create_repo_and_exist_ok(api, repo_id):
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id
    sha = api.repo_info(repo_id).sha
    assert re.fullmatch(r"[0-9a-f]{40}", sha)
    assert api.list_repo_files(repo_id) == [".gitattributes"]  # a new repo's first commit, as on the Hub

    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(repo_id)
    assert error.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    assert api.repo_info(repo_id).sha == sha  # untouched


def test_upload_folder_makes_one_commit_per_upload(api, two_commits):
    repo_id = two_commits.repo_id
    commits = api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["second upload", "first upload", "initial commit"]
    assert [c.commit_id for c in commits[:2]] == [two_commits.second, two_commits.first]
    assert api.list_repo_files(repo_id) == [
        ".gitattributes",
        "config.json",
        "nested/notes.txt",
        "weights.bin",
    ]
    assert api.list_repo_files(repo_id, revision=two_commits.first) == api.list_repo_files(repo_id)


def test_upload_of_unchanged_files_makes_no_commit(api, two_commits, tmp_path):
    same = _write(tmp_path / "same", {"config.json": b'{"v": 2}', "weights.bin": WEIGHTS})
    info = api.upload_folder(repo_id=two_commits.repo_id, folder_path=same, commit_message="no-op")
    assert info.oid == two_commits.second  # the preupload oids told the client nothing changed
    assert len(api.list_repo_commits(two_commits.repo_id)) == 3


def test_hf_hub_download_at_main_and_at_an_old_commit(two_commits):
    repo_id = two_commits.repo_id
    new = Path(hf_hub_download(repo_id, "config.json"))
    old = Path(hf_hub_download(repo_id, "config.json", revision=two_commits.first))
    assert new.read_bytes() == b'{"v": 2}'
    assert old.read_bytes() == b'{"v": 1}'
    assert new.parent.name == two_commits.second and old.parent.name == two_commits.first  # snapshots/<oid>
    assert new.resolve().name == git_hash(b'{"v": 2}')  # the cache names blobs by the ETag: the git sha1

    weights = Path(hf_hub_download(repo_id, "weights.bin", revision=two_commits.first))
    assert weights.read_bytes() == WEIGHTS
    assert Path(hf_hub_download(repo_id, "notes.txt", subfolder="nested")).read_bytes() == NOTES


def test_snapshot_download_with_patterns_and_old_revision(two_commits):
    repo_id = two_commits.repo_id
    main = Path(snapshot_download(repo_id, allow_patterns=["*.json", "nested/*"]))
    assert main.name == two_commits.second
    assert sorted(str(p.relative_to(main)) for p in main.rglob("*") if p.is_file()) == [
        "config.json",
        "nested/notes.txt",
    ]
    assert (main / "config.json").read_bytes() == b'{"v": 2}'

    old = Path(snapshot_download(repo_id, revision=two_commits.first))
    assert old.name == two_commits.first
    assert (old / "config.json").read_bytes() == b'{"v": 1}'
    assert (old / "weights.bin").read_bytes() == WEIGHTS


def test_refs_branches_and_tags(api, two_commits):
    repo_id = two_commits.repo_id
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [
        ("main", "refs/heads/main", two_commits.second)
    ]
    assert refs.tags == []

    api.create_tag(repo_id, tag="v1", revision=two_commits.first)
    api.create_branch(repo_id, branch="dev", revision=two_commits.first)
    api.create_branch(repo_id, branch="dev", exist_ok=True)  # the 409 is handled by the client
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {
        "main": two_commits.second,
        "dev": two_commits.first,
    }
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", two_commits.first)]
    assert Path(hf_hub_download(repo_id, "config.json", revision="v1")).read_bytes() == b'{"v": 1}'
    assert api.model_info(repo_id, revision="dev").sha == two_commits.first


def test_list_repo_tree(api, two_commits):
    repo_id = two_commits.repo_id
    root = {e.path: e for e in api.list_repo_tree(repo_id)}
    assert set(root) == {".gitattributes", "config.json", "weights.bin", "nested"}
    assert isinstance(root["nested"], RepoFolder)
    assert isinstance(root["weights.bin"], RepoFile)
    assert root["weights.bin"].size == len(WEIGHTS) and root["weights.bin"].blob_id == git_hash(WEIGHTS)

    nested = list(api.list_repo_tree(repo_id, path_in_repo="nested"))
    assert [(e.path, e.size) for e in nested] == [("nested/notes.txt", len(NOTES))]

    expanded = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, expand=True)}
    assert set(expanded) == {".gitattributes", "config.json", "weights.bin", "nested", "nested/notes.txt"}
    assert expanded["config.json"].last_commit.oid == two_commits.second
    assert expanded["weights.bin"].last_commit.oid == two_commits.first
    assert expanded["nested"].last_commit.title == "first upload"

    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="no-such-folder"))


def test_model_info_and_repo_info(api, two_commits):
    repo_id = two_commits.repo_id
    info = api.model_info(repo_id)
    assert info.id == repo_id and info.sha == two_commits.second and info.private is False
    assert {s.rfilename for s in info.siblings} == {
        ".gitattributes",
        "config.json",
        "weights.bin",
        "nested/notes.txt",
    }
    assert info.last_modified is not None
    assert api.repo_info(repo_id).sha == two_commits.second
    assert api.repo_info(repo_id, revision=two_commits.first).sha == two_commits.first

    sizes = {s.rfilename: s.size for s in api.model_info(repo_id, files_metadata=True).siblings}
    assert sizes["weights.bin"] == len(WEIGHTS)
    assert api.file_exists(repo_id, "nested/notes.txt") and not api.file_exists(repo_id, "nope.txt")


def test_model_card_push_and_load(api, repo_id):
    api.create_repo(repo_id)
    card = ModelCard("---\nlicense: apache-2.0\ntags:\n- ddpm\n---\n\n# A local model\n")
    card.push_to_hub(repo_id)  # validate-yaml, then a commit of README.md

    loaded = ModelCard.load(repo_id)
    assert loaded.data.license == "apache-2.0" and loaded.data.tags == ["ddpm"]
    assert "# A local model" in loaded.text
    assert api.list_repo_commits(repo_id)[0].title == "Upload README.md with huggingface_hub"

    # A README commit is validated first too: an unclosed metadata block is refused by /api/validate-yaml.
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md"):
        api.upload_file(path_or_fileobj=b"---\nlicense: mit\n", path_in_repo="README.md", repo_id=repo_id)
    assert len(api.list_repo_commits(repo_id)) == 2


def test_delete_and_pull_request_commits(api, two_commits):
    repo_id = two_commits.repo_id
    pr = api.upload_file(path_or_fileobj=b"in a PR", path_in_repo="pr.txt", repo_id=repo_id, create_pr=True)
    assert pr.pr_revision == "refs/pr/1"
    assert Path(hf_hub_download(repo_id, "pr.txt", revision="refs/pr/1")).read_bytes() == b"in a PR"
    assert "pr.txt" not in api.list_repo_files(repo_id)  # main is untouched

    api.delete_file("config.json", repo_id)
    api.delete_folder("nested", repo_id)
    assert api.list_repo_files(repo_id) == [".gitattributes", "weights.bin"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("config.json", repo_id)


def test_errors_are_the_clients_own(api, two_commits):
    repo_id = two_commits.repo_id
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/no-such-repo", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/no-such-repo")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="f" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "no-such-file.json")


def test_offline_mode_reads_the_cache(api, repo_id, tmp_path):
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=_write(tmp_path, {"config.json": b'{"offline": true}'}))
    snapshot_download(repo_id)  # fills the cache (HF_HOME is shared with the child)

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: any connection is refused
    code = (
        "import sys, pathlib\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "path = hf_hub_download(sys.argv[1], 'config.json')\n"
        "folder = pathlib.Path(snapshot_download(sys.argv[1]))\n"
        "print(pathlib.Path(path).read_text(), (folder / 'config.json').read_text())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": f"http://127.0.0.1:{closed.getsockname()[1]}"}
    with closed:
        result = subprocess.run(
            [sys.executable, "-c", code, repo_id], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['{"offline":', "true}", '{"offline":', "true}"]
