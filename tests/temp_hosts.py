"""Local stand-ins for litterbox and transfer.sh: their upload forms, replies and downloads.

The worker's real aiohttp client talks to them over HTTP on 127.0.0.1. Each parses the real
multipart body (streamed to disk, as the hosts do), stores the file, answers as the real host
does, and serves the file back at the link it returned, so a test can download and open it.

- litterbox (``POST /resources/internals/api.php``): fields ``reqtype=fileupload``, ``time`` one
  of 1h/12h/24h/72h, the file in ``fileToUpload``; the reply is the bare link. Form errors come
  back as text with HTTP 200, as catbox's do.
- transfer.sh (``POST /``, dutchcoders/transfer.sh's ``postHandler``): every file part is
  stored; the reply is one link per line, with an ``X-Url-Delete`` header per file; the
  ``Max-Days`` header sets the expiry. The real server accepts any field name and ignores a
  missing ``Max-Days``; this one refuses both with 400 so a regression in our form shows.

Both can be told to fail: ``fail_status`` for the next ``fail_times`` uploads (-1: all),
``error_text`` (HTTP 200 with that text instead of a link), ``max_bytes`` (413 above it, as the
hosts' front proxies answer).
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from aiohttp import BodyPartReader, web

LITTERBOX_PATH = "/resources/internals/api.php"
LITTERBOX_TIMES = frozenset({"1h", "12h", "24h", "72h"})
_NGINX_413 = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Upload:
    """One upload as the host received it."""

    fields: dict[str, str]
    file_field: str
    filename: str
    size: int
    stored: Path
    headers: dict[str, str]
    content_length: int | None


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, Path, int]] = field(default_factory=list)


class _LocalHost:
    """An aiohttp app on 127.0.0.1:<free port>, started and stopped in the test's own loop."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.storage.mkdir(parents=True, exist_ok=True)
        self.uploads: list[Upload] = []
        self.attempts = 0  # every upload request, including the refused ones
        self.fail_status: int | None = None
        self.fail_times = -1
        self.error_text: str | None = None
        self.max_bytes: int | None = None
        self._files: dict[str, Path] = {}
        self._runner: web.AppRunner | None = None
        self.base = ""

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 40)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _read_form(self, request: web.Request) -> _Form:
        """Parse the multipart body part by part; file parts go to disk in chunks."""
        form = _Form()
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            name = part.name or ""
            if part.filename is None:
                form.fields[name] = await part.text()
                continue
            stored = self.storage / secrets.token_hex(8)
            size = 0
            with stored.open("wb") as out:
                while chunk := await part.read_chunk(1 << 16):
                    out.write(chunk)
                    size += len(chunk)
            form.files.append((name, part.filename, stored, size))
        return form

    def _injected_failure(self, form: _Form) -> web.Response | None:
        """The failure the test asked for, if any, for this upload."""
        if self.fail_status is not None and self.fail_times != 0:
            self.fail_times -= 1 if self.fail_times > 0 else 0
            return web.Response(status=self.fail_status, text=HTTPStatus(self.fail_status).phrase)
        if self.max_bytes is not None and any(f[3] > self.max_bytes for f in form.files):
            return web.Response(status=413, text=_NGINX_413, content_type="text/html")
        if self.error_text is not None:
            return web.Response(text=self.error_text)
        return None

    def _record(self, request: web.Request, form: _Form, index: int = 0) -> Upload:
        name, filename, stored, size = form.files[index]
        upload = Upload(
            fields=dict(form.fields),
            file_field=name,
            filename=filename,
            size=size,
            stored=stored,
            headers=dict(request.headers),
            content_length=request.content_length,
        )
        self.uploads.append(upload)
        return upload

    async def _download(self, request: web.Request) -> web.StreamResponse:
        path = self._files.get(request.path)
        if path is None:
            raise web.HTTPNotFound(text="File not found")
        return web.FileResponse(path, headers={"Content-Type": "application/zip"})


class LocalLitterbox(_LocalHost):
    @property
    def url(self) -> str:
        return self.base + LITTERBOX_PATH

    def routes(self, app: web.Application) -> None:
        app.router.add_post(LITTERBOX_PATH, self._upload)
        app.router.add_get("/{name}", self._download)

    async def _upload(self, request: web.Request) -> web.Response:
        self.attempts += 1
        form = await self._read_form(request)
        if (failure := self._injected_failure(form)) is not None:
            return failure
        if form.fields.get("reqtype") != "fileupload":
            return web.Response(text="No request type given.")
        if form.fields.get("time") not in LITTERBOX_TIMES:
            return web.Response(text="No expire time specified.")
        if [f[0] for f in form.files] != ["fileToUpload"]:
            return web.Response(text="No files given.")
        upload = self._record(request, form)
        link_path = f"/{secrets.token_hex(3)}{Path(upload.filename).suffix}"
        self._files[link_path] = upload.stored
        return web.Response(text=self.base + link_path)


class LocalTransferSh(_LocalHost):
    def __init__(self, storage: Path) -> None:
        super().__init__(storage)
        self.deleted: list[str] = []
        self._deletion_tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.base + "/"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/", self._upload)
        app.router.add_get("/{token}/{filename}", self._download)
        app.router.add_delete("/{token}/{filename}/{deletion}", self._delete)

    async def _upload(self, request: web.Request) -> web.Response:
        self.attempts += 1
        form = await self._read_form(request)
        if (failure := self._injected_failure(form)) is not None:
            return failure
        max_days = request.headers.get("Max-Days", "")
        if not max_days.isdigit():
            return web.Response(status=400, text="test double: Max-Days header missing")
        if any(f[0] != "filedata" for f in form.files):
            return web.Response(status=400, text="test double: file field is not 'filedata'")
        token = secrets.token_urlsafe(4)
        response = web.Response(content_type="text/plain")
        body = ""
        for index in range(len(form.files)):
            upload = self._record(request, form, index)
            link_path = f"/{token}/{upload.filename}"
            deletion = secrets.token_urlsafe(10)
            self._files[link_path] = upload.stored
            self._deletion_tokens[link_path] = deletion
            response.headers.add("X-Url-Delete", f"{self.base}{link_path}/{deletion}")
            body += f"{self.base}{link_path}\n"
        response.text = body
        return response

    async def _delete(self, request: web.Request) -> web.Response:
        link_path = f"/{request.match_info['token']}/{request.match_info['filename']}"
        if self._deletion_tokens.get(link_path) != request.match_info["deletion"]:
            raise web.HTTPNotFound()
        self._files.pop(link_path).unlink()
        self.deleted.append(link_path)
        return web.Response(text="")
