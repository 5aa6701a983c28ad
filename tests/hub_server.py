"""A small Hugging Face Hub for tests: the real ``huggingface_hub`` client talks to it over HTTP.

It speaks the part of the Hub API that huggingface_hub 2.x uses to download (read from its
source: ``hf_api.py``, ``file_download.py``, ``_snapshot_download.py``, ``utils/_http.py``):

- ``GET /api/{models,datasets}/{ns}/{name}[/revision/{rev}]`` → ``{id, sha, siblings, gated,
  private}`` (``repo_info``, the first call of ``snapshot_download``);
- ``GET /api/{models,datasets}/{ns}/{name}/tree/{rev}[/{path}]?recursive=`` → file entries
  ``{type, path, size, oid, lfs?}`` and folder entries (``list_repo_tree``);
- ``HEAD``/``GET /[datasets/]{ns}/{name}/resolve/{rev}/{path}`` → the bytes, with
  ``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``Accept-Ranges``; ``Range`` → 206 with
  ``Content-Range`` (``hf_hub_download``'s metadata call, download and resume).

And the part it uses to upload (``hf_api.py`` ``whoami``, ``create_repo``, ``create_commit``;
``_commit_api.py`` ``_fetch_upload_modes``, ``_send_commit``):

- ``GET /api/whoami-v2`` → ``{type, name, auth: {accessToken: {role}}}``;
- ``POST /api/repos/create`` ``{name, organization, type?, visibility? | private?}`` →
  ``{url}``; 409 when it exists (``exist_ok=True`` accepts that);
- ``POST /api/validate-yaml`` ``{content}`` → ``{}``, or 400 with ``errors`` when the model
  card's front matter is not a YAML mapping (``create_commit`` sends every ``README.md`` here);
- ``POST /api/{models,datasets}/{ns}/{name}/preupload/{rev}`` ``{files: [{path, sample, size}]}``
  → ``uploadMode: "regular"`` for every file (content travels inline in the commit: no LFS or
  Xet) and the ``oid`` of a file already there, which the client compares with its own git
  hash to leave unchanged files out, and to skip a commit that would change nothing;
- ``POST /api/{models,datasets}/{ns}/{name}/commit/{rev}``: NDJSON, a ``header`` line then
  ``file`` (base64 content), ``deletedFile`` and ``deletedFolder`` lines → ``{commitOid,
  commitUrl}``.

Writing needs a token with the write role whose user owns the namespace: an unknown token is
401 (``Invalid credentials in Authorization header``), a read token or someone else's
namespace 403, as on the Hub. A private repository is visible only to its owner and granted
users (404 ``RepoNotFound`` to everyone else).

Errors carry ``X-Error-Code`` as the Hub's do, which is how the client picks its exception:
``RepoNotFound`` (404), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with the commit),
``GatedRepo`` (401 without a token it knows, 403 with one not granted access). As on the Hub, a
gated repo's info and file listing are public; only its files need the grant.

State is an in-memory model (``HubRepo`` with commits, tokens, grants) behind one lock, and the
routes are a table of (method, pattern, handler). Tests can hold downloads, cut one download
short once (to prove it resumes) and read the request log (``commit_requests`` counts commits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Files the Hub stores in LFS: their ETag is the content's sha256 (what huggingface_hub expects
# for large files), small files get the git blob id.
_LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".model", ".gguf", ".pt")


def _git_oid(data: bytes) -> str:
    """The git blob id the Hub lists as a file's ``oid``."""
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


@dataclass
class HubRepo:
    """One repository: its files at the head commit, and the commit history's ids."""

    repo_id: str
    repo_type: str = "model"
    files: dict[str, bytes] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    commits: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.commits:
            self.commits.append(_commit_id(self.repo_id, self.files, parent=""))

    @property
    def head(self) -> str:
        return self.commits[-1]

    def commit(self, changes: dict[str, bytes | None]) -> str:
        """Add, replace (bytes) or delete (None; a path ending in ``/`` is a folder) files.

        Returns the new commit id.
        """
        for path, data in changes.items():
            if data is None and path.endswith("/"):
                for gone in [p for p in self.files if p.startswith(path)]:
                    del self.files[gone]
            elif data is None:
                self.files.pop(path, None)
            else:
                self.files[path] = data
        self.commits.append(_commit_id(self.repo_id, self.files, parent=self.head))
        return self.head

    def is_lfs(self, path: str) -> bool:
        return path.endswith(_LFS_SUFFIXES)

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else _git_oid(data)


def _commit_id(repo_id: str, files: dict[str, bytes], parent: str) -> str:
    digest = hashlib.sha1(f"{repo_id}\0{parent}".encode(), usedforsecurity=False)
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    range_start: int | None = None
    bytes_sent: int = 0
    token: str | None = None


class HubState:
    """Everything the server knows; every access holds ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.tokens: dict[str, str] = {}  # token → user
        self.writers: set[str] = set()  # tokens with the write role
        self.grants: dict[str, set[str]] = {}  # gated repo id → users with access
        self.log: list[RequestRecord] = []
        self.cut_after: dict[tuple[str, str], int] = {}  # (repo, path) → bytes, once
        self.downloads_open = threading.Event()
        self.downloads_open.set()
        self.download_arrived = threading.Event()

    def repo(self, repo_type: str, repo_id: str) -> HubRepo | None:
        return self.repos.get((repo_type, repo_id))


class _Reply(Exception):
    """An error reply: status, Hub error code and message."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        commit: str | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit
        self.body = body or {}  # more fields for the JSON body (a 409 on create has the url)


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The Hub's rule for a repository name (huggingface_hub checks the same before sending).
_NAME = re.compile(r"^(?![-.])(?!.*(--|\.\.))[\w.-]{1,96}(?<![-.])$")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
Route = tuple[str, re.Pattern[str], str]
_ROUTES: list[Route] = [
    ("GET", re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}$"), "_repo_info"),
    (
        "GET",
        re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/revision/(?P<rev>[^/]+)$"),
        "_repo_info",
    ),
    (
        "GET",
        re.compile(
            rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"
        ),
        "_tree",
    ),
    (
        "HEAD",
        re.compile(
            rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
        ),
        "_resolve",
    ),
    (
        "GET",
        re.compile(
            rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
        ),
        "_resolve",
    ),
    ("GET", re.compile(r"^/api/whoami-v2$"), "_whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "_create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "_validate_yaml"),
    (
        "POST",
        re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/preupload/(?P<rev>[^/]+)$"),
        "_preupload",
    ),
    (
        "POST",
        re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/commit/(?P<rev>[^/]+)$"),
        "_commit_route",
    ),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _request_body: bytes = b""

    def log_message(self, format: str, *args: Any) -> None:
        return  # the request log is ``HubState.log``

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ---------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        # Read the body first, whatever the answer: left unread, it would be taken for the
        # next request on this keep-alive connection.
        self._request_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        for route_method, pattern, handler in _ROUTES:
            match = pattern.match(url.path)
            if route_method == method and match:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    getattr(self, handler)(method, params, query)
                except _Reply as reply:
                    self._error(method, reply)
                return
        self._error(method, _Reply(404, None, f"no route for {method} {url.path}"))

    @property
    def state(self) -> HubState:
        return self.server.state

    def _token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return header[len("Bearer ") :] if header.startswith("Bearer ") else None

    def _record(self, method: str, status: int, **extra: Any) -> None:
        with self.state.lock:
            self.state.log.append(
                RequestRecord(
                    method, urlsplit(self.path).path, status, token=self._token(), **extra
                )
            )

    def _json(self, method: str, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
        self._record(method, 200)

    def _error(self, method: str, reply: _Reply) -> None:
        body = json.dumps({"error": reply.message, **reply.body}).encode()
        self.send_response(reply.status)
        if reply.code:
            self.send_header("X-Error-Code", reply.code)
        self.send_header("X-Error-Message", reply.message)
        if reply.commit:
            self.send_header("X-Repo-Commit", reply.commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
        self._record(method, reply.status)

    # -- lookups ----------------------------------------------------------------------------
    def _find(self, params: dict[str, str]) -> HubRepo:
        repo_type = _TYPES.get(params.get("type", "models"), "model")
        with self.state.lock:
            repo = self.state.repo(repo_type, params["repo"])
            user = self.state.tokens.get(self._token() or "")
            granted = repo is not None and user in self.state.grants.get(repo.repo_id, set())
        if repo is None or (repo.private and not (granted or _owns(user, repo.repo_id))):
            raise _Reply(404, "RepoNotFound", "Repository not found")
        return repo

    def _writer(self, namespace: str, what: str) -> str:
        """The user behind a write token that owns ``namespace``; 401/403 as on the Hub."""
        token = self._token() or ""
        with self.state.lock:
            user = self.state.tokens.get(token)
            can_write = token in self.state.writers
        if user is None:
            raise _Reply(401, None, _INVALID_CREDENTIALS)
        if not can_write or user != namespace:
            raise _Reply(403, None, f"You don't have the rights to {what}")
        return user

    def _body(self) -> bytes:
        return self._request_body

    def _json_body(self) -> dict[str, Any]:
        try:
            payload = json.loads(self._body() or b"{}")
        except json.JSONDecodeError as exc:
            raise _Reply(400, None, f"invalid JSON body: {exc}") from exc
        if not isinstance(payload, dict):
            raise _Reply(400, None, "the body must be a JSON object")
        return payload

    @property
    def _endpoint(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def _commit(self, repo: HubRepo, revision: str | None) -> str:
        if revision in (None, "main") or revision == repo.head:
            return repo.head
        if revision in repo.commits:
            raise _Reply(404, "RevisionNotFound", "Only the head commit is kept in this test Hub")
        raise _Reply(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _check_access(self, repo: HubRepo) -> None:
        if not repo.gated:
            return
        with self.state.lock:
            user = self.state.tokens.get(self._token() or "")
            allowed = user is not None and user in self.state.grants.get(repo.repo_id, set())
        if user is None:
            raise _Reply(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
            )
        if not allowed:
            raise _Reply(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the "
                "authorized list.",
            )

    # -- routes -----------------------------------------------------------------------------
    def _repo_info(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        repo = self._find(params)
        commit = self._commit(repo, params.get("rev"))
        self._json(
            method,
            {
                "_id": repo.repo_id,
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(repo.files)],
            },
        )

    def _tree(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        repo = self._find(params)
        self._commit(repo, params.get("rev"))
        base = params.get("path", "").strip("/")
        recursive = query.get("recursive", "false").lower() == "true"
        entries = _tree_entries(repo, base, recursive)
        if base and not entries:
            raise _Reply(404, "EntryNotFound", f"{base} does not exist", commit=repo.head)
        self._json(method, entries)

    def _resolve(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        repo = self._find(params)
        commit = self._commit(repo, params.get("rev"))
        path = params["path"]
        if path not in repo.files:
            raise _Reply(404, "EntryNotFound", f"{path} does not exist", commit=commit)
        self._check_access(repo)
        data = repo.files[path]
        start, end = _byte_range(self.headers.get("Range"), len(data))
        if method == "GET":
            self.state.download_arrived.set()
            self.state.downloads_open.wait(timeout=30)
        self.send_response(206 if self.headers.get("Range") else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{repo.etag(path)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if self.headers.get("Range"):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if method == "HEAD":
            self._record(method, 200)
            return
        self._send_body(repo, path, data[start:end], start)

    def _whoami(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        token = self._token() or ""
        with self.state.lock:
            user = self.state.tokens.get(token)
            role = "write" if token in self.state.writers else "read"
        if user is None:
            raise _Reply(401, None, _INVALID_CREDENTIALS)
        self._json(
            method,
            {
                "type": "user",
                "id": hashlib.sha1(user.encode(), usedforsecurity=False).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": f"{user}-{role}", "role": role},
                },
            },
        )

    def _create_repo(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        payload = self._json_body()
        name, namespace = str(payload.get("name") or ""), payload.get("organization")
        repo_type = str(payload.get("type") or "model")
        with self.state.lock:
            namespace = namespace or self.state.tokens.get(self._token() or "")
        self._writer(str(namespace), f'create a {repo_type} under the namespace "{namespace}"')
        if repo_type not in _URL_PREFIXES or not _NAME.match(name):
            raise _Reply(400, None, f"Invalid repo name: {name!r}")
        private = payload.get("visibility", "private" if payload.get("private") else "public")
        repo_id = f"{namespace}/{name}"
        url = f"{self._endpoint}/{_URL_PREFIXES[repo_type]}{repo_id}"
        with self.state.lock:
            if self.state.repo(repo_type, repo_id) is not None:
                raise _Reply(
                    409, None, f"You already created this {repo_type} repo", body={"url": url}
                )
            repo = HubRepo(repo_id, repo_type=repo_type, private=private == "private")
            self.state.repos[(repo_type, repo_id)] = repo
        self._json(method, {"url": url, "name": repo_id, "id": repo.head})

    def _validate_yaml(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        content = str(self._json_body().get("content", ""))
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        if match is None:
            self._json(method, {"warnings": [{"message": "empty or missing yaml metadata"}]})
            return
        try:
            metadata = yaml.safe_load(match[1])
        except yaml.YAMLError as exc:
            metadata, problem = None, f"invalid YAML: {exc}"
        else:
            problem = "the metadata must be a YAML mapping"
        if not isinstance(metadata, dict):
            body = json.dumps({"errors": [{"message": problem}]}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self._record(method, 400)
            return
        self._json(method, {})

    def _preupload(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        repo = self._find(params)
        self._writer(repo.repo_id.split("/")[0], f"push to {repo.repo_id}")
        self._branch(repo, params["rev"])
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise _Reply(400, None, "files must be a list")
        with self.state.lock:
            answers = [
                {
                    "path": entry["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": _git_oid(repo.files[entry["path"]])
                    if entry["path"] in repo.files
                    else None,
                }
                for entry in files
            ]
        self._json(method, {"files": answers, "commitOid": repo.head})

    def _commit_route(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        repo = self._find(params)
        self._writer(repo.repo_id.split("/")[0], f"push to {repo.repo_id}")
        self._branch(repo, params["rev"])
        header, changes = _parse_commit(self._body())
        with self.state.lock:
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.head:
                raise _Reply(412, None, "A commit has happened since. Refresh and try again.")
            oid = repo.commit(changes)
        url = f"{self._endpoint}/{_URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        self._json(
            method,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": url,
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _branch(self, repo: HubRepo, revision: str) -> None:
        # Only the default branch exists here; the Hub refuses a commit onto a commit id too.
        if revision != "main":
            raise _Reply(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _send_body(self, repo: HubRepo, path: str, body: bytes, start: int) -> None:
        with self.state.lock:
            cut = self.state.cut_after.pop((repo.repo_id, path), None)
        status = 206 if start or self.headers.get("Range") else 200
        if cut is not None and cut < len(body):
            # Send part of the promised body, then drop the connection: a dropped download.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            self._record("GET", status, range_start=start, bytes_sent=cut)
            return
        self.wfile.write(body)
        self._record("GET", status, range_start=start, bytes_sent=len(body))


def _owns(user: str | None, repo_id: str) -> bool:
    return user is not None and repo_id.split("/")[0] == user


def _parse_commit(body: bytes) -> tuple[dict[str, Any], dict[str, bytes | None]]:
    """The NDJSON commit payload → its header and the changes (bytes to write, None to delete).

    Folder deletions are expanded later against the files; here they are marked with a
    trailing slash, the way the client names them.
    """
    header: dict[str, Any] = {}
    changes: dict[str, bytes | None] = {}
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise _Reply(400, None, f"line {number}: not a commit operation") from exc
        if key == "header":
            header = value
        elif key == "file":
            changes[value["path"]] = _file_content(value, number)
        elif key in ("deletedFile", "deletedFolder"):
            changes[value["path"].rstrip("/") + ("/" if key == "deletedFolder" else "")] = None
        else:  # lfsFile: preupload never asks for LFS, so a client sending one is confused
            raise _Reply(400, None, f"line {number}: {key} is not supported by this test Hub")
    if not header.get("summary"):
        raise _Reply(400, None, "the commit needs a header line with a summary")
    return header, changes


def _file_content(value: dict[str, Any], number: int) -> bytes:
    content = str(value.get("content", ""))
    if value.get("encoding") != "base64":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except binascii.Error as exc:
        raise _Reply(400, None, f"line {number}: content is not base64") from exc


def _tree_entries(repo: HubRepo, base: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = f"{base}/" if base else ""
    files: list[dict[str, Any]] = []
    folders: set[str] = set()
    for path in sorted(repo.files):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            if recursive or depth == 1:
                folders.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            files.append(_file_entry(repo, path))
    listed = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
    return listed + files


def _file_entry(repo: HubRepo, path: str) -> dict[str, Any]:
    data = repo.files[path]
    entry: dict[str, Any] = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": path}
    if repo.is_lfs(path):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """``bytes=N-`` or ``bytes=N-M`` → [start, end); a range past the end is 416."""
    if not header:
        return 0, size
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
    if not match:
        raise _Reply(416, None, f"unsupported range {header}")
    start = int(match[1])
    end = int(match[2]) + 1 if match[2] else size
    if start >= size or end <= start:
        raise _Reply(416, None, f"range {header} not satisfiable for {size} bytes")
    return start, min(end, size)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class LocalHub:
    """The server on 127.0.0.1 at a free port, with helpers to set it up and observe it."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> LocalHub:
        self._server = _Server(self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.downloads_open.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- set-up -----------------------------------------------------------------------------
    def add_repo(self, repo: HubRepo) -> HubRepo:
        with self.state.lock:
            self.state.repos[(repo.repo_type, repo.repo_id)] = repo
        return repo

    def add_token(
        self, token: str, user: str, *, grant: tuple[str, ...] = (), write: bool = False
    ) -> None:
        """A token for ``user``; ``write`` gives it the write role (push to ``user``'s repos)."""
        with self.state.lock:
            self.state.tokens[token] = user
            if write:
                self.state.writers.add(token)
            for repo_id in grant:
                self.state.grants.setdefault(repo_id, set()).add(user)

    def cut_next_download(self, repo_id: str, path: str, after_bytes: int) -> None:
        """The next GET of ``path`` sends ``after_bytes`` bytes, then drops the connection."""
        with self.state.lock:
            self.state.cut_after[(repo_id, path)] = after_bytes

    @contextmanager
    def downloads_held(self) -> Iterator[None]:
        """File GETs wait (HEADs and API calls do not) until the block exits."""
        self.state.download_arrived.clear()
        self.state.downloads_open.clear()
        try:
            yield
        finally:
            self.state.downloads_open.set()

    # -- observation ------------------------------------------------------------------------
    def requests(
        self, predicate: Callable[[RequestRecord], bool] = lambda r: True
    ) -> list[RequestRecord]:
        with self.state.lock:
            return [r for r in self.state.log if predicate(r)]

    def file_gets(self, repo_id: str, path: str | None = None) -> list[RequestRecord]:
        """The GETs of files from ``repo_id`` (of one ``path``, if given)."""
        marker = f"/{repo_id}/resolve/"

        def wanted(r: RequestRecord) -> bool:
            return (
                r.method == "GET"
                and marker in r.path
                and (path is None or r.path.endswith(f"/{path}"))
            )

        return self.requests(wanted)

    def repo(self, repo_id: str, repo_type: str = "model") -> HubRepo | None:
        with self.state.lock:
            return self.state.repo(repo_type, repo_id)

    def commit_requests(self, repo_id: str) -> list[RequestRecord]:
        """The commit POSTs to ``repo_id`` that made a commit."""
        marker = f"/{repo_id}/commit/"
        return self.requests(lambda r: r.method == "POST" and marker in r.path and r.status == 200)

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()
