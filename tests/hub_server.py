"""A small Hugging Face Hub-compatible HTTP server for end-to-end tests, bound to 127.0.0.1.

Why it exists: the push/pull round trip of ternary models must be tested with the real clients
(``huggingface_hub`` 2.x, transformers, sentence-transformers) on a machine without internet. This
server speaks the subset of the Hub protocol those clients use, keeps repos in a temporary folder
(content-addressed blobs on disk, per-commit file maps in memory and mirrored to JSON, no git), and can
inject failures so tests can check what a user sees when an upload breaks.

What it implements (all under ``http://127.0.0.1:PORT``):

* ``POST /api/repos/create`` (409 with ``url`` when the repo exists), ``POST /api/repos/delete``,
  ``GET /api/whoami-v2``, ``POST /api/validate-yaml``.
* ``GET /api/{models,datasets,spaces}/NS/NAME[/revision/REV]`` (repo info with ``sha``, ``siblings``,
  ``cardData``), ``/tree/REV[/PATH]``, ``POST /paths-info/REV``, ``/refs``, ``/commits/REV``,
  ``POST|DELETE /branch/NAME``.
* Uploads: ``POST /preupload/REV`` (``uploadMode`` and the remote ``oid`` of each file, so an unchanged
  file is skipped client-side), ``POST /commit/REV`` (NDJSON: ``header``, ``file``, ``lfsFile``,
  ``deletedFile``, ``deletedFolder``), and the git-LFS batch API ``POST /NS/NAME.git/info/lfs/objects/batch``
  with signed single-part ``PUT`` upload URLs and a ``verify`` action.
* Downloads: ``HEAD|GET /NS/NAME/resolve/REV/PATH`` with ``X-Repo-Commit``, ``ETag`` (git blob sha1 for
  regular files; ``X-Linked-Etag`` / ``X-Linked-Size`` with the sha256 for LFS files), ``Content-Length``,
  ``Range`` support, and ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Xet: ``huggingface_hub`` 2.x uploads LFS files through Xet storage whenever ``hf_xet`` is installed. This
server has no Xet CAS, so with ``upload_mode="regular"`` it answers ``uploadMode: regular`` for every file
(the client then sends contents inline in the commit); with ``upload_mode="auto"`` binary or large files
are ``lfs`` and the client must run with ``HF_HUB_DISABLE_XET=1`` (LFS batch + PUT).

Auth: with ``token`` set, writes need ``Authorization: Bearer <token>``; reads of private repos too. A
missing or wrong token gets a 401 with a JSON ``error`` and an ``X-Error-Message`` header, which
``huggingface_hub`` turns into an ``HfHubHTTPError`` naming the cause.

Failure injection: :meth:`HubState.inject_failure` (or ``POST /_control/failures`` with the same fields
as JSON) makes matching requests answer 500 (with ``Retry-After: 0`` so client retries are quick), drop
the connection after reading the request, or process the request and lose its answer.
``GET /_control/log`` returns the request log and ``POST /_control/reset-failures`` clears the rules.
Request counts and sizes are bounded.

Usage::

    with HubServer(token="hf_test") as server:
        os.environ["HF_ENDPOINT"] = server.url  # in the client process, before importing huggingface_hub
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["HubServer", "HubState", "FailureRule", "git_blob_sha1"]

#: Paths that the real Hub stores in LFS by default (a subset of its default ``.gitattributes``).
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.onnx",
    "*.h5",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.pkl",
    "*.model",
    "*.zip",
    "*.tar.gz",
    "*.ot",
    "*.tflite",
    "*.gguf",
)
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
REGULAR_MAX_SIZE = 10 * 1024 * 1024  # the Hub sends files above 10 MB to LFS
MAX_REQUESTS = 20_000  # a test run that needs more is broken: answer 503 instead of looping forever
MAX_BODY = 2 * 1024**3
ALLOWED_RELATIONS = ("adapter", "merge", "quantized", "finetune")
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REV_SEGMENT = r"[^/]+"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub calls ``oid`` / ``ETag`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of one commit. ``sha256`` is always known; ``lfs`` says how it is served."""

    size: int
    sha256: str
    git_oid: str  # blob sha1 of the content (regular) or of the LFS pointer (lfs)
    lfs: bool

    def tree_json(self, path: str) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "path": path, "size": self.size, "oid": self.git_oid}
        if self.lfs:
            pointer_size = len(_lfs_pointer(self.sha256, self.size))
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": pointer_size}
        return item


@dataclasses.dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    message: str
    date: str
    author: str


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name, a full commit id or an unambiguous prefix of at least 7 characters."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [oid for oid in self.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return self.commits[matches[0]]
        return None

    def history(self, head: Commit) -> list[Commit]:
        out = [head]
        while out[-1].parent is not None:
            out.append(self.commits[out[-1].parent])
        return out


@dataclasses.dataclass
class FailureRule:
    """Fail requests whose method matches and whose path matches ``path_regex`` (``re.search``).

    The first ``skip`` matching requests pass, the next ``times`` fail with ``action``:

    * ``"500"`` / ``"503"``: an HTTP error with a JSON body and ``Retry-After: 0`` (client retries are quick);
    * ``"drop"``: the request is read, then the connection is closed without an answer;
    * ``"drop_after"``: the request is processed (e.g. a commit is applied) but its answer is lost.
    """

    path_regex: str
    method: str = "*"
    action: str = "500"
    skip: int = 0
    times: int = 1
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.action not in ("500", "503", "drop", "drop_after"):
            raise ValueError(f"action must be '500', '503', 'drop' or 'drop_after', got {self.action!r}")

    def check(self, method: str, path: str) -> str | None:
        if self.method not in ("*", method) or not re.search(self.path_regex, path):
            return None
        self.seen += 1
        if self.seen <= self.skip or self.fired >= self.times:
            return None
        self.fired += 1
        return self.action


class HubError(Exception):
    """An error answer: status, message, optional ``X-Error-Code`` and extra JSON fields."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubState:
    """Everything the server knows. Methods are thread-safe; tests may call them directly."""

    def __init__(
        self,
        root: str,
        *,
        token: str | None = None,
        user: str = "tester",
        upload_mode: str = "auto",
        regular_max_size: int = REGULAR_MAX_SIZE,
    ) -> None:
        if upload_mode not in ("auto", "regular"):
            raise ValueError(f"upload_mode must be 'auto' or 'regular', got {upload_mode!r}")
        self.root = root
        self.objects_dir = os.path.join(root, "objects")
        os.makedirs(self.objects_dir, exist_ok=True)
        self.token = token
        self.user = user
        self.upload_mode = upload_mode
        self.regular_max_size = regular_max_size
        self.secret = secrets.token_bytes(16)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.failures: list[FailureRule] = []
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=5000)
        self.request_count = 0
        self.lock = threading.RLock()
        self.base_url = ""  # set by HubServer once the port is known

    # ----------------------------------------------------------------- control

    def inject_failure(
        self, path_regex: str, *, method: str = "*", action: str = "500", skip: int = 0, times: int = 1
    ) -> FailureRule:
        rule = FailureRule(path_regex=path_regex, method=method, action=action, skip=skip, times=times)
        with self.lock:
            self.failures.append(rule)
        return rule

    def clear_failures(self) -> None:
        with self.lock:
            self.failures.clear()

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[dict[str, Any]]:
        """The logged requests (method, path, status), optionally filtered."""
        with self.lock:
            items = list(self.log)
        return [
            r
            for r in items
            if (method is None or r["method"] == method) and (path_regex is None or re.search(path_regex, r["path"]))
        ]

    def _match_failure(self, method: str, path: str) -> str | None:
        with self.lock:
            for rule in self.failures:
                action = rule.check(method, path)
                if action is not None:
                    return action
        return None

    # ----------------------------------------------------------------- auth

    def auth_user(self, headers: Any, *, write: bool) -> str | None:
        """The user behind the request; raises a 401 when writing without a valid token."""
        value = headers.get("authorization") or ""
        given = value[7:].strip() if value.lower().startswith("bearer ") else None
        if self.token is None:
            return self.user
        if given is not None and given != self.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        if given is None and write:
            raise HubError(
                401,
                "You must be authenticated to write to this Hub: pass a token (token=..., --token, HF_TOKEN, "
                "or `hf auth login`).",
            )
        return self.user if given is not None else None

    # ----------------------------------------------------------------- repos

    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            # Like the Hub: a private repo looks missing to anonymous users.
            raise HubError(
                404 if user is not None or self.token is None else 401,
                "Repository not found",
                code="RepoNotFound",
            )
        return repo

    def get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", url=self.repo_url(repo_type, repo_id))
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            data = DEFAULT_GITATTRIBUTES.encode()
            entry = self._store(data, lfs=False)
            self._new_commit(repo, "main", {".gitattributes": entry}, "initial commit", "", parent=None)
            self.repos[(repo_type, repo_id)] = repo
            self._persist(repo)
            return repo

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.base_url}/{prefix}{repo_id}"

    def _store(self, data: bytes, *, lfs: bool, sha256: str | None = None) -> FileEntry:
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        path = os.path.join(self.objects_dir, sha256)
        if not os.path.exists(path):
            tmp = f"{path}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        git_oid = git_blob_sha1(_lfs_pointer(sha256, len(data)) if lfs else data)
        return FileEntry(size=len(data), sha256=sha256, git_oid=git_oid, lfs=lfs)

    def object_path(self, sha256: str) -> str:
        return os.path.join(self.objects_dir, sha256)

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.object_path(sha256)
        return os.path.exists(path) and (size is None or os.path.getsize(path) == size)

    def _new_commit(
        self, repo: Repo, branch: str, files: dict[str, FileEntry], title: str, message: str, parent: str | None
    ) -> Commit:
        seed = json.dumps(
            [
                parent,
                sorted((p, e.git_oid) for p, e in files.items()),
                title,
                message,
                _now(),
                len(repo.commits),
                secrets.token_hex(4),
            ]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(
            oid=oid, parent=parent, files=dict(files), title=title, message=message, date=_now(), author=self.user
        )
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def _persist(self, repo: Repo) -> None:
        """Mirror the repo's refs and file maps to JSON (for inspection when a test fails)."""
        path = os.path.join(self.root, "repos", repo.repo_type, repo.repo_id + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = {
            "private": repo.private,
            "branches": repo.branches,
            "commits": {
                oid: {
                    "parent": c.parent,
                    "title": c.title,
                    "files": {p: dataclasses.asdict(e) for p, e in c.files.items()},
                }
                for oid, c in repo.commits.items()
            },
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

    def read_file(self, entry: FileEntry) -> bytes:
        with open(self.object_path(entry.sha256), "rb") as f:
            return f.read()

    def upload_mode_for(self, path: str, size: int, sample: bytes) -> str:
        if self.upload_mode == "regular" or size == 0:
            return "regular"
        name = path.rsplit("/", 1)[-1]
        if size > self.regular_max_size or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS):
            return "lfs"
        return "regular"

    def commit(self, repo: Repo, branch: str, lines: list[dict[str, Any]]) -> Commit:
        """Apply NDJSON commit operations to ``branch``; raises ``HubError`` on bad input."""
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0].get("value") or {}
        title = str(header.get("summary") or "").strip()
        if not title:
            raise HubError(400, "Commit summary must not be empty")
        with self.lock:
            if branch not in repo.branches:
                if repo.resolve(branch) is not None:
                    raise HubError(400, f"Cannot commit to {branch}: it is a commit id, not a branch")
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent_commit = header.get("parentCommit")
            if parent_commit and not head.oid.startswith(parent_commit):
                raise HubError(412, f"A commit has happened since {parent_commit}; the branch head is {head.oid}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = str(value.get("path", "")).lstrip("/")
                if not path or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in commit: {path!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    data = base64.b64decode(value.get("content", ""))
                    files[path] = self._store(data, lfs=False)
                elif key == "lfsFile":
                    oid = value.get("oid", "")
                    if value.get("algo", "sha256") != "sha256" or not self.has_object(oid):
                        raise HubError(400, f"LFS object {oid} for {path} was not uploaded (run the LFS batch first)")
                    size = os.path.getsize(self.object_path(oid))
                    files[path] = FileEntry(
                        size=size, sha256=oid, git_oid=git_blob_sha1(_lfs_pointer(oid, size)), lfs=True
                    )
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"File not found: {path}", code="EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"Folder not found: {path}", code="EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            commit = self._new_commit(repo, branch, files, title, str(header.get("description") or ""), head.oid)
            self._persist(repo)
            return commit


def _parse_front_matter(content: str) -> tuple[dict[str, Any] | None, list[str]]:
    """YAML metadata of a README and the list of errors (empty when valid)."""
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", content, flags=re.S)
    if not match:
        return None, []
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return None, [f"Invalid YAML in README.md metadata: {exc}"]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return None, ["README.md metadata must be a YAML mapping"]
    errors = []
    for key in ("license", "library_name", "pipeline_tag", "base_model_relation"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    for key in ("tags", "datasets", "language"):
        if key in data and not (
            isinstance(data[key], str) or (isinstance(data[key], list) and all(isinstance(t, str) for t in data[key]))
        ):
            errors.append(f'"{key}" must be a string or a list of strings')
    base = data.get("base_model")
    if base is not None:
        bases = [base] if isinstance(base, str) else base
        if not isinstance(bases, list) or not all(
            isinstance(b, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", b) for b in bases
        ):
            errors.append('"base_model" must be a Hub model id ("owner/name") or a list of them')
    if "base_model_relation" in data and data["base_model_relation"] not in ALLOWED_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(ALLOWED_RELATIONS)}')
    if "base_model_relation" in data and base is None:
        errors.append('"base_model_relation" needs "base_model"')
    return data, errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the state keeps its own bounded log

    # ----------------------------------------------------------------- plumbing

    @property
    def state(self) -> HubState:
        return self.server.state

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise HubError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        head_only: bool = False,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("X-Request-Id", self._request_id)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, exc: HubError, head_only: bool = False) -> None:
        headers = {"X-Error-Message": exc.message}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="hub-test-server"'
        if exc.status in (404,) and getattr(self, "_repo_commit", None):
            headers["X-Repo-Commit"] = self._repo_commit
        self._send(exc.status, json.dumps({"error": exc.message, **exc.extra}).encode(), headers, head_only=head_only)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._status = 0

    def _dispatch(self, method: str) -> None:
        self._request_id = secrets.token_hex(8)
        self._status = 0
        self._repo_commit: str | None = None
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        state = self.state
        with state.lock:
            state.request_count += 1
            over_limit = state.request_count > MAX_REQUESTS
        try:
            body = b"" if method in ("GET", "HEAD") else self._read_body()
        except HubError as exc:
            self.close_connection = True
            self._error(exc)
            return
        try:
            if over_limit:
                raise HubError(503, f"Test server request limit ({MAX_REQUESTS}) reached")
            action = None if path.startswith("/_control/") else state._match_failure(method, path)
            if action == "drop":
                self._drop()
            elif action == "drop_after":
                answer, self.wfile = self.wfile, io.BytesIO()  # process the request, discard its answer
                try:
                    self._route(method, path, query, body)
                finally:
                    self.wfile = answer
                self._drop()
            elif action in ("500", "503"):
                self._send(
                    int(action),
                    json.dumps({"error": f"Injected failure ({action}) on {method} {path}"}).encode(),
                    {"Retry-After": "0", "X-Error-Message": "Injected failure"},
                )
            else:
                self._route(method, path, query, body)
        except HubError as exc:
            self._error(exc, head_only=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a server bug: answer 500 with the reason instead of hanging the client
            self._send(500, json.dumps({"error": f"test server error: {type(exc).__name__}: {exc}"}).encode())
        finally:
            with state.lock:
                state.log.append({"method": method, "path": path, "status": self._status})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # ----------------------------------------------------------------- routing

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        state = self.state
        if path.startswith("/_control/"):
            return self._control(method, path, body)
        if path == "/api/whoami-v2" and method == "GET":
            user = state.auth_user(self.headers, write=True)
            return self._json(
                200,
                {
                    "type": "user",
                    "name": user,
                    "fullname": user,
                    "orgs": [],
                    "auth": {"accessToken": {"displayName": "test", "role": "write"}},
                },
            )
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(body)
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(body)
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(body)
        m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path)
        if m:
            return self._repo_api(method, REPO_TYPES[m.group(1)], m.group(2), m.group(3) or "", query, body)
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/(batch|verify)", path)
        if m and method == "POST":
            repo_type = REPO_TYPES[m.group(1)] if m.group(1) else "model"
            return self._lfs(m.group(3), repo_type, m.group(2), body)
        m = re.fullmatch(r"/_lfs/([0-9a-f]{64})", path)
        if m and method == "PUT":
            return self._lfs_put(m.group(1), query, body)
        m = re.fullmatch(rf"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/({_REV_SEGMENT})/(.+)", path)
        if m and method in ("GET", "HEAD"):
            repo_type = REPO_TYPES[m.group(1)] if m.group(1) else "model"
            return self._resolve(method, repo_type, m.group(2), unquote(m.group(3)), unquote(m.group(4)))
        raise HubError(404, f"Test server: no route for {method} {path}")

    def _control(self, method: str, path: str, body: bytes) -> None:
        state = self.state
        if path == "/_control/failures" and method == "POST":
            spec = json.loads(body or b"{}")
            try:
                rule = state.inject_failure(**spec)
            except (TypeError, ValueError) as exc:
                raise HubError(400, str(exc)) from exc
            return self._json(200, dataclasses.asdict(rule))
        if path == "/_control/reset-failures" and method == "POST":
            state.clear_failures()
            return self._json(200, {})
        if path == "/_control/log" and method == "GET":
            return self._json(200, state.requests())
        raise HubError(404, f"Unknown control endpoint {method} {path}")

    # ----------------------------------------------------------------- repo management

    def _create_repo(self, body: bytes) -> None:
        state = self.state
        user = state.auth_user(self.headers, write=True)
        payload = json.loads(body or b"{}")
        name = payload.get("name")
        namespace = payload.get("organization") or user
        if not name or not re.fullmatch(r"[\w.-]+", name) or not re.fullmatch(r"[\w.-]+", namespace or ""):
            raise HubError(400, f"Invalid repo name {name!r}: use letters, digits, '-', '_' and '.'")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES.values():
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo_id = f"{namespace}/{name}"
        state.create_repo(repo_type, repo_id, private)
        return self._json(200, {"url": state.repo_url(repo_type, repo_id), "name": repo_id, "id": repo_id})

    def _delete_repo(self, body: bytes) -> None:
        state = self.state
        state.auth_user(self.headers, write=True)
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or state.user}/{payload.get('name')}"
        with state.lock:
            if state.repos.pop((payload.get("type") or "model", repo_id), None) is None:
                raise HubError(404, "Repository not found", code="RepoNotFound")
        return self._json(200, {})

    def _validate_yaml(self, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        data, errors = _parse_front_matter(str(payload.get("content", "")))
        if errors:
            return self._json(400, {"errors": [{"message": e} for e in errors], "warnings": []})
        warnings = [] if data else [{"message": "Empty or missing yaml metadata in repo card"}]
        return self._json(200, {"errors": [], "warnings": warnings})

    def _repo_api(
        self, method: str, repo_type: str, repo_id: str, rest: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        state = self.state
        write = method in ("POST", "PUT", "DELETE") and not rest.startswith("paths-info")
        user = state.auth_user(self.headers, write=write)
        repo = state.get_repo(repo_type, repo_id, user)
        parts = rest.split("/", 1) if rest else [""]
        kind, arg = parts[0], unquote(parts[1]) if len(parts) > 1 else ""
        if kind == "" and method == "GET":
            return self._json(200, self._info(repo, self._commit(repo, "main"), query))
        if kind == "revision" and method == "GET":
            return self._json(200, self._info(repo, self._commit(repo, arg), query))
        if kind == "tree" and method == "GET":
            rev, _, sub = parts[1].partition("/")
            return self._tree(repo, self._commit(repo, unquote(rev)), unquote(sub).strip("/"), query)
        if kind == "paths-info" and method == "POST":
            return self._paths_info(repo, self._commit(repo, arg), body)
        if kind == "refs" and method == "GET":
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()]
            return self._json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})
        if kind == "commits" and method == "GET":
            head = self._commit(repo, arg or "main")
            return self._json(
                200,
                [
                    {
                        "id": c.oid,
                        "title": c.title,
                        "message": c.message,
                        "date": c.date,
                        "authors": [{"user": c.author, "avatar": ""}],
                    }
                    for c in repo.history(head)
                ],
            )
        if kind == "branch" and method == "POST":
            return self._create_branch(repo, arg, body)
        if kind == "branch" and method == "DELETE":
            with state.lock:
                if arg == "main" or repo.branches.pop(arg, None) is None:
                    raise HubError(404 if arg != "main" else 400, f"Cannot delete branch {arg!r}")
                state._persist(repo)
            return self._json(200, {})
        if kind.startswith("xet-") and kind.endswith("-token"):
            raise HubError(
                501,
                "This test server has no Xet storage: start it with upload_mode='regular' (every file inline in "
                "the commit) or run the client with HF_HUB_DISABLE_XET=1 (LFS batch + PUT).",
            )
        if kind == "preupload" and method == "POST":
            return self._preupload(repo, arg, body, query)
        if kind == "commit" and method == "POST":
            if query.get("create_pr"):
                raise HubError(400, "This test server does not implement pull requests")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            commit = state.commit(repo, arg, lines)
            return self._json(
                200,
                {
                    "success": True,
                    "commitOid": commit.oid,
                    "pullRequestUrl": None,
                    "commitUrl": f"{state.repo_url(repo.repo_type, repo.repo_id)}/commit/{commit.oid}",
                },
            )
        raise HubError(404, f"Test server: no route for {method} /api/{repo_type}s/{repo_id}/{rest}")

    def _commit(self, repo: Repo, revision: str) -> Commit:
        return self.state.get_commit(repo, revision)

    def _create_branch(self, repo: Repo, branch: str, body: bytes) -> None:
        state = self.state
        payload = json.loads(body or b"{}")
        if not branch or not re.fullmatch(r"[\w.\-/]+", branch) or branch.startswith("refs"):
            raise HubError(400, f"Invalid branch name {branch!r}")
        with state.lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            start = self._commit(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
            state._persist(repo)
        return self._json(200, {})

    def _info(self, repo: Repo, commit: Commit, query: dict[str, list[str]]) -> dict[str, Any]:
        state = self.state
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "pointerSize": len(_lfs_pointer(entry.sha256, entry.size)),
                    }
            siblings.append(sibling)
        card: dict[str, Any] | None = None
        if "README.md" in commit.files:
            card, _ = _parse_front_matter(state.read_file(commit.files["README.md"]).decode("utf-8", "replace"))
        config = None
        if "config.json" in commit.files:
            try:
                raw = json.loads(state.read_file(commit.files["config.json"]))
                config = {
                    k: raw[k] for k in ("architectures", "model_type", "auto_map", "quantization_config") if k in raw
                }
            except ValueError:
                config = None
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if card:
            info["cardData"] = card
            if isinstance(card.get("library_name"), str):
                info["library_name"] = card["library_name"]
        if config is not None:
            info["config"] = config
        return info

    def _tree(self, repo: Repo, commit: Commit, sub: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = f"{sub}/" if sub else ""
        if sub and sub in commit.files:
            raise HubError(400, f"{sub} is a file, not a folder")
        items: dict[str, dict[str, Any]] = {}
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            parts = rel.split("/")
            # Every folder on the way is listed (only the direct children unless recursive).
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(parts[:depth])
                items.setdefault(
                    folder, {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
                )
            if recursive or len(parts) == 1:
                item = entry.tree_json(path)
                if expand:
                    item["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
                items[path] = item
        if sub and not items:
            self._repo_commit = commit.oid
            raise HubError(404, f"Folder {sub} not found", code="EntryNotFound")
        return self._json(200, list(items.values()))

    def _paths_info(self, repo: Repo, commit: Commit, body: bytes) -> None:
        content_type = self.headers.get("content-type", "")
        if "json" in content_type:
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() == "true"
        out = []
        folders = {p.rsplit("/", i)[0] for p in commit.files for i in range(1, p.count("/") + 1)}
        for path in paths if isinstance(paths, list) else [paths]:
            path = path.strip("/")
            if path in commit.files:
                item = commit.files[path].tree_json(path)
                if expand:
                    item["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
                out.append(item)
            elif path in folders:
                out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
        return self._json(200, out)

    # ----------------------------------------------------------------- uploads

    def _preupload(self, repo: Repo, revision: str, body: bytes, query: dict[str, list[str]]) -> None:
        state = self.state
        commit = self._commit(repo, revision)
        payload = json.loads(body or b"{}")
        files = []
        for item in payload.get("files") or []:
            path = str(item.get("path", ""))
            size = int(item.get("size") or 0)
            sample = base64.b64decode(item.get("sample") or "")
            mode = state.upload_mode_for(path, size, sample)
            existing = commit.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_oid
                if existing.lfs != (mode == "lfs"):
                    mode = "lfs" if existing.lfs else mode  # a path keeps its storage, like with .gitattributes
            files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return self._json(200, {"files": files, "commitOid": commit.oid})

    def _lfs(self, op: str, repo_type: str, repo_id: str, body: bytes) -> None:
        state = self.state
        user = state.auth_user(self.headers, write=True)
        repo = state.get_repo(repo_type, repo_id, user)
        payload = json.loads(body or b"{}")
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        if op == "verify":
            oid, size = payload.get("oid", ""), payload.get("size")
            if not state.has_object(oid, size):
                raise HubError(404, f"LFS object {oid} of size {size} is not stored")
            return self._send(200, b"{}", headers, content_type="application/vnd.git-lfs+json")
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS 'upload' operation is implemented (downloads use /resolve)")
        ref = (payload.get("ref") or {}).get("name")
        if ref and ref not in repo.branches:
            raise HubError(404, f"Invalid rev id: {ref}", code="RevisionNotFound")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = str(obj.get("oid", "")), int(obj.get("size") or 0)
            out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                out["error"] = {"code": 422, "message": f"Invalid oid {oid!r}"}
            elif not state.has_object(oid, size):
                sig = hmac.new(state.secret, f"{oid}:{size}".encode(), "sha256").hexdigest()
                out["actions"] = {
                    "upload": {"href": f"{state.base_url}/_lfs/{oid}?size={size}&sig={sig}", "header": {}},
                    "verify": {
                        "href": f"{state.repo_url(repo_type, repo_id)}.git/info/lfs/objects/verify",
                        "header": {},
                    },
                }
            objects.append(out)
        data = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        return self._send(200, data, headers, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str, query: dict[str, list[str]], body: bytes) -> None:
        state = self.state
        size = int(query.get("size", ["-1"])[0])
        sig = query.get("sig", [""])[0]
        expected = hmac.new(state.secret, f"{oid}:{size}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(sig, expected):
            raise HubError(403, "Invalid or missing upload signature")
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
        state._store(body, lfs=True, sha256=oid)
        return self._send(200, b"", {"ETag": f'"{oid[:32]}"'})

    # ----------------------------------------------------------------- downloads

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        state = self.state
        user = state.auth_user(self.headers, write=False)
        repo = state.get_repo(repo_type, repo_id, user)
        commit = self._commit(repo, revision)
        self._repo_commit = commit.oid
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update(
                {"ETag": f'"{entry.sha256}"', "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
            )
        else:
            headers["ETag"] = f'"{entry.git_oid}"'
        start, end = 0, entry.size - 1
        status = 200
        range_header = self.headers.get("range")
        if range_header and method == "GET" and entry.size:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, f"Unsupported range {range_header!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), entry.size - 1) if m.group(2) else entry.size - 1
            else:
                start = max(entry.size - int(m.group(2)), 0)
            if start > end:
                headers["Content-Range"] = f"bytes */{entry.size}"
                raise HubError(416, "Requested range not satisfiable")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        if method == "HEAD":
            return self._send(
                200, b"", headers, content_type="application/octet-stream", head_only=True, length=entry.size
            )
        with open(state.object_path(entry.sha256), "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1) if entry.size else b""
        return self._send(status, data, headers, content_type="application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client (or an injected failure) closed the connection: not a bug
            return
        super().handle_error(request, client_address)


class HubServer:
    """Run a :class:`HubState` behind HTTP on an ephemeral 127.0.0.1 port, in a daemon thread.

    Args:
        root: folder for the blobs and repo JSON (a new temporary folder, removed on stop, if ``None``).
        token: the token writes (and private reads) must carry; ``None`` disables auth.
        upload_mode: ``"auto"`` (binary/large files go to LFS: clients need ``HF_HUB_DISABLE_XET=1``) or
            ``"regular"`` (every file inline in the commit: works with Xet-enabled clients).
    """

    def __init__(
        self, root: str | None = None, *, token: str | None = None, user: str = "tester", upload_mode: str = "auto"
    ) -> None:
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="hub-server-")
        self.state = HubState(self.root, token=token, user=user, upload_mode=upload_mode)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("HubServer is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        self._server = _Server(self.state)
        self.state.base_url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="hub-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Convenience accessors for tests -------------------------------------------------

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """The commit id a branch points to (``None`` if the repo or branch does not exist)."""
        repo = self.state.repos.get((repo_type, repo_id))
        return repo.branches.get(revision) if repo else None

    def commit_count(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> int:
        repo = self.state.repos[(repo_type, repo_id)]
        return len(repo.history(repo.commits[repo.branches[revision]]))

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        repo = self.state.repos[(repo_type, repo_id)]
        return self.state.read_file(repo.commits[repo.branches[revision]].files[path])

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, FileEntry]:
        repo = self.state.repos[(repo_type, repo_id)]
        return dict(repo.resolve(revision).files)  # type: ignore[union-attr]


if __name__ == "__main__":  # manual use: python tests/hub_server.py [TOKEN [SECONDS]] (default 600 s)
    import time

    with HubServer(token=sys.argv[1] if len(sys.argv) > 1 else None) as srv:
        print(f"HF_ENDPOINT={srv.url}", flush=True)
        try:
            time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 600)
        except KeyboardInterrupt:
            pass
