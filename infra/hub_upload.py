"""Uploading to the Hugging Face Hub: whoami, create a repository, one commit of many files.

A small synchronous adapter on ``HfApi`` (callers in async code use ``asyncio.to_thread``). As
in ``infra.hub``, the token is passed per call and never given to ``login()``, so it lives only
in the caller's memory; errors come back as ``infra.hub``'s kinds, plus ``HubInvalidRepo``.

Idempotent by construction, because a publish may run again after a crash: creating a
repository that exists is fine, and ``commit`` first compares the files with the repository's
tree (git blob id, or sha256 for LFS files) and makes no commit when nothing changed.
huggingface_hub's ``create_commit`` would also leave unchanged files out and skip an empty
commit, but it then answers with the head's id, so a caller could not tell "nothing changed"
from "committed"; the tree comparison tells, and saves the preupload round trip too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import BadRequestError, HfHubHTTPError, HFValidationError
from huggingface_hub.hf_api import RepoFile
from pydantic import SecretStr

from infra.hub import HubError, HubUnavailable, translate_error

_MAX_NAME = 96
# What the Hub accepts as a repository name (huggingface_hub checks the same rule).
_VALID_NAME = re.compile(r"^(?![-.])(?!.*(--|\.\.))[\w.-]{1,96}(?<![-.])$")
_CHUNK = 8 * 1024 * 1024
# What the Hub answers a create it refuses (no create scope, payment, someone else's namespace):
# the repository may exist all the same.
_REFUSED = (HTTPStatus.UNAUTHORIZED, HTTPStatus.PAYMENT_REQUIRED, HTTPStatus.FORBIDDEN)


class HubInvalidRepo(HubError):
    """The repository id is not a valid Hub name, or the Hub refused to create it as asked."""


def default_repo_id(user: str, job_id: str) -> str:
    """``{user}/loraq-{job_id}``, made a valid Hub name; the same job always gets the same one.

    A job id may hold ``--`` or ``..`` or be too long for the Hub's 96 characters: then the
    name is cleaned and shortened, and a short hash of the job id keeps it unique.
    """
    name = f"loraq-{job_id}"
    if _VALID_NAME.match(name) and not name.endswith(".git"):
        return f"{user}/{name}"
    suffix = "-" + hashlib.sha256(job_id.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^\w.-]", "-", name)
    cleaned = re.sub(r"[-.]{2,}", "-", cleaned)[: _MAX_NAME - len(suffix)].rstrip("-.")
    return f"{user}/{cleaned}{suffix}"


@dataclass(frozen=True)
class _Local:
    """A file to upload, with the two ids the Hub may list for it."""

    content: bytes | Path
    git_oid: str
    sha256: str


class HubUploader:
    """Push files to repositories on one Hub endpoint with one user's token."""

    def __init__(self, token: SecretStr, endpoint: str | None = None) -> None:
        self._token = token
        self._api = HfApi(endpoint=endpoint, token=False)

    @property
    def endpoint(self) -> str:
        return self._api.endpoint.rstrip("/")

    def whoami(self) -> str:
        """The name of the user the token belongs to."""
        try:
            return str(self._api.whoami(token=self._secret())["name"])
        except Exception as exc:
            raise _translate(exc, "whoami") from exc

    def ensure_repo(self, repo_id: str, *, private: bool) -> str:
        """Create the model repository unless it exists (then it is left as it is); its URL.

        huggingface_hub's ``exist_ok`` handles "exists" itself, but on a 401/403 its fallback
        builds the URL for huggingface.co only; so the same rule is applied here: a conflict
        means it exists, and a refusal is fine when the repository can be read (the commit
        then says whether the token may write to it).
        """
        url = f"{self.endpoint}/{repo_id}"
        try:
            self._api.create_repo(repo_id, private=private, exist_ok=False, token=self._secret())
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == HTTPStatus.CONFLICT or (status in _REFUSED and self._readable(repo_id)):
                return url
            raise _translate(exc, repo_id, bad_request_means_invalid=True) from exc
        except Exception as exc:
            raise _translate(exc, repo_id, bad_request_means_invalid=True) from exc
        return url

    def _readable(self, repo_id: str) -> bool:
        try:
            self._api.repo_info(repo_id, token=self._secret())
        except HfHubHTTPError:
            return False
        return True

    def commit(self, repo_id: str, files: Mapping[str, bytes | Path], message: str) -> str | None:
        """Upload ``files`` (path in repo → content) as one commit on ``main``.

        Files the repository already holds with the same content are left out; when that leaves
        nothing, no commit is made and None comes back. Otherwise, the new commit's id.
        """
        local = {path: _describe(content) for path, content in files.items()}
        try:
            changed = self._changed(repo_id, local)
            if not changed:
                return None
            operations = [CommitOperationAdd(path, local[path].content) for path in sorted(changed)]
            info = self._api.create_commit(
                repo_id, operations, commit_message=message, token=self._secret()
            )
        except Exception as exc:
            raise _translate(exc, repo_id) from exc
        return str(info.oid)

    def file_url(self, repo_id: str, path: str, *, download: bool) -> str:
        """The URL of ``path`` on ``main``; ``download`` asks the Hub to serve it as a file."""
        url = f"{self.endpoint}/{repo_id}/resolve/main/{quote(path)}"
        return f"{url}?download=true" if download else url

    def _changed(self, repo_id: str, local: Mapping[str, _Local]) -> list[str]:
        remote = {
            entry.path: entry
            for entry in self._api.list_repo_tree(repo_id, recursive=True, token=self._secret())
            if isinstance(entry, RepoFile)
        }
        changed = []
        for path, file in local.items():
            entry = remote.get(path)
            if entry is None:
                changed.append(path)
            elif entry.lfs is not None:
                if entry.lfs.sha256 != file.sha256:
                    changed.append(path)
            elif entry.blob_id != file.git_oid:
                changed.append(path)
        return changed

    def _secret(self) -> str:
        return self._token.get_secret_value()


def _describe(content: bytes | Path) -> _Local:
    """Hash the content the way the Hub lists it: git blob id, and sha256 (LFS files)."""
    size = len(content) if isinstance(content, bytes) else content.stat().st_size
    git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    sha = hashlib.sha256()
    if isinstance(content, bytes):
        git.update(content)
        sha.update(content)
    else:
        with content.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                git.update(chunk)
                sha.update(chunk)
    return _Local(content, git.hexdigest(), sha.hexdigest())


def _translate(
    exc: BaseException, repo_id: str, *, bad_request_means_invalid: bool = False
) -> HubError:
    # huggingface_hub checks a repo id before sending it; on create, the Hub answers 400 to a
    # name it refuses (elsewhere a 400 is our own mistake, not the user's repo id).
    if isinstance(exc, HFValidationError) or (
        bad_request_means_invalid and isinstance(exc, BadRequestError)
    ):
        return HubInvalidRepo(f"{repo_id}: {' '.join(str(exc).split())[:300]}")
    outage = _upload_outage(exc, repo_id)
    return outage if outage is not None else translate_error(exc, repo_id)


def _upload_outage(exc: BaseException, repo_id: str) -> HubUnavailable | None:
    """A large-file upload that met an outage, told apart from one that failed for good.

    huggingface_hub wraps whatever stops an LFS upload (the PUT to storage, or its verify call)
    in a bare ``RuntimeError("Error while uploading 'x' to the Hub.")``, which would read as a
    permanent failure: a storage 503 or a dropped connection (after the client's own retries)
    is an outage like any other. Other causes keep the wrapper's message, which, unlike the
    cause's, holds no signed upload URL.
    """
    if not isinstance(exc, RuntimeError) or exc.__cause__ is None:
        return None
    cause = translate_error(exc.__cause__, repo_id)
    if not isinstance(cause, HubUnavailable):
        return None
    return HubUnavailable(f"{cause} ({' '.join(str(exc).split())[:200]})")
