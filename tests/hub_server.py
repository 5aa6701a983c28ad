"""A small Hugging Face Hub for tests: the real ``huggingface_hub`` client talks to it over HTTP.

It speaks the part of the Hub API that huggingface_hub 2.x uses to download (read from its
source: ``hf_api.py``, ``file_download.py``, ``_snapshot_download.py``, ``utils/_http.py``):

- ``GET /api/{models,datasets}/{ns}/{name}[/revision/{rev}]`` → ``{id, sha, siblings, gated,
  private}`` (``repo_info``, the first call of ``snapshot_download``);
- ``GET /api/{models,datasets}/{ns}/{name}/tree/{rev}[/{path}]?recursive=`` → file entries
  ``{type, path, size, oid, lfs?}`` and folder entries (``list_repo_tree``);
- ``GET /api/{models,datasets}/{ns}/{name}/auth-check`` → 200 when the token may read the
  files, else the error a file download gets (``auth_check``, huggingface_hub's access probe);
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
  (``sample``: the first 512 bytes, base64) → per file ``uploadMode`` ``"lfs"`` or
  ``"regular"`` (the only two values the client accepts), ``shouldIgnore``, and the ``oid`` of
  a file already there: sha256 for an LFS file, git blob id otherwise, which is what the
  client compares with its own hash of the same kind to leave an unchanged file out of the
  commit and skip a commit that would change nothing. ``"lfs"`` (``wants_lfs``): the suffixes
  of the Hub's default ``.gitattributes`` (``.safetensors``, ``.bin``, ``.pt``, ...; images and
  audio are in the datasets' default), files over 10 MiB, and binary files (a NUL byte in the
  sample). The client commits an empty file inline whatever the answer;
- ``POST /[datasets/]{ns}/{name}.git/info/lfs/objects/batch`` (git-lfs batch API, headers
  ``Accept``/``Content-Type: application/vnd.git-lfs+json``, the user's token) ``{operation:
  "upload", transfers: ["basic", "multipart"], objects: [{oid: sha256, size}], hash_algo:
  "sha256", ref: {name}}`` → ``{transfer: "basic", objects}``: an object the repo's storage
  already holds comes back without ``actions`` and the client uploads nothing for it (the
  Hub's dedup); otherwise ``actions.upload.href`` (a signed URL, S3's role) and
  ``actions.verify.href``. An ``upload.header.chunk_size`` would ask for the multipart
  transfer: never sent here;
- ``PUT {upload href}``: the raw bytes with a Content-Length and no Authorization (the URL's
  signature is the grant); stored by sha256 after checking the sha256 and the size, 400
  otherwise; 403 without the signature. The client retries 408/429/5xx 5 times (1, 2, 4, 8,
  8 s, or Retry-After + 1 s), then wraps the error in a bare ``RuntimeError("Error while
  uploading '<path>' to the Hub.")``;
- ``POST {verify href}`` ``{oid, size}`` with the user's token → 200 when the object is stored
  whole, 404 otherwise;
- ``POST /api/{models,datasets}/{ns}/{name}/commit/{rev}``: NDJSON, a ``header`` line then
  ``file`` (base64 content), ``lfsFile`` (``{path, algo: "sha256", oid, size}``),
  ``deletedFile`` and ``deletedFolder`` lines → ``{commitOid, commitUrl}``. An ``lfsFile``
  naming an object never uploaded is refused (400, the Hub's "LFS pointer pointed to a file
  that does not exist"), and so is a binary or large file sent inline.

Xet: with ``hf_xet`` installed (it is, in .venv: hf-xet 1.8), huggingface_hub 2.4 uploads every
"lfs" file through Xet, not the batch API: the client decides alone, by ``is_xet_available()``
(hf_xet importable and ``constants.HF_HUB_DISABLE_XET`` false; the variable is read at import,
the constant at each call). No server answer turns it off (preupload has no Xet field; the
batch API's ``transfer`` is ignored on upload); the Xet path asks ``GET
/api/{type}s/{ns}/{name}/xet-write-token/{rev}`` for a CAS token and fails without one. So
``LocalHub`` sets that constant while it runs (as ``HF_HUB_DISABLE_XET=1`` does; a client in
another process needs the variable), and answers the token route 501 with that hint. Downloads
are different: the server advertises Xet per file (``X-Xet-Hash`` and a ``xet-auth`` link on the
resolve HEAD); this one never does, so files come over plain HTTP. ``upload_folder`` also
switches to a multi-commit pipeline when Xet is available; ``create_commit`` does not.

Writing needs a token with the write role whose user owns the namespace: an unknown token is
401 (``Invalid credentials in Authorization header``), a read token or someone else's
namespace 403, as on the Hub. A private repository is visible only to its owner and granted
users (404 ``RepoNotFound`` to everyone else).

Errors carry ``X-Error-Code`` as the Hub's do, which is how the client picks its exception:
``RepoNotFound`` (404), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with the commit),
``GatedRepo`` (401 without a token it knows, 403 with one not granted access). As on the Hub, a
gated repo's info and file listing are public; only its files need the grant.

State is an in-memory model (``HubRepo`` with commits, LFS objects, tokens, grants) behind one
lock, and the routes are a table of (method, pattern, handler). Tests can hold downloads, cut
one download short once (to prove it resumes), put LFS storage in an outage, and read the
request log (``commit_requests`` counts commits and records their lines, ``lfs_batches`` and
``lfs_uploads`` the LFS traffic). Not modelled: the ``.gitattributes`` file a new Hub repo
starts with (its rules are applied all the same), a repo's own ``.gitattributes``, multipart
LFS uploads, and Xet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import huggingface_hub.constants
import yaml

# Suffixes the Hub stores in LFS: those of the default ``.gitattributes`` it gives a new repo
# (the ML formats; images and audio are in the dataset default), plus ``.gguf``. An LFS file's
# ETag is the content's sha256 (what huggingface_hub expects for large files), a regular file's
# is its git blob id.
_LFS_SUFFIXES = (
    *(".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".model", ".onnx", ".h5"),
    *(".msgpack", ".npy", ".npz", ".pkl", ".pickle", ".tflite", ".ot", ".pb", ".joblib"),
    *(".7z", ".arrow", ".bz2", ".gz", ".lz4", ".parquet", ".rar", ".tar", ".tgz", ".xz"),
    *(".zip", ".zst", ".wasm", ".ftz", ".mlmodel"),
    *(".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tiff", ".wav", ".flac", ".mp3"),
)
# Above this size a file goes to LFS whatever its name (the Hub's documented 10 MB).
LFS_THRESHOLD = 10 * 1024 * 1024
# The client sends the first 512 bytes of each file to preupload; a NUL byte among them is
# git's own test for "binary".
_SAMPLE = 512
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def wants_lfs(path: str, size: int, sample: bytes, threshold: int = LFS_THRESHOLD) -> bool:
    """Whether the Hub stores this file in LFS: by suffix, size, or binary content."""
    if size == 0:
        return False  # the client commits empty files inline whatever preupload says
    return path.lower().endswith(_LFS_SUFFIXES) or size > threshold or b"\0" in sample[:_SAMPLE]


def _git_oid(data: bytes) -> str:
    """The git blob id the Hub lists as a file's ``oid``."""
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


@dataclass
class HubRepo:
    """One repository: its files at the head commit, and the commit history's ids.

    ``lfs_paths`` are the files stored as LFS pointers, ``lfs_objects`` the LFS storage (sha256
    → bytes: uploaded through the batch API, or seeded). Files given at construction are
    sorted into LFS by the rule preupload applies (``wants_lfs``).
    """

    repo_id: str
    repo_type: str = "model"
    files: dict[str, bytes] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    commits: list[str] = field(default_factory=list)
    lfs_paths: set[str] = field(default_factory=set)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path, data in self.files.items():
            if wants_lfs(path, len(data), data[:_SAMPLE]):
                self.lfs_paths.add(path)
                self.lfs_objects[hashlib.sha256(data).hexdigest()] = data
        if not self.commits:
            self.commits.append(_commit_id(self.repo_id, self.files, parent=""))

    @property
    def head(self) -> str:
        return self.commits[-1]

    def commit(self, changes: dict[str, bytes | None], lfs: Collection[str] = ()) -> str:
        """Add, replace (bytes) or delete (None; a path ending in ``/`` is a folder) files.

        ``lfs`` names the added files that are LFS pointers. Returns the new commit id.
        """
        for path, data in changes.items():
            if data is None and path.endswith("/"):
                for gone in [p for p in self.files if p.startswith(path)]:
                    del self.files[gone]
                    self.lfs_paths.discard(gone)
            elif data is None:
                self.files.pop(path, None)
                self.lfs_paths.discard(path)
            else:
                self.files[path] = data
                if path in lfs:
                    self.lfs_paths.add(path)
                else:
                    self.lfs_paths.discard(path)
        self.commits.append(_commit_id(self.repo_id, self.files, parent=self.head))
        return self.head

    def is_lfs(self, path: str) -> bool:
        return path in self.lfs_paths

    def etag(self, path: str) -> str:
        """The ETag of a download and preupload's ``oid``: sha256 (LFS) or git blob id."""
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
    bytes_received: int = 0
    # A commit's lines after the header: (key, path), key being file, lfsFile, deletedFile...
    operations: tuple[tuple[str, str], ...] = ()


class HubState:
    """Everything the server knows; every access holds ``lock``."""

    def __init__(self, lfs_threshold: int = LFS_THRESHOLD) -> None:
        self.lock = threading.Lock()
        self.lfs_threshold = lfs_threshold
        # upload URL ticket → (repo type, repo id, oid, size): a presigned URL's signature
        self.lfs_tickets: dict[str, tuple[str, str, str, int]] = {}
        self.lfs_outage = 0  # each object's first N upload PUTs meet a storage outage (503)
        self.lfs_put_attempts: dict[str, int] = {}  # oid → PUTs so far
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
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit
        self.body = body or {}  # more fields for the JSON body (a 409 on create has the url)
        self.headers = headers or {}


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_GIT_REPO = r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects"
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
    (
        "GET",
        re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/auth-check$"),
        "_auth_check",
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
    ("POST", re.compile(rf"{_GIT_REPO}/batch$"), "_lfs_batch"),
    ("POST", re.compile(rf"{_GIT_REPO}/verify$"), "_lfs_verify"),
    (
        "PUT",
        re.compile(
            rf"^/lfs-upload/(?:(?P<type>datasets|spaces)/)?{_REPO}/(?P<oid>[0-9a-f]{{64}})$"
        ),
        "_lfs_put",
    ),
    *(
        (
            method,
            re.compile(
                rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/xet-(?:read|write)-token(?:/.*)?$"
            ),
            "_no_xet",
        )
        for method in ("GET", "POST")
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

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing ---------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        # Read the body first, whatever the answer: left unread, it would be taken for the
        # next request on this keep-alive connection.
        self._request_body = self._read_body()
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

    def _read_body(self) -> bytes:
        # huggingface_hub sends every body with a Content-Length, LFS PUTs included.
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

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

    def _json(
        self,
        method: str,
        payload: Any,
        content_type: str = "application/json",
        **record: Any,
    ) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
        self._record(method, 200, **record)

    def _error(self, method: str, reply: _Reply) -> None:
        body = json.dumps({"error": reply.message, **reply.body}).encode()
        self.send_response(reply.status)
        if reply.code:
            self.send_header("X-Error-Code", reply.code)
        self.send_header("X-Error-Message", reply.message)
        if reply.commit:
            self.send_header("X-Repo-Commit", reply.commit)
        for name, value in reply.headers.items():
            self.send_header(name, value)
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

    def _auth_check(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        """Whether the token may read the repo's files: what a download would be told, asked
        without downloading (``HfApi.auth_check``, which reads only the status and error code).
        """
        self._check_access(self._find(params))
        self._json(method, {})

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
        entries = [_preupload_entry(entry) for entry in files]
        with self.state.lock:
            threshold = self.state.lfs_threshold
            answers = [
                {
                    "path": path,
                    "uploadMode": "lfs" if wants_lfs(path, size, sample, threshold) else "regular",
                    "shouldIgnore": False,
                    # the client compares it with its sha256 (LFS) or git blob id (regular)
                    "oid": repo.etag(path) if path in repo.files else None,
                }
                for path, size, sample in entries
            ]
        self._json(method, {"files": answers, "commitOid": repo.head})

    def _commit_route(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        repo = self._find(params)
        self._writer(repo.repo_id.split("/")[0], f"push to {repo.repo_id}")
        self._branch(repo, params["rev"])
        header, changes, operations = _parse_commit(self._body())
        with self.state.lock:
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.head:
                raise _Reply(412, None, "A commit has happened since. Refresh and try again.")
            contents, lfs = _resolve_changes(repo, changes, self.state.lfs_threshold)
            oid = repo.commit(contents, lfs)
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
            operations=tuple(operations),
        )

    def _lfs_batch(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        """The git-lfs batch API: an upload URL for each object the repo's storage lacks."""
        repo = self._find(params)
        self._writer(repo.repo_id.split("/")[0], f"push to {repo.repo_id}")
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise _Reply(400, None, "this test Hub serves only the upload operation")
        ref = payload.get("ref")
        if isinstance(ref, dict) and ref.get("name") is not None:
            self._branch(repo, str(ref["name"]))
        objects = payload.get("objects")
        if not isinstance(objects, list):
            raise _Reply(400, None, "objects must be a list")
        prefix = f"{_URL_PREFIXES[repo.repo_type]}{repo.repo_id}"
        verify = f"{self._endpoint}/{prefix}.git/info/lfs/objects/verify"
        answers: list[dict[str, Any]] = []
        with self.state.lock:
            for item in objects:
                oid = item.get("oid") if isinstance(item, dict) else None
                size = item.get("size") if isinstance(item, dict) else None
                if not (isinstance(oid, str) and _SHA256.match(oid)) or not (
                    isinstance(size, int) and size >= 0
                ):
                    answers.append(
                        {
                            "oid": str(oid),
                            "size": size if isinstance(size, int) else 0,
                            "error": {"code": 422, "message": "oid must be a sha256, size >= 0"},
                        }
                    )
                elif oid in repo.lfs_objects:
                    answers.append({"oid": oid, "size": size})  # no actions: already stored
                else:
                    ticket = secrets.token_urlsafe(16)
                    self.state.lfs_tickets[ticket] = (repo.repo_type, repo.repo_id, oid, size)
                    answers.append(
                        {
                            "oid": oid,
                            "size": size,
                            "authenticated": True,
                            "actions": {
                                "upload": {
                                    "href": f"{self._endpoint}/lfs-upload/{prefix}/{oid}"
                                    f"?ticket={ticket}",
                                    "expires_in": 3600,
                                },
                                "verify": {"href": verify, "expires_in": 3600},
                            },
                        }
                    )
        self._json(
            method,
            {"transfer": "basic", "objects": answers, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        """The upload URL (S3's role): no Authorization, the ticket in the URL is the grant."""
        repo_type = _TYPES.get(params.get("type", "models"), "model")
        oid, body = params["oid"], self._body()
        with self.state.lock:
            grant = self.state.lfs_tickets.get(query.get("ticket", ""))
        if grant is None or grant[:3] != (repo_type, params["repo"], oid):
            raise _Reply(403, None, "the upload URL is not signed for this object")
        with self.state.lock:
            attempts = self.state.lfs_put_attempts.get(oid, 0)
            self.state.lfs_put_attempts[oid] = attempts + 1
            outage = attempts < self.state.lfs_outage
        if outage:  # S3's answer when it sheds load; Retry-After keeps the client's waits short
            raise _Reply(
                503, None, "SlowDown: please reduce your request rate", headers={"Retry-After": "0"}
            )
        size, digest = grant[3], hashlib.sha256(body).hexdigest()
        if len(body) != size or digest != oid:
            raise _Reply(
                400, None, f"got {len(body)} bytes with sha256 {digest}, not {size} bytes of {oid}"
            )
        with self.state.lock:
            repo = self.state.repo(repo_type, params["repo"])
            if repo is None:
                raise _Reply(404, "RepoNotFound", "Repository not found")
            repo.lfs_objects[oid] = body
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._record(method, 200, bytes_received=len(body))

    def _lfs_verify(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        """After a PUT, the client asks whether the object arrived whole."""
        repo = self._find(params)
        self._writer(repo.repo_id.split("/")[0], f"push to {repo.repo_id}")
        payload = self._json_body()
        oid, size = payload.get("oid"), payload.get("size")
        with self.state.lock:
            data = repo.lfs_objects.get(str(oid))
        if data is None or len(data) != size:
            raise _Reply(404, None, f"object {oid} of {size} bytes was not uploaded")
        self._json(method, {"oid": oid, "size": size})

    def _no_xet(self, method: str, params: dict[str, str], query: dict[str, str]) -> None:
        # hf_xet asks for a CAS token here before a Xet upload (or download); this Hub has no
        # Xet storage, and LocalHub turns the client's Xet off, so only a misconfigured
        # client (another process, HF_HUB_DISABLE_XET unset) ever gets here.
        raise _Reply(
            501, None, "this test Hub has no Xet storage: run the client with HF_HUB_DISABLE_XET=1"
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


@dataclass(frozen=True)
class _LfsPointer:
    """An ``lfsFile`` line: the file is the LFS object ``oid`` (of ``size`` bytes, if given)."""

    oid: str
    size: int | None


def _parse_commit(
    body: bytes,
) -> tuple[dict[str, Any], dict[str, bytes | _LfsPointer | None], list[tuple[str, str]]]:
    """The NDJSON commit payload → its header, the changes (bytes to write, an LFS pointer, None
    to delete) and the (key, path) of each line after the header.

    Folder deletions are expanded later against the files; here they are marked with a
    trailing slash, the way the client names them.
    """
    header: dict[str, Any] = {}
    changes: dict[str, bytes | _LfsPointer | None] = {}
    operations: list[tuple[str, str]] = []
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
            continue
        operations.append((key, str(value.get("path", ""))))
        if key == "file":
            changes[value["path"]] = _file_content(value, number)
        elif key == "lfsFile":
            changes[value["path"]] = _lfs_pointer(value, number)
        elif key in ("deletedFile", "deletedFolder"):
            changes[value["path"].rstrip("/") + ("/" if key == "deletedFolder" else "")] = None
        else:  # copyFile and the like: loraq does not use them
            raise _Reply(400, None, f"line {number}: {key} is not supported by this test Hub")
    if not header.get("summary"):
        raise _Reply(400, None, "the commit needs a header line with a summary")
    return header, changes, operations


def _lfs_pointer(value: dict[str, Any], number: int) -> _LfsPointer:
    oid, size = value.get("oid"), value.get("size")
    if value.get("algo", "sha256") != "sha256" or not (isinstance(oid, str) and _SHA256.match(oid)):
        raise _Reply(400, None, f"line {number}: an lfsFile needs a sha256 oid")
    if size is not None and not isinstance(size, int):
        raise _Reply(400, None, f"line {number}: size must be an integer")
    return _LfsPointer(oid, size)


def _resolve_changes(
    repo: HubRepo, changes: dict[str, bytes | _LfsPointer | None], threshold: int
) -> tuple[dict[str, bytes | None], set[str]]:
    """LFS pointers → the stored bytes, as the Hub refuses a commit that points at an object
    never uploaded, or carries inline a file it would have taken only through LFS."""
    contents: dict[str, bytes | None] = {}
    lfs: set[str] = set()
    for path, change in changes.items():
        if isinstance(change, _LfsPointer):
            data = repo.lfs_objects.get(change.oid)
            if data is None or (change.size is not None and change.size != len(data)):
                raise _Reply(
                    400,
                    None,
                    "Your push was rejected because an LFS pointer pointed to a file that does "
                    f"not exist. Offending file: {path} ({change.oid})",
                )
            contents[path] = data
            lfs.add(path)
        else:
            if change is not None and wants_lfs(path, len(change), change[:_SAMPLE], threshold):
                raise _Reply(
                    400,
                    None,
                    f"Your push was rejected because {path} is binary or larger than "
                    f"{threshold} bytes: it must go through LFS (preupload said so)",
                )
            contents[path] = change
    return contents, lfs


def _preupload_entry(entry: Any) -> tuple[str, int, bytes]:
    """A preupload ``files`` item → path, size and the sample's bytes."""
    try:
        path, size = str(entry["path"]), int(entry["size"])
        sample = base64.b64decode(str(entry.get("sample", "")), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _Reply(400, None, f"invalid preupload entry {entry!r}: {exc}") from exc
    return path, size, sample


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


class _XetOff:
    """Turns huggingface_hub's Xet off in this process while any LocalHub runs.

    The client, not the server, picks Xet for uploads (``is_xet_available()``: hf_xet importable
    and ``constants.HF_HUB_DISABLE_XET`` false, read at each call); this Hub cannot speak Xet's
    CAS protocol, so it sets what ``HF_HUB_DISABLE_XET=1`` sets, and puts it back after the last
    hub stops. A client in another process needs the variable itself.
    """

    _lock = threading.Lock()
    _users = 0
    _before = False

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._before = huggingface_hub.constants.HF_HUB_DISABLE_XET
                huggingface_hub.constants.HF_HUB_DISABLE_XET = True
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                huggingface_hub.constants.HF_HUB_DISABLE_XET = cls._before


class LocalHub:
    """The server on 127.0.0.1 at a free port, with helpers to set it up and observe it.

    ``lfs_threshold``: files above it go to LFS whatever their name (the Hub's 10 MiB; a test
    lowers it to reach the rule without writing 10 MiB).
    """

    def __init__(self, lfs_threshold: int = LFS_THRESHOLD) -> None:
        self.state = HubState(lfs_threshold)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> LocalHub:
        self._server = _Server(self.state)
        _XetOff.acquire()
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
            _XetOff.release()

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

    def fail_lfs_uploads(self, count: int) -> None:
        """Each object's first ``count`` upload PUTs are answered 503, as S3 does under load."""
        with self.state.lock:
            self.state.lfs_outage = count

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

    def lfs_batches(self, repo_id: str) -> list[RequestRecord]:
        """The LFS batch POSTs for ``repo_id`` that were answered."""
        marker = f"/{repo_id}.git/info/lfs/objects/batch"
        return self.requests(lambda r: r.method == "POST" and r.path.endswith(marker))

    def lfs_uploads(self, repo_id: str) -> list[RequestRecord]:
        """The LFS object PUTs to ``repo_id`` that stored an object."""
        marker = f"/{repo_id}/"
        return self.requests(
            lambda r: (
                r.method == "PUT"
                and r.path.startswith("/lfs-upload/")
                and marker in r.path
                and r.status == 200
            )
        )

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()
