"""Provision: make sure the base model's weights are on the volume before training starts.

A model type's folder is ready, in this order of checks:
1. its ``.complete`` marker lists files that are all still there, at their sizes;
2. without a marker, every file diffusion-pipe's loader reads is present and sound (a volume
   pre-provisioned by hand): used as it is, with no network access at all;
3. otherwise it is downloaded from the Hub under the model type's lock, so that of all the
   workers sharing the volume exactly one downloads and the others wait and then find it ready.
   Each repository is pinned to one commit, fetched with huggingface_hub (a dropped connection
   resumes with a Range request; files finished before a crash are kept), then every file is
   checked against the Hub's listing and the loader's list before the marker is written.

A loader that asks huggingface_hub for a repo id while it loads (diffusers' ``from_single_file``
for SDXL takes the pipeline's configs and tokenizers that way) is served from the Hugging Face
cache on the volume, ``models/hf-cache``: provisioning fills it with the loader's own patterns,
and a folder counts as ready only when huggingface_hub's offline look-up finds every file there.
The trainer runs with ``HF_HUB_OFFLINE=1`` and that cache, so a provisioned volume trains with no
network, and a worker never depends on the Hub being up in the middle of a job.

``tiny`` is built in (its base weights come from a fixed seed): nothing to fetch.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from contracts.enums import ErrorCode, StageName
from infra.hub import (
    DownloadStopped,
    HubAccessDenied,
    HubClient,
    HubError,
    HubNotFound,
    HubUnavailable,
    RemoteFile,
    cached_snapshot,
)
from infra.redact import Redactor
from infra.volume import MODELS_DIR
from stages import weights, weights_lock
from stages.context import StageContext, StageOutcome
from stages.errors import Interrupted, Permanent, Retryable, StageFailure
from stages.registry import CachedRepo, HubSource, ModelSpec, spec_for

NAME = StageName.PROVISION
TOKEN_FIELD = "input.api_keys.huggingface_token"  # noqa: S105 (a field name, not a secret)
# Headroom beyond the bytes to download: huggingface_hub writes each file beside its target.
_FREE_SPACE_MARGIN = 1 << 30
# The Hugging Face cache every model type shares, beside their folders in models/.
HUB_CACHE = "hf-cache"

log = structlog.get_logger("loraq.provision")


@dataclass(frozen=True)
class Provisioned:
    """Where the weights are and how they became ready (recorded in the stage's outputs)."""

    how: Literal["marker", "preprovisioned", "downloaded"]
    models_dir: Path
    downloaded_bytes: int = 0


class _Unusable(Exception):
    """The folder's contents are wrong in a way another download cannot fix."""


def hub_cache_dir(volume: Path) -> Path:
    """Where provisioning puts the files loaders fetch by repo id, and the trainer reads them."""
    return volume / MODELS_DIR / HUB_CACHE


async def run(ctx: StageContext) -> StageOutcome:
    spec = spec_for(ctx.request.model_type)
    if spec.builtin:
        return StageOutcome({"weights": "builtin"})
    result = await provision_model(
        spec,
        ctx.store.models_dir(ctx.request.model_type),
        HubClient(ctx.settings.hf_endpoint),
        ctx.request.huggingface_token(),
        should_stop=ctx.stop_requested.is_set,
        retry_wait_s=ctx.settings.transient_retry_wait_s,
        hub_cache=hub_cache_dir(ctx.store.volume),
    )
    return StageOutcome(
        {
            "weights": str(result.models_dir),
            "provisioned_by": result.how,
            "downloaded_bytes": result.downloaded_bytes,
        }
    )


async def provision_model(
    spec: ModelSpec,
    models_dir: Path,
    hub: HubClient,
    token: SecretStr | None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    retry_wait_s: float = 1.0,
    poll_s: float = 1.0,
    on_wait: Callable[[], None] | None = None,
    hub_cache: Path | None = None,
) -> Provisioned:
    """Make ``models_dir`` ready for ``spec``; raise ``Permanent``/``Retryable``/``Interrupted``.

    ``on_wait`` is told when another worker is downloading the same weights (default: a log
    line), since waiting for a 30 GB download looks like a hang otherwise. ``hub_cache``
    defaults to the volume's (``models_dir`` is ``<volume>/models/<type>``).
    """
    hub_cache = models_dir.parent / HUB_CACHE if hub_cache is None else hub_cache
    redact = Redactor([token.get_secret_value()] if token is not None else [])
    lock = weights_lock.lock_path(models_dir)
    if on_wait is None:

        def on_wait() -> None:
            log.info(
                "weights_wait_for_other_download", model_type=spec.model_type.value, lock=str(lock)
            )

    try:
        # Stats and safetensors headers: cheap, but off the loop on a network file system.
        if (ready := await asyncio.to_thread(_ready, spec, models_dir, hub_cache)) is not None:
            return ready
        if spec.gated and token is None:
            raise HubAccessDenied("no token was given", gated=True)
        async with weights_lock.hold(lock, should_stop, poll_s, on_wait):
            # Another worker may have finished while we waited for the lock.
            if (ready := await asyncio.to_thread(_ready, spec, models_dir, hub_cache)) is not None:
                return ready
            downloaded = await _download_retrying(
                spec, models_dir, hub_cache, hub, token, should_stop, retry_wait_s
            )
    except (HubError, _Unusable) as exc:
        raise _failure(spec, exc, token is not None, redact) from None
    log.info("weights_downloaded", model_type=spec.model_type.value, bytes=downloaded)
    return Provisioned("downloaded", models_dir, downloaded)


def _ready(spec: ModelSpec, models_dir: Path, hub_cache: Path) -> Provisioned | None:
    how = _folder_ready(spec, models_dir)
    if how is None:
        return None
    if missing := _missing_from_cache(spec, hub_cache):
        log.info("weights_hub_cache_incomplete", model_type=spec.model_type.value, missing=missing)
        return None
    if how == "preprovisioned":
        log.info("weights_preprovisioned", model_type=spec.model_type.value, path=str(models_dir))
    return Provisioned(how, models_dir)


def _folder_ready(spec: ModelSpec, models_dir: Path) -> Literal["marker", "preprovisioned"] | None:
    if weights.read_marker(spec, models_dir) is not None:
        return "marker"
    findings = weights.inspect(spec, models_dir)
    if findings.wrong:
        raise _Unusable("; ".join(findings.wrong))
    return "preprovisioned" if findings.complete else None


def _missing_from_cache(spec: ModelSpec, hub_cache: Path) -> list[str]:
    """The files the loader would not find offline in the Hub cache, as ``<repo>/<path>``.

    Reads refs, the cached listing and stats, never the network: it runs before every job.
    """
    missing: list[str] = []
    for repo in spec.hub_cache:
        folder = cached_snapshot(repo.repo_id, repo.revision, hub_cache, repo.allow_patterns)
        missing += [
            f"{repo.repo_id}/{path}"
            for path in repo.required
            if folder is None or not (folder / path).is_file()
        ]
    return missing


async def _download_retrying(
    spec: ModelSpec,
    models_dir: Path,
    hub_cache: Path,
    hub: HubClient,
    token: SecretStr | None,
    should_stop: Callable[[], bool],
    retry_wait_s: float,
) -> int:
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(HubUnavailable),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=retry_wait_s, max=30),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            # Blocking I/O for minutes to hours: off the event loop, so heartbeats go on.
            return await asyncio.to_thread(
                _download_all, spec, models_dir, hub_cache, hub, token, should_stop
            )
    raise AssertionError("unreachable")


def _download_all(
    spec: ModelSpec,
    models_dir: Path,
    hub_cache: Path,
    hub: HubClient,
    token: SecretStr | None,
    should_stop: Callable[[], bool],
) -> int:
    """Download every source, verify the whole folder, then write the marker. Holds the lock."""
    records: list[weights.SourceRecord] = []
    downloaded = 0
    for source in spec.sources:
        if should_stop():
            raise DownloadStopped("the download was stopped")
        record, fetched = _download_source(source, models_dir, hub, token, should_stop)
        records.append(record)
        downloaded += fetched
    for repo in spec.hub_cache:
        if should_stop():
            raise DownloadStopped("the download was stopped")
        _download_to_cache(repo, hub_cache, hub, token, should_stop)
    findings = weights.inspect(spec, models_dir)
    if not findings.complete:
        raise _Unusable(findings.describe())
    if missing := _missing_from_cache(spec, hub_cache):
        raise _Unusable(f"the Hub cache lacks {', '.join(missing[:5])}")
    weights.write_marker(spec, models_dir, records)
    return downloaded


def _download_to_cache(
    repo: CachedRepo,
    hub_cache: Path,
    hub: HubClient,
    token: SecretStr | None,
    should_stop: Callable[[], bool],
) -> None:
    # Config and tokenizer files, kilobytes: no space check, and huggingface_hub's own locks in
    # the cache keep two writers of one file apart (the model type's lock already does).
    hub_cache.mkdir(parents=True, exist_ok=True)
    folder = hub.download_to_cache(
        repo.repo_id, repo.revision, hub_cache, repo.allow_patterns, token, should_stop
    )
    log.info("weights_hub_cache_filled", repo_id=repo.repo_id, snapshot=str(folder))


def _download_source(
    source: HubSource,
    models_dir: Path,
    hub: HubClient,
    token: SecretStr | None,
    should_stop: Callable[[], bool],
) -> tuple[weights.SourceRecord, int]:
    folder = models_dir / source.subdir
    snapshot = hub.snapshot(source.repo_id, source.revision, token)
    if snapshot.gated and token is None:
        raise HubAccessDenied(f"{source.repo_id} is gated", gated=True)
    wanted = snapshot.matching(source.allow_patterns)
    if not wanted:
        raise HubNotFound(f"{source.repo_id} has no files matching {list(source.allow_patterns)}")
    folder.mkdir(parents=True, exist_ok=True)
    weights.remove_orphaned_partials(folder)
    _remove_damaged(source, models_dir)
    needed = [f for f in wanted if weights.file_size(folder / f.path) != f.size]
    _check_free_space(folder, needed)
    log.info(
        "weights_download_started",
        repo_id=source.repo_id,
        commit=snapshot.commit,
        files=len(needed),
        bytes=sum(f.size for f in needed),
    )
    hub.download(snapshot, folder, source.allow_patterns, token, should_stop)
    _verify_sizes(folder, wanted, source.repo_id)
    record = weights.SourceRecord(
        repo_id=source.repo_id,
        revision=source.revision,
        commit=snapshot.commit,
        subdir=source.subdir,
        files={f.path: f.size for f in wanted},
    )
    return record, sum(f.size for f in needed)


def _remove_damaged(source: HubSource, models_dir: Path) -> None:
    """A truncated file that huggingface_hub's metadata vouches for would be kept: drop it."""
    for relative in weights.inspect_source(source, models_dir).damaged:
        (models_dir / relative).unlink(missing_ok=True)


def _verify_sizes(folder: Path, wanted: list[RemoteFile], repo_id: str) -> None:
    wrong = [f for f in wanted if weights.file_size(folder / f.path) != f.size]
    for remote in wrong:
        # Gone, so the next attempt downloads it again instead of trusting its metadata.
        (folder / remote.path).unlink(missing_ok=True)
    if wrong:
        names = ", ".join(f.path for f in wrong[:5])
        raise HubUnavailable(f"{repo_id}: {len(wrong)} file(s) incomplete after download: {names}")


def _check_free_space(folder: Path, needed: list[RemoteFile]) -> None:
    want = sum(f.size for f in needed)
    free = shutil.disk_usage(folder).free
    if want and free < want + _FREE_SPACE_MARGIN:
        raise HubUnavailable(
            f"the volume has {free / 1e9:.1f} GB free; {want / 1e9:.1f} GB more are needed"
        )


def _failure(
    spec: ModelSpec, exc: Exception, has_token: bool, redact: Redactor
) -> StageFailure | Interrupted:
    what = f"{spec.display_name} weights"
    if isinstance(exc, DownloadStopped):
        return Interrupted("the worker is shutting down", stage=NAME)
    if isinstance(exc, HubAccessDenied):
        advice = (
            "the token was refused: it must belong to an account that accepted the model's "
            "license on the Hub"
            if has_token
            else "this model is gated: send a Hugging Face token that has access"
        )
        return Permanent(
            ErrorCode.PROVISION_FAILED, redact(f"{what}: {advice} ({exc})"), field=TOKEN_FIELD
        )
    if isinstance(exc, HubNotFound | _Unusable):
        return Permanent(
            ErrorCode.PROVISION_FAILED,
            redact(f"{what} cannot be provisioned: {exc}"),
            field="model_type",
        )
    return Retryable(ErrorCode.PROVISION_FAILED, redact(f"{what}: {exc}"), field="model_type")
