"""A small local Hugging Face Hub for tests: the real `huggingface_hub` client talks to it over HTTP.

Standard library only. It serves the routes that `HfApi`, `hf_hub_download`, `snapshot_download`,
`upload_folder`/`upload_file`/`create_commit` and `ModelCard.push_to_hub`/`ModelCard.load` use, with
the headers and error codes of the real Hub, so the client's own error classes are raised
(`RepositoryNotFoundError`, `RevisionNotFoundError`, `RemoteEntryNotFoundError`).

API::

    hub = LocalHub(data_dir, sock)  # sock: a bound TCP socket (listening or not); None binds 127.0.0.1:0
    hub.start()                     # listen and serve from a daemon thread
    hub.url                         # "http://127.0.0.1:<port>", to use as HF_ENDPOINT
    hub.data_dir                    # pathlib.Path of the on-disk store
    hub.user                        # "tester": the user any Bearer token authenticates as
    hub.errors                      # tracebacks of requests the server failed on (answered with HTTP 501)
    hub.stop()

`LocalHub` is also a context manager. Any `Authorization: Bearer <anything>` is accepted; writes need
one, reads do not (except for private repos).

Differences from the real Hub, on purpose: every file is committed as a "regular" (inline, base64)
file, so neither LFS nor Xet storage is ever used; repo ids are always `namespace/name`; listings are
a single page; `cardData` is not computed (no YAML parser in the standard library); pull requests
exist only as `refs/pr/N` refs made by a commit with `create_pr=1` (there is no discussions API).
Like the real Hub, a new repo starts with one commit holding a `.gitattributes` file.

Store layout under `data_dir`::

    blobs/<git blob sha1>              file contents, by the sha1 git gives the blob (the Hub's ETag)
    commits/<oid>.json                 {id, parents, title, message, date, author, files: {path: blob sha1}}
    repos/<type>s/<namespace>/<name>.json
                                       {id, type, private, createdAt, branches, tags, prs}: refs -> oid
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import socket
import threading
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
_HEX = re.compile(r"[0-9a-f]{5,40}")


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a blob: what the Hub sends as ETag (and `oid`) for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An HTTP error answer: status, message, the Hub's `X-Error-Code` if any, more headers and body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, body=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.body = headers or {}, body or {}


class Store:
    """Repos, commits and blobs on disk. One lock serialises every change."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()
        for sub in ("blobs", "commits", "repos"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- files

    def _write_json(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def put_blob(self, content: bytes) -> str:
        sha = git_blob_sha1(content)
        path = self.root / "blobs" / sha
        if not path.exists():
            tmp = path.with_name(f"{sha}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return sha

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def blob_size(self, sha: str) -> int:
        return self.blob_path(sha).stat().st_size

    def commit(self, oid: str) -> dict:
        return json.loads((self.root / "commits" / f"{oid}.json").read_text())

    def new_commit(self, parents: list[str], title: str, message: str, author: str, files: dict) -> str:
        body = {"parents": parents, "title": title, "message": message, "date": _now(), "author": author}
        body["files"] = dict(sorted(files.items()))
        oid = hashlib.sha1(
            json.dumps({**body, "nonce": uuid.uuid4().hex}, sort_keys=True).encode()
        ).hexdigest()
        self._write_json(self.root / "commits" / f"{oid}.json", {"id": oid, **body})
        return oid

    # -- repos

    def _repo_path(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json"

    def repo(self, repo_type: str, repo_id: str, user: str | None) -> dict:
        """The repo record, or 404 RepoNotFound (also for a private repo and no token, as the Hub)."""
        path = self._repo_path(repo_type, repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        repo = json.loads(path.read_text())
        if repo["private"] and user is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def save_repo(self, repo: dict) -> None:
        self._write_json(self._repo_path(repo["type"], repo["id"]), repo)

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str, url: str) -> dict:
        with self.lock:
            if self._repo_path(repo_type, repo_id).is_file():
                # The client reads "url" from this answer too, when `exist_ok=True`.
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            gitattributes = self.put_blob(GITATTRIBUTES)
            oid = self.new_commit([], "initial commit", "", author, {".gitattributes": gitattributes})
            repo = {"id": repo_id, "type": repo_type, "private": private, "createdAt": _now()}
            repo.update(branches={"main": oid}, tags={}, prs={})
            self.save_repo(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str, author: str) -> None:
        with self.lock:
            self.repo(repo_type, repo_id, user=author)
            self._repo_path(repo_type, repo_id).unlink()

    def resolve(self, repo: dict, revision: str) -> str:
        """Commit of a branch, tag, `refs/...` name or (prefix of a) commit oid; else 404 RevisionNotFound."""
        refs = [("refs/heads/", "branches"), ("refs/tags/", "tags"), ("refs/pr/", "prs"), ("", "branches")]
        for prefix, kind in [*refs, ("", "tags")]:
            if revision.startswith(prefix) and revision[len(prefix) :] in repo[kind]:
                return repo[kind][revision[len(prefix) :]]
        if _HEX.fullmatch(revision):
            found = {oid for oid in self.history(repo) if oid.startswith(revision)}
            if len(found) == 1:
                return found.pop()
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def history(self, repo: dict) -> set[str]:
        """Every commit reachable from the repo's refs."""
        seen: set[str] = set()
        todo = [*repo["branches"].values(), *repo["tags"].values(), *repo["prs"].values()]
        while todo:
            oid = todo.pop()
            if oid not in seen:
                seen.add(oid)
                todo.extend(self.commit(oid)["parents"])
        return seen

    def log(self, oid: str) -> list[dict]:
        """Commits from `oid` back to the first one, following first parents (newest first)."""
        commits = [self.commit(oid)]
        while commits[-1]["parents"]:
            commits.append(self.commit(commits[-1]["parents"][0]))
        return commits

    def last_commit(self, oid: str, path: str) -> dict:
        """The newest commit from `oid` back that changed `path` (a file, or anything under a folder)."""

        def state(commit: dict) -> dict:
            return {p: s for p, s in commit["files"].items() if p == path or p.startswith(path + "/")}

        commits = self.log(oid)
        for newer, older in itertools.pairwise(commits):
            if state(newer) != state(older):
                return newer
        return commits[-1]


def _tree_entries(store: Store, files: dict, oid: str, base: str, recursive: bool, expand: bool) -> list:
    """The files and folders under folder `base` ("" = root): the children only, or all when recursive."""
    prefix = base + "/" if base else ""
    under = {p: s for p, s in files.items() if p.startswith(prefix)}
    if base and not under:
        raise HubError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": oid})
    entries = []
    folders = set()
    for path, sha in under.items():
        parts = path[len(prefix) :].split("/")
        for i in range(1, len(parts) if recursive else min(len(parts), 2)):
            folders.add(prefix + "/".join(parts[:i]))
        if recursive or len(parts) == 1:
            entries.append({"type": "file", "oid": sha, "size": store.blob_size(sha), "path": path})
    for folder in folders:
        content = sorted((p, s) for p, s in files.items() if p.startswith(folder + "/"))
        tree_oid = hashlib.sha1(json.dumps(content).encode()).hexdigest()
        entries.append({"type": "directory", "oid": tree_oid, "size": 0, "path": folder})
    if expand:
        for entry in entries:
            commit = store.last_commit(oid, entry["path"])
            entry["lastCommit"] = {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
    return sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to a `do_*` endpoint method; answers errors as JSON with the Hub's headers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body are written separately: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format, *args):  # quiet: no access log on stderr
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # -- plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            if value is not None:
                self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _dispatch(self, method: str) -> None:
        hub: LocalHub = self.server.hub
        self.body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        self.user = hub.user if auth.startswith("Bearer ") and auth[7:].strip() else None
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        try:
            handler, args = self._route(method, segments)
            handler(*args)
        except HubError as e:
            headers = {
                "X-Error-Code": e.code,
                "X-Error-Message": e.message.encode("ascii", "replace").decode(),
            }
            self._json({"error": e.message, **e.body}, e.status, {**headers, **e.headers})
        except Exception:
            # 501, not 500: the client retries 500 answers with back-off, which only slows the failure down.
            hub.errors.append(traceback.format_exc())
            self._json({"error": "local test hub failed:\n" + hub.errors[-1]}, 501)

    def _route(self, method: str, seg: list[str]):
        """Endpoint method and arguments for the request; 404 JSON for anything else."""
        api = {
            ("GET", "whoami-v2"): self.do_whoami,
            ("GET", "agent-harnesses"): self.do_agent_harnesses,
            ("POST", "validate-yaml"): self.do_validate_yaml,
            ("POST", "repos/create"): self.do_create_repo,
            ("DELETE", "repos/delete"): self.do_delete_repo,
        }
        if seg[:1] == ["api"] and (method, "/".join(seg[1:])) in api:
            return api[method, "/".join(seg[1:])], ()
        if seg[:1] == ["api"] and len(seg) >= 4 and seg[1] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:]
            repo_routes = {
                ("GET", ""): (self.do_info, 0),
                ("GET", "revision"): (self.do_info, 1),
                ("GET", "tree"): (self.do_tree, -1),
                ("GET", "refs"): (self.do_refs, 0),
                ("GET", "commits"): (self.do_commits, 1),
                ("POST", "paths-info"): (self.do_paths_info, 1),
                ("POST", "preupload"): (self.do_preupload, 1),
                ("POST", "commit"): (self.do_commit, 1),
                ("POST", "branch"): (self.do_create_branch, 1),
                ("DELETE", "branch"): (self.do_delete_branch, 1),
                ("POST", "tag"): (self.do_create_tag, 1),
                ("DELETE", "tag"): (self.do_delete_tag, 1),
            }
            route = repo_routes.get((method, rest[0] if rest else ""))
            if route and (route[1] == len(rest[1:]) or (route[1] == -1 and len(rest) >= 2)):
                return route[0], (repo_type, repo_id, *rest[1:])
        repo_type = REPO_TYPES.get(seg[0]) if seg and seg[0] in ("datasets", "spaces") else "model"
        rest = seg[1:] if repo_type != "model" else seg
        if method in ("GET", "HEAD") and len(rest) >= 5 and rest[2] == "resolve":
            return self.do_resolve, (repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        raise HubError(404, f"Not found: {method} {self.path}")

    def _need_user(self) -> str:
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _params(self) -> dict:
        """JSON body, or the body of an HTML form (values as lists)."""
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return parse_qs(self.body.decode())
        return json.loads(self.body or b"{}")

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    def _base(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.server.hub.url}/{prefix}{repo_id}"

    # -- account and misc

    def do_whoami(self):
        """GET /api/whoami-v2 (`HfApi.whoami`, token checks): the fake user for any Bearer token."""
        user = self._need_user()
        token = {"displayName": "local test token", "role": "write"}
        self._json(
            {"type": "user", "id": "0" * 24, "name": user, "fullname": "Local Tester", "email": None}
            | {
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": token},
            }
        )

    def do_agent_harnesses(self):
        """GET /api/agent-harnesses (user-agent building, unless telemetry is off): an empty registry."""
        self._json({"standardEnvVars": [], "harnesses": {}})

    def do_validate_yaml(self):
        """POST /api/validate-yaml (`RepoCard.validate`, `create_commit` of a README.md).

        Checks only that a README's `---` metadata block is closed (there is no YAML parser here):
        200 `{"errors": [], "warnings": []}`, or 400 with the errors as the client reads them.
        """
        lines = self._params().get("content", "").splitlines()
        if lines and lines[0].strip() == "---" and "---" not in (line.strip() for line in lines[1:]):
            error = "The YAML metadata block of README.md is not closed by a '---' line"
            self._json({"error": error, "errors": [{"message": error}], "warnings": []}, 400)
        else:
            self._json({"errors": [], "warnings": []})

    # -- repos

    def do_create_repo(self):
        """POST /api/repos/create (`create_repo`): 200 {url, name, id}; 409 if it exists (the client
        handles `exist_ok`)."""
        user = self._need_user()
        params = self._params()
        repo_type = params.get("type") or "model"
        if repo_type not in REPO_TYPES.values():
            raise HubError(400, f"Unsupported repo type: {repo_type}")
        repo_id = f"{params.get('organization') or user}/{params['name']}"
        private = params.get("visibility", "private" if params.get("private") else "public") != "public"
        url = self._base(repo_type, repo_id)
        self.server.hub.store.create_repo(repo_type, repo_id, private, user, url)
        self._json({"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def do_delete_repo(self):
        """DELETE /api/repos/delete (`delete_repo`): 404 RepoNotFound if it does not exist."""
        self._need_user()
        params = self._params()
        repo_id = f"{params.get('organization') or self.user}/{params['name']}"
        self.server.hub.store.delete_repo(params.get("type") or "model", repo_id, self.user)
        self._json({})

    def do_info(self, repo_type: str, repo_id: str, revision: str = "main"):
        """GET /api/{type}s/{repo_id}[/revision/{revision}] (`model_info`, `repo_info`, `snapshot_download`).

        id, sha (the revision's commit), siblings (with size and blobId when `blobs=true`, as the Hub), dates.
        """
        store = self.server.hub.store
        repo = store.repo(repo_type, repo_id, self.user)
        commit = store.commit(store.resolve(repo, revision))
        blobs = self._flag("blobs")
        siblings = [
            {"rfilename": p} | ({"size": store.blob_size(s), "blobId": s} if blobs else {})
            for p, s in commit["files"].items()
        ]
        self._json(
            {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id}
            | {"author": repo_id.split("/")[0], "sha": commit["id"], "lastModified": commit["date"]}
            | {"createdAt": repo["createdAt"], "private": repo["private"], "disabled": False, "gated": False}
            | {"downloads": 0, "likes": 0, "tags": [], "siblings": siblings, "spaces": []}
            | {"usedStorage": sum(store.blob_size(s) for s in set(commit["files"].values()))}
        )

    def do_refs(self, repo_type: str, repo_id: str):
        """GET /api/{type}s/{repo_id}/refs (`list_repo_refs`): branches, tags; PR refs if `include_prs=1`."""
        repo = self.server.hub.store.repo(repo_type, repo_id, self.user)

        def refs(kind: str, prefix: str, name_is_ref: bool = False) -> list:
            return [
                {"name": prefix + n if name_is_ref else n, "ref": prefix + n, "targetCommit": oid}
                for n, oid in sorted(repo[kind].items())
            ]

        data = {
            "branches": refs("branches", "refs/heads/"),
            "tags": refs("tags", "refs/tags/"),
            "converts": [],
        }
        if self._flag("include_prs"):
            data["pullRequests"] = refs("prs", "refs/pr/", name_is_ref=True)
        self._json(data)

    def do_commits(self, repo_type: str, repo_id: str, revision: str):
        """GET /api/{type}s/{repo_id}/commits/{revision} (`list_repo_commits`): newest first, one page."""
        store = self.server.hub.store
        oid = store.resolve(store.repo(repo_type, repo_id, self.user), revision)
        self._json(
            [
                {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"]}
                | {"authors": [{"user": c["author"], "avatar": ""}]}
                for c in store.log(oid)
            ]
        )

    def do_tree(self, repo_type: str, repo_id: str, revision: str, *path: str):
        """GET /api/{type}s/{repo_id}/tree/{revision}[/{path}] (`list_repo_tree`, `list_repo_files`,
        `snapshot_download`): `recursive` and `expand` (lastCommit) as the Hub, in one page (no Link)."""
        store = self.server.hub.store
        oid = store.resolve(store.repo(repo_type, repo_id, self.user), revision)
        files = store.commit(oid)["files"]
        base = "/".join(path).strip("/")
        if base in files:
            raise HubError(400, f"{base} is a file, not a folder")
        self._json(_tree_entries(store, files, oid, base, self._flag("recursive"), self._flag("expand")))

    def do_paths_info(self, repo_type: str, repo_id: str, revision: str):
        """POST /api/{type}s/{repo_id}/paths-info/{revision} (`get_paths_info`, copies in a commit): the
        entries of the paths that exist."""
        store = self.server.hub.store
        oid = store.resolve(store.repo(repo_type, repo_id, self.user), revision)
        files = store.commit(oid)["files"]
        params = self._params()
        expand = str(params.get("expand", ["false"])[0]).lower() == "true"
        entries = []
        for path in params.get("paths", []):
            path = path.strip("/")
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if path in files or any(p.startswith(path + "/") for p in files):
                listing = _tree_entries(store, files, oid, parent, recursive=False, expand=expand)
                entries += [e for e in listing if e["path"] == path]
        self._json(entries)

    # -- writes

    def do_preupload(self, repo_type: str, repo_id: str, revision: str):
        """POST /api/{type}s/{repo_id}/preupload/{revision} (`create_commit`, `upload_folder`): every file
        "regular" (content goes inline in the commit), never ignored, with the oid it has now if it exists."""
        self._need_user()
        store = self.server.hub.store
        repo = store.repo(repo_type, repo_id, self.user)
        oid = store.resolve(repo, revision)
        files = store.commit(oid)["files"]
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
            for f in self._params()["files"]
        ]
        self._json({"files": answer, "commitOid": oid})

    def do_commit(self, repo_type: str, repo_id: str, revision: str):
        """POST /api/{type}s/{repo_id}/commit/{revision} (`create_commit`, `upload_*`, card `push_to_hub`).

        ndjson body: a `header` line ({summary, description, parentCommit?}), then `file` (base64
        content), `deletedFile` and `deletedFolder` lines. Commits on a branch (or an existing
        `refs/pr/N`); with `create_pr=1`, on a new `refs/pr/N` made from `revision`. `lfsFile` lines
        are refused (400): the preupload answer never asks for LFS.
        """
        user = self._need_user()
        store = self.server.hub.store
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        with store.lock:
            repo = store.repo(repo_type, repo_id, user)
            parent_commit = header.get("parentCommit")
            head = store.resolve(repo, revision)
            if self._flag("create_pr"):
                head = store.resolve(repo, parent_commit) if parent_commit else head
                kind, name = "prs", str(len(repo["prs"]) + 1)
            elif revision.removeprefix("refs/heads/") in repo["branches"]:
                kind, name = "branches", revision.removeprefix("refs/heads/")
            elif revision.startswith("refs/pr/") and revision[8:] in repo["prs"]:
                kind, name = "prs", revision[8:]
            else:
                raise HubError(400, f"Invalid rev id: {revision}: commits go to a branch (or a refs/pr/N)")
            if parent_commit and not self._flag("create_pr") and not head.startswith(parent_commit):
                raise HubError(412, f"A commit has happened since {parent_commit}: {revision} is at {head}")
            files = dict(store.commit(head)["files"])
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"].strip("/")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding: {value['encoding']}")
                    files[path] = store.put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    under = [p for p in files if p.startswith(path + "/")] if path else list(files)
                    if not under:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in under:
                        del files[p]
                else:
                    raise HubError(400, f"Unsupported commit operation '{key}' (this hub has no LFS)")
            title, message = header.get("summary", ""), header.get("description", "")
            oid = store.new_commit([head], title, message, user, files)
            repo[kind][name] = oid
            store.save_repo(repo)
        base = self._base(repo_type, repo_id)
        answer = {"success": True, "commitOid": oid, "commitUrl": f"{base}/commit/{oid}", "hookOutput": ""}
        if kind == "prs":
            answer |= {
                "pullRequestUrl": f"{base}/discussions/{name}",
                "pullRequestRevision": f"refs/pr/{name}",
            }
        self._json(answer)

    def do_create_branch(self, repo_type: str, repo_id: str, branch: str):
        """POST /api/{type}s/{repo_id}/branch/{branch} (`create_branch`): at `startingPoint` or main;
        409 if it exists."""
        store = self.server.hub.store
        with store.lock:
            repo = store.repo(repo_type, repo_id, self._need_user())
            if branch in repo["branches"]:
                raise HubError(409, f"Branch {branch} already exists")
            repo["branches"][branch] = store.resolve(repo, self._params().get("startingPoint") or "main")
            store.save_repo(repo)
        self._json({})

    def do_delete_branch(self, repo_type: str, repo_id: str, branch: str):
        """DELETE /api/{type}s/{repo_id}/branch/{branch} (`delete_branch`): not main."""
        store = self.server.hub.store
        with store.lock:
            repo = store.repo(repo_type, repo_id, self._need_user())
            if branch == "main":
                raise HubError(403, "The default branch cannot be deleted")
            if repo["branches"].pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            store.save_repo(repo)
        self._json({})

    def do_create_tag(self, repo_type: str, repo_id: str, revision: str):
        """POST /api/{type}s/{repo_id}/tag/{revision} (`create_tag`): body {tag, message?}; 409 if taken."""
        store = self.server.hub.store
        with store.lock:
            repo = store.repo(repo_type, repo_id, self._need_user())
            tag = self._params()["tag"]
            if tag in repo["tags"]:
                raise HubError(409, f"Tag {tag} already exists")
            repo["tags"][tag] = store.resolve(repo, revision)
            store.save_repo(repo)
        self._json({})

    def do_delete_tag(self, repo_type: str, repo_id: str, tag: str):
        """DELETE /api/{type}s/{repo_id}/tag/{tag} (`delete_tag`)."""
        store = self.server.hub.store
        with store.lock:
            repo = store.repo(repo_type, repo_id, self._need_user())
            if repo["tags"].pop(tag, None) is None:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
            store.save_repo(repo)
        self._json({})

    # -- downloads

    def do_resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        """GET/HEAD /[{type}s/]{repo_id}/resolve/{revision}/{path} (`hf_hub_download`, `get_hf_file_metadata`,
        `file_exists`, `snapshot_download`): the file, with `X-Repo-Commit` and the quoted git-blob sha1 as
        `ETag`, as the Hub sends for regular files; `Range: bytes=a-[b]` gives a 206. A missing file is
        404 EntryNotFound, with `X-Repo-Commit` so that the client caches the absence."""
        store = self.server.hub.store
        oid = store.resolve(store.repo(repo_type, repo_id, self.user), revision)
        sha = store.commit(oid)["files"].get(path)
        if sha is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid})
        content = store.blob_path(sha).read_bytes()
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{sha}"', "X-Repo-Commit": oid}
        headers["Accept-Ranges"] = "bytes"
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, end = int(match[1]), int(match[2] or len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub


class LocalHub:
    """The local Hub: a store in `data_dir`, served over HTTP on `sock` (see the module docstring)."""

    user = "tester"

    def __init__(self, data_dir: str | os.PathLike, sock: socket.socket | None = None):
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir)
        self.errors: list[str] = []
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LocalHub:
        server = _Server(self._sock.getsockname()[:2], _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._sock
        server.server_address = self._sock.getsockname()[:2]
        server.server_name, server.server_port = server.server_address
        server.server_activate()  # listen()
        server.hub = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
