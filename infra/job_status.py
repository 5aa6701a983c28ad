"""Read a job's latest status from where it outlives the queue: the volume or the Hub.

The volume's journal (``jobs/<id>/events.jsonl``) is folded into a ``JobStatusView``; the Hub
holds the same view, already folded, as ``UPDATES/status.json`` in the job's output repository.
Both give the same shape, so ``loraq status`` prints either the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from pydantic import ValidationError

from contracts.status import JobStatusView, fold_events
from infra.updates_files import STATUS_FILE
from infra.volume import EVENTS_FILE, JOBS_DIR, JobStore


class StatusUnavailable(Exception):
    """No status could be read; the message says where we looked and what to try."""


def status_from_volume(volume: Path, job_id: str) -> JobStatusView:
    if not (volume / JOBS_DIR).is_dir():
        raise StatusUnavailable(f"{volume} is not a loraq volume (it has no {JOBS_DIR}/ folder)")
    events = JobStore(volume).read_events(job_id)
    if not events:
        where = volume / JOBS_DIR / job_id / EVENTS_FILE
        raise StatusUnavailable(f"no events for job {job_id} in {where}")
    return fold_events(job_id, events)


def status_from_hub(repo_id: str, *, endpoint: str | None, token: str | None) -> JobStatusView:
    """``UPDATES/status.json`` at the head of the model repository ``repo_id``.

    Downloaded into a throw-away cache: the file changes with every update, and a status
    query should leave nothing behind in the user's Hugging Face cache.
    """
    with tempfile.TemporaryDirectory(prefix="loraq-status-") as cache:
        try:
            path = hf_hub_download(
                repo_id,
                STATUS_FILE,
                repo_type="model",
                endpoint=endpoint,
                token=token,
                cache_dir=cache,
            )
            text = Path(str(path)).read_text(encoding="utf-8")
        except GatedRepoError as exc:
            raise StatusUnavailable(f"{repo_id}: access refused ({exc})") from exc
        except RepositoryNotFoundError as exc:
            # The Hub answers 404 for a private repository without a (valid) token as well.
            raise StatusUnavailable(
                f"{repo_id}: repository not found, or private and HF_TOKEN does not grant it"
            ) from exc
        except RemoteEntryNotFoundError as exc:
            raise StatusUnavailable(f"{repo_id} has no {STATUS_FILE} (yet)") from exc
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
            # LocalEntryNotFoundError: the Hub did not answer and the (empty) cache cannot.
            raise StatusUnavailable(f"{repo_id}: the Hub could not be reached ({exc})") from exc
    try:
        return JobStatusView.model_validate_json(text)
    except ValidationError as exc:
        raise StatusUnavailable(f"{repo_id}: {STATUS_FILE} is not a loraq status") from exc
