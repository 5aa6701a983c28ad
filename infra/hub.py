"""The Hugging Face Hub adapter: what a repository holds at a commit, and downloading it.

Talks to the Hub (or any Hub-compatible endpoint, such as the tests' local one) only through the
real ``huggingface_hub`` client. Errors come back as four kinds a caller can act on: access
denied (a token is missing or not allowed), not found, unavailable (worth another try) and
stopped (the caller asked to stop).

The token is passed per call, so it lives only in the caller's memory: it is never given to
``login()`` (which saves it under ``~/.cache/huggingface``), and without one the client is told
``token=False`` so it does not pick up a token from the machine either. huggingface_hub masks
the ``Authorization`` header in its own debug logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._paths import filter_repo_objects
from huggingface_hub.utils.tqdm import tqdm as hf_tqdm
from pydantic import SecretStr

from infra.hub_http import HTTPError

# Where huggingface_hub keeps its own bookkeeping inside a ``local_dir`` download.
LOCAL_DIR_METADATA = ".cache/huggingface"


class HubError(Exception):
    """A Hub call failed; the subclass says whether another attempt could pass."""


class HubAccessDenied(HubError):
    """A gated or private repository refused us: a (valid, granted) token is needed."""

    def __init__(self, message: str, *, gated: bool) -> None:
        super().__init__(message)
        self.gated = gated


class HubNotFound(HubError):
    """The repository, revision or file does not exist."""


class HubUnavailable(HubError):
    """Network trouble, throttling or a server error: a later attempt may pass."""


class DownloadStopped(HubError):
    """The caller asked the download to stop (the worker is shutting down)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class RepoSnapshot:
    """A repository at one commit: downloads pin the commit, so a push mid-download is harmless."""

    repo_id: str
    commit: str
    gated: bool
    files: tuple[RemoteFile, ...]

    def matching(self, allow_patterns: tuple[str, ...]) -> list[RemoteFile]:
        """The files ``snapshot_download(allow_patterns=...)`` would fetch (same matcher)."""
        by_path = {f.path: f for f in self.files}
        return [
            by_path[p]
            for p in filter_repo_objects(list(by_path), allow_patterns=list(allow_patterns))
        ]


def _token(token: SecretStr | None) -> str | bool:
    # False, not None: None would make huggingface_hub fall back to HF_TOKEN or a saved token.
    return token.get_secret_value() if token is not None else False


class HubClient:
    """List and download model repositories on one Hub endpoint."""

    def __init__(self, endpoint: str | None = None, *, max_workers: int = 8) -> None:
        self._endpoint = endpoint
        self._max_workers = max_workers
        self._api = HfApi(endpoint=endpoint, token=False)

    def snapshot(self, repo_id: str, revision: str, token: SecretStr | None) -> RepoSnapshot:
        """Resolve ``revision`` to a commit and list every file there with its size."""
        try:
            info = self._api.repo_info(repo_id, revision=revision, token=_token(token))
            assert info.sha is not None, "the Hub always answers with the commit"
            files = tuple(
                RemoteFile(entry.path, int(entry.size))
                for entry in self._api.list_repo_tree(
                    repo_id, recursive=True, revision=info.sha, token=_token(token)
                )
                if isinstance(entry, RepoFile)
            )
        except Exception as exc:
            raise translate_error(exc, repo_id) from exc
        return RepoSnapshot(repo_id, info.sha, bool(info.gated), files)

    def download(
        self,
        snapshot: RepoSnapshot,
        local_dir: Path,
        allow_patterns: tuple[str, ...],
        token: SecretStr | None,
        should_stop: Callable[[], bool],
    ) -> None:
        """Fetch the matching files into ``local_dir``, keeping the repository's layout.

        Files already there from the same commit are skipped, so a second call after a crash
        fetches only what is missing. A connection dropped mid-file is resumed with a Range
        request from the last whole 10 MiB chunk written (huggingface_hub tries five times
        without new data); a file cut short by a killed process starts over.
        """
        try:
            snapshot_download(
                snapshot.repo_id,
                revision=snapshot.commit,
                local_dir=local_dir,
                # Inside the model folder: nothing lands in the worker's home directory.
                cache_dir=local_dir / LOCAL_DIR_METADATA / "hub-cache",
                allow_patterns=list(allow_patterns),
                token=_token(token),
                endpoint=self._endpoint,
                max_workers=self._max_workers,
                tqdm_class=_stoppable_progress(should_stop),
            )
        except Exception as exc:
            raise translate_error(exc, snapshot.repo_id) from exc

    def download_to_cache(
        self,
        repo_id: str,
        revision: str,
        cache_dir: Path,
        allow_patterns: tuple[str, ...],
        token: SecretStr | None,
        should_stop: Callable[[], bool],
    ) -> Path:
        """Fetch the matching files into the Hugging Face cache at ``cache_dir``: its snapshot.

        For a loader that asks huggingface_hub for a repo id rather than opening a path
        (diffusers' single-file loading), so the files must be where huggingface_hub looks for
        them offline: ``refs/<revision>``, ``snapshots/<commit>/`` and the commit's file listing,
        all written by huggingface_hub itself. ``revision`` stays the branch the loader names:
        a download pinned to a commit writes no ``refs/`` entry, and the loader would not find
        it. One call resolves, lists and fetches one commit, so a push mid-download is harmless.
        """
        try:
            folder = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=list(allow_patterns),
                token=_token(token),
                endpoint=self._endpoint,
                max_workers=self._max_workers,
                tqdm_class=_stoppable_progress(should_stop),
            )
        except Exception as exc:
            raise translate_error(exc, repo_id) from exc
        return Path(folder)


def cached_snapshot(
    repo_id: str, revision: str, cache_dir: Path, allow_patterns: tuple[str, ...]
) -> Path | None:
    """The snapshot folder a loader running with ``HF_HUB_OFFLINE=1`` gets, or None.

    huggingface_hub's own offline look-up, reading only the disk: the branch's ``refs/`` entry,
    its snapshot folder and, where the commit's listing is cached, every listed file that
    matches ``allow_patterns`` (a snapshot cut short by a crash is refused, not half-used).
    """
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(allow_patterns),
            local_files_only=True,
            token=False,
        )
    except LocalEntryNotFoundError:  # IncompleteSnapshotError is one too
        return None
    return Path(folder)


def _stoppable_progress(should_stop: Callable[[], bool]) -> type[hf_tqdm]:
    """A silent progress bar that aborts the download when asked to.

    huggingface_hub offers no cancellation, but it reports every downloaded chunk to the
    snapshot's progress bars; raising there unwinds each download thread within one chunk
    (its temporary file is removed on the way out).
    """

    class _Progress(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

        def update(self, n: float | None = 1) -> bool | None:
            if should_stop():
                raise DownloadStopped("the download was stopped")
            result: bool | None = super().update(n)
            return result

    return _Progress


def translate_error(exc: BaseException, repo_id: str) -> HubError:
    """Map huggingface_hub's and httpx's exceptions onto the four kinds callers act on."""
    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, GatedRepoError):
        return HubAccessDenied(f"{repo_id} is gated: {_one_line(exc)}", gated=True)
    if isinstance(exc, RevisionNotFoundError | RemoteEntryNotFoundError):
        return HubNotFound(f"{repo_id}: {_one_line(exc)}")
    if isinstance(exc, RepositoryNotFoundError):
        return HubNotFound(f"{repo_id} was not found (or is private): {_one_line(exc)}")
    if isinstance(exc, HfHubHTTPError):
        return _from_status(exc, repo_id)
    if isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled | HTTPError | OSError):
        return HubUnavailable(f"{repo_id}: {type(exc).__name__}: {_one_line(exc)}")
    return HubError(f"{repo_id}: {type(exc).__name__}: {_one_line(exc)}")


def _from_status(exc: HfHubHTTPError, repo_id: str) -> HubError:
    status = exc.response.status_code if exc.response is not None else 0
    if status in (401, 403):
        return HubAccessDenied(f"{repo_id}: access denied ({status})", gated=False)
    if status == 429 or status >= 500:
        return HubUnavailable(f"{repo_id}: the Hub answered {status}")
    return HubError(f"{repo_id}: the Hub answered {status}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    """huggingface_hub's messages span paragraphs: one line, bounded, for events and logs."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:300] if text else type(exc).__name__
