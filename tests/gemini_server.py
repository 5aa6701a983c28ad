"""A small Gemini API for tests: the real ``google-genai`` client talks to it over HTTP.

It speaks the routes google-genai 3.6 sends to the Gemini Developer API (read from its source:
``files.py``, ``models.py``, ``_api_client.py``, ``_extra_utils.prepare_resumable_upload``):

- ``POST /upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable``,
  ``X-Goog-Upload-Command: start``, ``X-Goog-Upload-Header-Content-Length`` /
  ``-Content-Type`` and ``X-Goog-Upload-File-Name``, body ``{"file": {mimeType, sizeBytes}}``
  → 200 with ``X-Goog-Upload-URL`` (the session) and ``X-Goog-Upload-Status: active``;
- ``POST <session url>`` with ``X-Goog-Upload-Command: upload[, finalize]`` and
  ``X-Goog-Upload-Offset``, body = the chunk → ``X-Goog-Upload-Status: active``, or ``final``
  with ``{"file": File}`` once finalised (state ``PROCESSING``);
- ``GET /v1beta/files/{id}`` → File (``PROCESSING`` for ``processing_polls`` calls, then
  ``ACTIVE``, or ``FAILED`` for names in ``failed_files``); ``DELETE`` → ``{}``;
- ``POST /v1beta/models/{model}:generateContent`` → a candidate whose text names the file.

Errors use Google's envelope ``{"error": {code, message, status, details}}``, which
``google.genai.errors`` turns into ``ClientError``/``ServerError``. Faults: the first
``throttle_first`` generate calls answer 429 with ``Retry-After``, ``latency_s`` per generate
call, unknown models 404. The key must arrive in ``x-goog-api-key`` (except on upload chunks,
where the session URL is the credential): a wrong one gets 400 ``API_KEY_INVALID`` as from the
real API. Counters: calls per route, the most concurrent generate calls, and every request's
headers (to prove where the key went).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_VERSION = r"(?:v1beta|v1alpha|v1)/"
_START = re.compile(rf"^/upload/(?:{_VERSION})?files$")
_FILE = re.compile(rf"^/(?:{_VERSION})?files/(?P<id>[\w-]+)$")
_GENERATE = re.compile(rf"^/(?:{_VERSION})?models/(?P<model>[\w.-]+):generateContent$")


@dataclass
class _Upload:
    file_name: str
    mime_type: str
    size: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class GeminiState:
    """What the server knows and the faults it injects; tests set fields before the calls."""

    api_key: str
    models: set[str] = field(default_factory=lambda: {"gemini-2.5-flash"})
    throttle_first: int = 0
    retry_after_s: float = 0
    latency_s: float = 0
    # Generate calls wait (up to 10 s) until this many were in flight at once: a concurrency
    # test then sees the limit reached however slowly a loaded host starts the calls.
    hold_until_in_flight: int = 0
    processing_polls: int = 1
    failed_files: set[str] = field(default_factory=set)  # upload file names that go FAILED
    lock: threading.Lock = field(default_factory=threading.Lock)
    uploads: dict[str, _Upload] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    generate_calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    deleted: list[str] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    # display name → (mime type, prompt) of each file a caption was generated for
    generated: dict[str, tuple[str, str]] = field(default_factory=dict)

    def count(self, route: str) -> None:
        with self.lock:
            self.calls[route] = self.calls.get(route, 0) + 1


class _Reply(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _error(code: int, status: str, message: str, **headers: str) -> _Reply:
    return _Reply(code, {"error": {"code": code, "message": message, "status": status}}, headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with state.lock:
            state.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        try:
            # The upload session URL is the credential for chunks (as on the real API).
            session = "upload_id=" in self.path
            if not session and self.headers.get("x-goog-api-key") != state.api_key:
                raise _error(400, "INVALID_ARGUMENT", "API key not valid (API_KEY_INVALID).")
            self._route(body)
        except _Reply as reply:
            self._send(reply.status, reply.body, reply.headers)
        except Exception as exc:  # a server bug must read as a 500, not a dropped connection
            error = {"code": 500, "message": repr(exc), "status": "INTERNAL"}
            self._send(500, {"error": error}, {})

    def _route(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if self.command == "POST" and _START.match(url.path):
            query = parse_qs(url.query)
            if "upload_id" in query:
                self._chunk(query["upload_id"][0], body)
            else:
                self._start(body)
        elif (match := _FILE.match(url.path)) and self.command in ("GET", "DELETE"):
            self._file(match["id"])
        elif self.command == "POST" and (match := _GENERATE.match(url.path)):
            self._generate(match["model"], json.loads(body or b"{}"))
        else:
            raise _error(404, "NOT_FOUND", f"no route {self.command} {url.path}")

    def _start(self, body: bytes) -> None:
        state = self.server.state
        state.count("upload_start")
        if self.headers.get("X-Goog-Upload-Protocol") != "resumable" or (
            self.headers.get("X-Goog-Upload-Command") != "start"
        ):
            raise _error(400, "INVALID_ARGUMENT", "expected a resumable upload start")
        meta = json.loads(body or b"{}").get("file") or {}
        upload_id = uuid.uuid4().hex
        with state.lock:
            state.uploads[upload_id] = _Upload(
                file_name=self.headers.get("X-Goog-Upload-File-Name", upload_id),
                mime_type=self.headers.get("X-Goog-Upload-Header-Content-Type")
                or meta.get("mimeType", "application/octet-stream"),
                size=int(self.headers.get("X-Goog-Upload-Header-Content-Length") or 0),
            )
        host = self.headers.get("Host", "127.0.0.1")
        session = (
            f"http://{host}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        )
        raise _Reply(200, {}, {"X-Goog-Upload-URL": session, "X-Goog-Upload-Status": "active"})

    def _chunk(self, upload_id: str, body: bytes) -> None:
        state = self.server.state
        state.count("upload_chunk")
        with state.lock:
            upload = state.uploads.get(upload_id)
            if upload is None:
                raise _error(404, "NOT_FOUND", "no such upload session")
            if int(self.headers.get("X-Goog-Upload-Offset", "-1")) != len(upload.data):
                raise _error(400, "INVALID_ARGUMENT", "offset does not match the bytes received")
            upload.data.extend(body)
            if "finalize" not in self.headers.get("X-Goog-Upload-Command", ""):
                raise _Reply(200, {}, {"X-Goog-Upload-Status": "active"})
            if len(upload.data) != upload.size:
                raise _error(400, "INVALID_ARGUMENT", "size differs from the declared length")
            file = self._new_file(upload)
            del state.uploads[upload_id]
        raise _Reply(200, {"file": file}, {"X-Goog-Upload-Status": "final"})

    def _new_file(self, upload: _Upload) -> dict[str, Any]:
        name = f"files/{uuid.uuid4().hex[:12]}"
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        host = self.headers.get("Host", "127.0.0.1")
        file = {
            "name": name,
            "displayName": upload.file_name,
            "mimeType": upload.mime_type,
            "sizeBytes": str(upload.size),
            "createTime": now,
            "updateTime": now,
            "expirationTime": now,
            "sha256Hash": "",
            "uri": f"http://{host}/v1beta/{name}",
            "state": "PROCESSING",
            "source": "UPLOADED",
        }
        self.server.state.files[name] = file
        self.server.state.polls[name] = 0
        return file

    def _file(self, file_id: str) -> None:
        state = self.server.state
        name = f"files/{file_id}"
        with state.lock:
            file = state.files.get(name)
            if file is None:
                raise _error(404, "NOT_FOUND", f"File {file_id} does not exist.")
            if self.command == "DELETE":
                state.calls["delete"] = state.calls.get("delete", 0) + 1
                del state.files[name]
                state.deleted.append(file["displayName"])
                raise _Reply(200, {})
            state.calls["get"] = state.calls.get("get", 0) + 1
            state.polls[name] += 1
            if state.polls[name] > state.processing_polls:
                failed = file["displayName"] in state.failed_files
                file["state"] = "FAILED" if failed else "ACTIVE"
                if failed:
                    file["error"] = {"code": 400, "message": "The video could not be processed."}
            reply = dict(file)
        raise _Reply(200, reply)

    def _generate(self, model: str, request: dict[str, Any]) -> None:
        state = self.server.state
        with state.lock:
            state.generate_calls += 1
            throttled = state.generate_calls <= state.throttle_first
        if throttled:
            raise _error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                **{"Retry-After": f"{state.retry_after_s:g}"},
            )
        if model not in state.models:
            raise _error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta")
        file = self._referenced_file(request)
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            deadline = time.monotonic() + 10
            while state.max_in_flight < state.hold_until_in_flight and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(state.latency_s)  # the model "thinking": holds this request open
        finally:
            with state.lock:
                state.in_flight -= 1
        state.count("generate")
        parts = [p for c in request.get("contents", []) for p in c.get("parts", [])]
        prompt = " ".join(p["text"] for p in parts if "text" in p)
        with state.lock:
            state.generated[file["displayName"]] = (file["mimeType"], prompt)
        text = f"a short clip named {file['displayName'].rsplit('.', 1)[0]}, filmed in daylight"
        raise _Reply(200, _candidate(text, model))

    def _referenced_file(self, request: dict[str, Any]) -> dict[str, Any]:
        parts = [p for c in request.get("contents", []) for p in c.get("parts", [])]
        # google-genai 3.6 sends ``fileData: {file_uri, mime_type}``; proto JSON accepts both
        # spellings, so the server does too.
        refs = [p.get("fileData") or p.get("file_data") for p in parts]
        uris = [r.get("fileUri") or r.get("file_uri") for r in refs if r]
        if not uris or not any("text" in p for p in parts):
            raise _error(400, "INVALID_ARGUMENT", "expected a file part and a text prompt")
        name = "files/" + uris[0].rsplit("/files/", 1)[-1]
        with self.server.state.lock:
            file = self.server.state.files.get(name)
        if file is None or file["state"] != "ACTIVE":
            raise _error(400, "FAILED_PRECONDITION", f"File {name} is not in an ACTIVE state.")
        return file

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _candidate(text: str, model: str) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 12},
        "modelVersion": model,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The client opens one connection per concurrent request: keep up with a burst of them.
    request_queue_size = 64

    def __init__(self, state: GeminiState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def gemini_server(api_key: str, **faults: Any) -> Iterator[tuple[str, GeminiState]]:
    """Serve on 127.0.0.1 (a free port); yields the base URL and the state to inspect."""
    state = GeminiState(api_key=api_key, **faults)
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
