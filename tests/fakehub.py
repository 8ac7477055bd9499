"""A loopback fake of the Hugging Face Hub API, enough for `HfApi` uploads and for loading models back by repo id
(huggingface_hub 2.4, transformers 5), for offline tests.

```python
with start_fake_hub() as fake, fake_hub_session():
    api = fake.api()  # HfApi(endpoint=fake.endpoint, token="hf_fake")
    api.create_repo("user/model", exist_ok=True)
    api.upload_folder(repo_id="user/model", folder_path="out/stage-01")
    assert sorted(fake.store["user/model"]["main"]) == ["README.md", "config.json", "model.safetensors"]
    with fake_hub_downloads(fake, tmp_path / "hf-cache"):  # downloads by repo id reach the fake, into a fresh cache
        model = AutoModelForImageClassification.from_pretrained("user/model", revision="main")
```

The server (`http.server.ThreadingHTTPServer` on 127.0.0.1, a free port, daemon threads) keeps repositories in memory
as `store = {repo_id: {branch: {path: bytes}}}`, the head commit of each branch in `heads`, and the tree of every
commit in `snapshots = {repo_id: {oid: tree}}`. Every file is declared `"regular"` at preupload, so contents arrive
base64-encoded in the NDJSON commit: no LFS or Xet transfer is ever started. It implements:

- `GET /api/whoami-v2`
- `POST /api/repos/create` (409 with the repo URL when it exists), `POST /api/validate-yaml`
- `GET|HEAD /api/models/{repo}` and `/api/models/{repo}/revision/{rev}` (model info: sha, siblings, and the card's
  `pipeline_tag`, `library_name`, `tags` as `cardData`)
- `POST|DELETE /api/models/{repo}/branch/{branch}` (`startingPoint`, default `main`), `GET /api/models/{repo}/refs`
- `POST /api/models/{repo}/preupload/{rev}` (`regular`, `shouldIgnore: false`, git-blob `oid` of existing files)
- `POST /api/models/{repo}/commit/{rev}` (header, file, deletedFile, deletedFolder; `parentCommit` checked)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (`recursive`), `POST /api/models/{repo}/paths-info/{rev}`
- `GET|HEAD /{repo}/resolve/{rev}/{path}` (downloads): the bytes, with `ETag: "<git blob oid>"` (a regular file's
  etag on the Hub), `X-Repo-Commit`, the real `Content-Length` (on HEAD too), `Accept-Ranges: bytes` and single
  `Range` requests (206/416). A missing file answers 404 `EntryNotFound` with `X-Repo-Commit` (huggingface_hub caches
  the absence under `.no_exist/<commit>/`, transformers then skips optional files), a missing revision 404
  `RevisionNotFound`, a missing repo 404 `RepoNotFound`. No redirect, no `X-Linked-*` or Xet headers.

`{rev}` is a branch (`refs/heads/` optional) or a full commit oid (any commit of `snapshots`), URL-encoded.
Writes need an `Authorization: Bearer hf_...` header; so do reads of a private repo (401 `RepoNotFound` without).
Errors carry `X-Error-Code` / `X-Error-Message` like the Hub, so `huggingface_hub` raises its usual
`RepositoryNotFoundError`, `RevisionNotFoundError`, `EntryNotFoundError`, `HfHubHTTPError`. Unknown routes answer 404
and are recorded in `FakeHub.unhandled`. Faults are injected with `FakeHub.fail_next` (an error answer) and
`FakeHub.hang_next` (a request held until the test releases it, then answered normally: an upload that hangs).

huggingface_hub's default HTTP client refuses every request while `HF_HUB_OFFLINE=1` (set by `tests/conftest.py`):
[`fake_hub_session`] swaps in a client that only reaches loopback addresses, with bounded timeouts. Uploads need only
that (`HfApi(endpoint=fake.endpoint)`); downloads by repo id also need [`fake_hub_downloads`], which points the
endpoint constants, the cache and transformers' shared `HfApi` at the fake and turns offline mode off for its block.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import itertools
import json
import mimetypes
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx2
from huggingface_hub import HfApi, set_client_factory
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import _http

MAX_BODY_BYTES = 64 * 1024 * 1024
SOCKET_TIMEOUT_S = 10.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_REPO = r"(?P<repo>[^/?#]+/[^/?#]+)"
_ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("DELETE", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "delete_branch"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/refs$"), "refs"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "model_info"),
    # Downloads: `hf_hub_download` HEADs then GETs this URL (`constants.HUGGINGFACE_CO_URL_TEMPLATE`).
    ("GET", re.compile(r"^/(?!api/)(?P<repo>[^/?#]+/[^/?#]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]
# Routes that read a repository: a private one answers 401 `RepoNotFound` without a token, like the Hub.
_READ_ROUTES = frozenset({"refs", "tree", "paths_info", "model_info", "resolve"})


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports for regular files (and `CommitOperationAdd` computes)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An error answer: HTTP status, message, and the Hub's `X-Error-Code`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body
        self.headers = headers or {}


@dataclass
class RawResponse:
    """A non-JSON answer (file contents) from a route handler."""

    status: int
    headers: dict[str, str]
    data: bytes


@dataclass
class Fault:
    """Answer `status` to the next `remaining` requests (`None`: all of them) that match `method` and `path`; or,
    with `hold`, keep each of them waiting until `hold` is set, then answer it normally."""

    status: int
    remaining: int | None
    method: str | None
    path: re.Pattern | None
    hits: int = 0
    hold: threading.Event | None = None

    def release(self) -> None:
        """Let the requests held by a [`FakeHub.hang_next`] fault go on (they are then handled normally)."""
        if self.hold is not None:
            self.hold.set()

    def matches(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or bool(self.path.search(path))


class FakeHub:
    """In-memory Hub: see the module docstring. Use [`start_fake_hub`] to create one."""

    def __init__(self, *, user: str = "fake-user", gitattributes: bool = False) -> None:
        self.user = user
        self.gitattributes = gitattributes
        self.store: dict[str, dict[str, dict[str, bytes]]] = {}
        self.heads: dict[str, dict[str, str]] = {}
        self.snapshots: dict[str, dict[str, dict[str, bytes]]] = {}  # {repo_id: {commit oid: tree}}
        self.private: dict[str, bool] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: deque[tuple[str, str]] = deque(maxlen=10_000)
        self.unhandled: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ helpers for tests

    def api(self, token: str = "hf_fake") -> HfApi:
        """An `HfApi` pointed at this server (no global `HF_ENDPOINT` change)."""
        return HfApi(endpoint=self.endpoint, token=token)

    def fail_next(
        self, n: int | None = 1, status: int = 500, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        """Answer `status` to the next `n` requests (`None`: until [`clear_faults`]) matching `method` and the regex
        `path` (searched in the raw request path, e.g. `"/commit/stage-02"`). Returns the [`Fault`] (see `.hits`)."""
        fault = Fault(status, n, method, re.compile(path) if path else None)
        with self._lock:
            self._faults.append(fault)
        return fault

    def hang_next(self, n: int | None = 1, *, method: str | None = None, path: str | None = None) -> Fault:
        """Hold the next `n` requests (`None`: until [`clear_faults`]) matching `method` and the regex `path`, after
        their body is read, until `fault.release()`; then handle them normally (a commit is applied). The client sees
        an upload that hangs (until its own timeout, see [`fake_hub_session`]). Returns the [`Fault`]."""
        fault = Fault(0, n, method, re.compile(path) if path else None, hold=threading.Event())
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def tree(self, repo_id: str, branch: str = "main") -> list[str]:
        """Sorted paths of a branch."""
        with self._lock:
            return sorted(self.store[repo_id][branch])

    def branches(self, repo_id: str) -> list[str]:
        with self._lock:
            return sorted(self.store[repo_id])

    def materialize(self, repo_id: str, branch: str, target_dir: str | Path, subfolder: str | None = None) -> Path:
        """Write the files of `branch` (or of its `subfolder`) to `target_dir`, paths relative to the subfolder."""
        target_dir = Path(target_dir)
        prefix = f"{subfolder.strip('/')}/" if subfolder else ""
        with self._lock:
            tree = self.store[repo_id][branch]
            files = {path[len(prefix) :]: data for path, data in tree.items() if path.startswith(prefix)}
        if not files:
            raise FileNotFoundError(f"Nothing in {repo_id}@{branch}/{subfolder or ''}")
        for path, data in files.items():
            destination = target_dir / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        return target_dir

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ request handling

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.requests.append((method, raw_path))
        url = urlsplit(raw_path)
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, url.path)), None)
            if fault is not None:
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
        if fault is not None and fault.hold is not None:
            fault.hold.wait()
        elif fault is not None:
            return _error_response(HubError(fault.status, f"Injected fault (HTTP {fault.status})"))
        lookup = "GET" if method == "HEAD" else method
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(url.path)
            if match and route_method == lookup:
                params = {key: unquote(value) if value else value for key, value in match.groupdict().items()}
                try:
                    if method == "POST" or method == "DELETE" or name == "whoami":
                        self._check_token(headers)
                    elif name in _READ_ROUTES:
                        self._check_read_access(params["repo"], headers)
                    answer = getattr(self, f"_{name}")(params, parse_qs(url.query), headers, body)
                except HubError as error:
                    return _error_response(error)
                if isinstance(answer, RawResponse):
                    return answer.status, answer.headers, answer.data
                status, payload = answer
                data = json.dumps(payload).encode()
                return status, {"Content-Type": "application/json"}, data
        self.unhandled.append((method, raw_path))
        return _error_response(HubError(404, f"fake hub: no route for {method} {url.path}"))

    def _check_token(self, headers: Any) -> None:
        authorization = headers.get("authorization") or ""
        if not authorization.startswith("Bearer hf_"):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _check_read_access(self, repo_id: str, headers: Any) -> None:
        with self._lock:
            private = self.private.get(repo_id, False)
        if private and not (headers.get("authorization") or "").startswith("Bearer hf_"):
            raise HubError(401, "Invalid username or password.", "RepoNotFound")

    def _repo(self, repo_id: str) -> dict[str, dict[str, bytes]]:
        if repo_id not in self.store:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.store[repo_id]

    def _branch(self, repo_id: str, revision: str | None) -> dict[str, bytes]:
        return self._revision(repo_id, revision)[1]

    def _revision(self, repo_id: str, revision: str | None) -> tuple[str, dict[str, bytes]]:
        """The commit oid and the tree of `revision`: a branch (`refs/heads/` optional) or a full commit oid."""
        repo = self._repo(repo_id)
        revision = (revision or "main").removeprefix("refs/heads/")
        heads = self.heads.setdefault(repo_id, {})
        if revision in repo:
            if revision not in heads:  # a branch a test put into `store` by hand
                heads[revision] = hashlib.sha1(f"{repo_id}\0{revision}".encode()).hexdigest()
            return heads[revision], repo[revision]
        for branch, head in heads.items():  # the head commit of a branch: its current tree
            if head == revision and branch in repo:
                return head, repo[branch]
        tree = self.snapshots.get(repo_id, {}).get(revision)  # an older commit
        if tree is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return revision, tree

    def _new_commit(self, repo_id: str, branch: str, summary: str) -> str:
        oid = hashlib.sha1(f"{repo_id}\0{branch}\0{summary}\0{next(self._counter)}".encode()).hexdigest()
        self.heads[repo_id][branch] = oid
        self.snapshots.setdefault(repo_id, {})[oid] = self.store[repo_id][branch]
        self.commits.append({"repo_id": repo_id, "branch": branch, "summary": summary, "oid": oid})
        return oid

    def _whoami(self, params, query, headers, body):
        return 200, {
            "type": "user",
            "name": self.user,
            "fullname": "Fake User",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        }

    def _create_repo(self, params, query, headers, body):
        payload = _json(body)
        name = payload.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise HubError(400, "Invalid repo name")
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "fake hub: only model repos are supported")
        repo_id = f"{payload.get('organization') or self.user}/{name}"
        url = f"{self.endpoint}/{repo_id}"
        with self._lock:
            if repo_id in self.store:
                raise HubError(409, "You already created this model repo", body={"url": url})
            self.store[repo_id] = {"main": {}}
            self.heads[repo_id] = {}
            self.private[repo_id] = payload.get("visibility") == "private"
            if self.gitattributes:
                self.store[repo_id]["main"][".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            self._new_commit(repo_id, "main", "initial commit")
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _validate_yaml(self, params, query, headers, body):
        content = _json(body).get("content") or ""
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
        if match:
            try:
                import yaml

                metadata = yaml.safe_load(match.group(1))
            except Exception as error:  # any YAML error is a validation error
                errors = {"errors": [{"message": str(error)}], "warnings": []}
                raise HubError(400, "Invalid YAML", body=errors) from error
            if metadata is not None and not isinstance(metadata, dict):
                raise HubError(400, "Invalid YAML", body={"errors": [{"message": "not a mapping"}], "warnings": []})
        return 200, {"errors": [], "warnings": []}

    def _create_branch(self, params, query, headers, body):
        repo_id, branch = params["repo"], params["rev"]
        start = _json(body).get("startingPoint") or "main"
        with self._lock:
            repo = self._repo(repo_id)
            if branch in repo:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
                raise HubError(400, f"Invalid reference for a branch: {branch}", "BadRequest")
            tree = dict(self._branch(repo_id, start))
            repo[branch] = tree
            self.heads[repo_id][branch] = self.heads[repo_id].get(start.removeprefix("refs/heads/"), start)
        return 200, {}

    def _delete_branch(self, params, query, headers, body):
        repo_id, branch = params["repo"], params["rev"]
        with self._lock:
            repo = self._repo(repo_id)
            if branch == "main" or branch not in repo:
                raise HubError(404 if branch not in repo else 403, f"Cannot delete branch {branch}")
            del repo[branch]
            del self.heads[repo_id][branch]
        return 200, {}

    def _refs(self, params, query, headers, body):
        repo_id = params["repo"]
        with self._lock:
            self._repo(repo_id)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in sorted(self.heads[repo_id].items())
            ]
        return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def _preupload(self, params, query, headers, body):
        repo_id, revision = params["repo"], params["rev"]
        files = _json(body).get("files")
        if not isinstance(files, list):
            raise HubError(400, "`files` must be a list")
        with self._lock:
            tree = self._branch(repo_id, revision)
            answer = []
            for item in files:
                path = item.get("path") if isinstance(item, dict) else None
                if not isinstance(path, str):
                    raise HubError(400, "every file needs a `path`")
                entry = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
                if path in tree:
                    entry["oid"] = git_blob_oid(tree[path])
                answer.append(entry)
        return 200, {"files": answer, "commitOid": self.heads[repo_id].get(revision)}

    def _commit(self, params, query, headers, body):
        repo_id, revision = params["repo"], params["rev"]
        if query.get("create_pr"):
            raise HubError(400, "fake hub: pull requests are not supported")
        lines = [json.loads(line) for line in body.split(b"\n") if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0].get("value") or {}
        deletions, additions = [], []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path")
            if not isinstance(path, str) or not _valid_path(path.rstrip("/")):
                raise HubError(400, f"Invalid path in commit: {path!r}")
            if key in ("deletedFile", "deletedFolder"):
                deletions.append((key, path))
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "fake hub: only base64 file contents are supported")
                additions.append((path, base64.b64decode(value.get("content", ""), validate=True)))
            else:
                raise HubError(400, f"fake hub: unsupported commit operation {key!r} (everything is 'regular')")
        with self._lock:
            branch = revision.removeprefix("refs/heads/")
            tree = dict(self._branch(repo_id, branch))
            if branch not in self.store[repo_id]:
                raise HubError(400, "Can only commit to a branch")
            parent = header.get("parentCommit")
            if parent and not self.heads[repo_id][branch].startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.", "PreconditionFailed")
            for key, path in deletions:
                if key == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"File not found: {path}", "EntryNotFound")
                    del tree[path]
                else:
                    prefix = path.rstrip("/") + "/"
                    doomed = [name for name in tree if name.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"Folder not found: {path}", "EntryNotFound")
                    for name in doomed:
                        del tree[name]
            for path, data in additions:
                if any(name.startswith(path + "/") for name in tree) or any(
                    parent in tree for parent in _parents(path)
                ):
                    raise HubError(400, f"A file and a folder cannot have the same name: {path}")
                tree[path] = data
            self.store[repo_id][branch] = tree
            oid = self._new_commit(repo_id, branch, header.get("summary") or "")
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _tree(self, params, query, headers, body):
        repo_id, revision, folder = params["repo"], params["rev"], (params.get("path") or "").strip("/")
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        with self._lock:
            tree = self._branch(repo_id, revision)
            prefix = f"{folder}/" if folder else ""
            names = [name for name in tree if name.startswith(prefix)]
            if folder and not names:
                raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
            entries: dict[str, dict[str, Any]] = {}
            for name in names:
                parts = name[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                for index in range(1, min(depth, len(parts) - 1) + 1):
                    directory = prefix + "/".join(parts[:index])
                    entries[directory] = _folder_entry(directory)
                if recursive or len(parts) == 1:
                    entries[name] = _file_entry(name, tree[name])
        return 200, [entries[name] for name in sorted(entries)]

    def _paths_info(self, params, query, headers, body):
        content_type = headers.get("content-type") or ""
        if "json" in content_type:
            paths = _json(body).get("paths") or []
        else:
            paths = parse_qs(body.decode("utf-8", "replace")).get("paths") or []
        with self._lock:
            tree = self._branch(params["repo"], params["rev"])
            answer = []
            for path in paths if isinstance(paths, list) else [paths]:
                if path in tree:
                    answer.append(_file_entry(path, tree[path]))
                elif any(name.startswith(path.rstrip("/") + "/") for name in tree):
                    answer.append(_folder_entry(path.rstrip("/")))
        return 200, answer

    def _model_info(self, params, query, headers, body):
        repo_id, revision = params["repo"], params.get("rev") or "main"
        with self._lock:
            sha, tree = self._revision(repo_id, revision)
            card = _card_metadata(tree.get("README.md"))
            info = {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": self.private.get(repo_id, False),
                "tags": [tag for tag in card.get("tags") or [] if isinstance(tag, str)],
                "siblings": [{"rfilename": name} for name in sorted(tree)],
            }
        for key in ("pipeline_tag", "library_name"):  # the Hub reads these from the model card's metadata
            if isinstance(card.get(key), str):
                info[key] = card[key]
        if card:
            info["cardData"] = card
        return 200, info

    def _resolve(self, params, query, headers, body):
        repo_id, revision, path = params["repo"], params["rev"], params["path"]
        with self._lock:
            oid, tree = self._revision(repo_id, revision)
            data = tree.get(path)
        if data is None:
            # The Hub names the commit even when the file is missing: huggingface_hub caches the absence under it.
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": oid})
        answer_headers = {
            "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
            "ETag": f'"{git_blob_oid(data)}"',  # a regular (non-LFS) file: its git blob id, as on the Hub
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
        }
        byte_range = _parse_range(headers.get("range"), len(data))
        if byte_range is None:
            return RawResponse(200, answer_headers, data)
        if byte_range == "unsatisfiable":
            answer_headers["Content-Range"] = f"bytes */{len(data)}"
            return RawResponse(416, answer_headers, b"")
        start, end = byte_range
        answer_headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return RawResponse(206, answer_headers, data[start : end + 1])


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise HubError(400, f"Invalid JSON body: {error}") from error
    if not isinstance(payload, dict):
        raise HubError(400, "The JSON body must be an object")
    return payload


def _card_metadata(readme: bytes | None) -> dict[str, Any]:
    """The YAML front matter of a model card (empty when absent or invalid)."""
    if not readme:
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.decode("utf-8", "replace"), flags=re.DOTALL)
    if not match:
        return {}
    try:
        import yaml

        metadata = yaml.safe_load(match.group(1))
    except Exception:  # an invalid card has no metadata
        return {}
    # JSON-safe, as the Hub serves it (YAML dates become strings).
    return json.loads(json.dumps(metadata, default=str)) if isinstance(metadata, dict) else {}


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """`(start, end)` (inclusive) of a single `bytes=` range, `"unsatisfiable"`, or `None` to send everything."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not match or match.group(1) == match.group(2) == "":
        return None
    if match.group(1) == "":  # a suffix: the last N bytes
        length = int(match.group(2))
        return (max(size - length, 0), size - 1) if length and size else "unsatisfiable"
    start = int(match.group(1))
    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    return (start, end) if start <= end else "unsatisfiable"


def _valid_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:index]) for index in range(1, len(parts))]


def _file_entry(path: str, data: bytes) -> dict[str, Any]:
    return {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}


def _folder_entry(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def _error_response(error: HubError) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Message": error.message, **error.headers}
    if error.code:
        headers["X-Error-Code"] = error.code
    return error.status, headers, json.dumps({"error": error.message, **(error.body or {})}).encode()


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_S  # socket timeout: a stalled client never blocks a thread for long
        server_version = "FakeHub/1.0"

        def _serve(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self._reply(*_error_response(HubError(411, "Content-Length required")), close=True)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._reply(*_error_response(HubError(413, "Request body too large or malformed")), close=True)
                return
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, data = hub.handle(self.command, self.path, self.headers, body)
            except Exception as error:  # a bug in the fake must surface as a 500, not as a hang
                status, headers, data = _error_response(HubError(500, f"fake hub crashed: {error!r}"))
            self._reply(status, headers, data, head=self.command == "HEAD")

        def _reply(
            self, status: int, headers: dict[str, str], data: bytes, close: bool = False, head: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value.encode("latin-1", "replace").decode("latin-1"))
            self.send_header("Content-Length", str(len(data)))  # a HEAD answer announces the size it would send
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if data and not head:
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are in `hub.requests`
            pass

    return Handler


def start_fake_hub(**kwargs: Any) -> FakeHub:
    """Start a [`FakeHub`] on 127.0.0.1 (a free port) in a daemon thread. Stop it with `.stop()` or a `with` block.

    Args:
        user (`str`, *optional*, defaults to `"fake-user"`): the namespace of repos created without one.
        gitattributes (`bool`, *optional*, defaults to `False`): whether new repos start with a `.gitattributes`
            on `main`, as on the real Hub.
    """
    return FakeHub(**kwargs)


def _loopback_only(request: httpx2.Request) -> None:
    if request.url.host not in LOOPBACK_HOSTS:
        raise OfflineModeIsEnabled(f"fake_hub_session: refusing to reach {request.url} (loopback only)")


def loopback_client(timeout: float = SOCKET_TIMEOUT_S) -> httpx2.Client:
    """An `httpx2.Client` for huggingface_hub that reaches loopback hosts only, ignores proxy variables, and times
    out after `timeout` seconds."""
    return httpx2.Client(
        event_hooks={"request": [_loopback_only]},
        follow_redirects=True,
        timeout=httpx2.Timeout(timeout),
        trust_env=False,
    )


@contextlib.contextmanager
def fake_hub_session(timeout: float = SOCKET_TIMEOUT_S) -> Iterator[None]:
    """Route huggingface_hub's shared HTTP client through [`loopback_client`] (with its `timeout`, in seconds) for the
    duration of the block; a test of a hanging upload gives a `timeout` longer than the test.

    huggingface_hub's default client raises `OfflineModeIsEnabled` for every request while `HF_HUB_OFFLINE=1`; this
    one does not check offline mode but refuses any host other than 127.0.0.1/localhost, so nothing can reach
    huggingface.co. `HF_HUB_OFFLINE` itself stays set (it still disables, e.g., the agent-registry fetch).
    """
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    set_client_factory(functools.partial(loopback_client, timeout))
    try:
        yield
    finally:
        set_client_factory(previous)


@contextlib.contextmanager
def fake_hub_downloads(fake: FakeHub | str, cache_dir: str | os.PathLike) -> Iterator[Path]:
    """Point huggingface_hub and transformers at `fake` (a [`FakeHub`] or its endpoint URL) for downloads, with
    `cache_dir` as the Hub cache, for the duration of the block; everything is restored afterwards. Yields the cache.

    Inside the block, `hf_hub_download`, `snapshot_download`, `HfApi()` and transformers' `from_pretrained`,
    `pipeline`, `cached_file` reach the fake by repo id, as they would the Hub. What it changes:

    - `huggingface_hub.constants`: `ENDPOINT`, `HUGGINGFACE_CO_URL_TEMPLATE` (the `resolve` URL, formatted at every
      download), `HF_URL_HOSTS` and `utils._http._HUB_ORIGINS` (hosts trusted across redirects), `HF_HUB_OFFLINE`
      (off: `is_offline_mode()` reads it, and transformers turns every load into `local_files_only=True` while it is
      on) and `HF_HUB_CACHE` (also copied into `utils._cache_manager`);
    - `huggingface_hub.hf_api.api` (behind `huggingface_hub.model_info`, `list_repo_files`, ...): its `endpoint`;
    - `transformers.utils.hub._hf_api`: the shared `HfApi` that transformers creates once, with the endpoint of the
      moment, is dropped so that one is made for the fake, and the previous one is put back afterwards;
    - `huggingface_hub.utils._detect_agent._registry`: set to the empty registry when unset, since the first request
      with offline mode off would otherwise fetch `/api/agent-harnesses` and cache it under `HF_HOME`;
    - environment: `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE=0`, no `TRANSFORMERS_OFFLINE`, and
      `DISABLE_SAFETENSORS_CONVERSION=1` (a repo without safetensors would otherwise ask a Space to convert it);
    - the HTTP client: [`fake_hub_session`] (loopback only), so turning offline mode off cannot reach the internet.

    Not patched: an `HfFileSystem` or `HfApi` created before the block keeps the endpoint it was created with.
    """
    from huggingface_hub import constants
    from huggingface_hub import hf_api as hf_api_module
    from huggingface_hub.utils import _cache_manager, _detect_agent
    from transformers.utils import hub as transformers_hub

    endpoint = (fake.endpoint if isinstance(fake, FakeHub) else str(fake)).rstrip("/")
    host = urlsplit(endpoint).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"fake_hub_downloads: {endpoint} is not a loopback address")
    cache = Path(cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    patches: list[tuple[Any, str, Any]] = [
        (constants, "ENDPOINT", endpoint),
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {host}),
        (constants, "HF_HUB_OFFLINE", False),
        (constants, "HF_HUB_CACHE", str(cache)),
        (_cache_manager, "HF_HUB_CACHE", str(cache)),
        (hf_api_module.api, "endpoint", endpoint),
        (transformers_hub, "_hf_api", None),
    ]
    if hasattr(_http, "_HUB_ORIGINS"):  # origins whose redirects keep the token (huggingface_hub >= 2.3)
        patches.append((_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)}))
    if _detect_agent._registry is None:
        patches.append((_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY))
    environment = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": None,
        "DISABLE_SAFETENSORS_CONVERSION": "1",
    }
    saved_attributes = [(target, name, getattr(target, name)) for target, name, _ in patches]
    saved_environment = {name: os.environ.get(name) for name in environment}
    try:
        with fake_hub_session():
            for target, name, value in patches:
                setattr(target, name, value)
            for name, value in environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            yield cache
    finally:
        for target, name, value in reversed(saved_attributes):
            setattr(target, name, value)
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
