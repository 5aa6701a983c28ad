"""``loraq status JOB_ID``: a job's latest status, from the volume's journal or from the Hub.

Exit 0 when a status was found (whatever the job's state: a failed job is still an answer),
1 when none could be read, 2 for bad arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

from contracts.status import JobStatusView
from infra.job_status import StatusUnavailable, status_from_hub, status_from_volume
from loraq import status_text

EXIT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE = 0, 1, 2


def _read(
    job_id: str, volume: Path | None, repo: str | None, endpoint: str | None, token: str | None
) -> JobStatusView:
    if volume is not None:
        return status_from_volume(volume, job_id)
    assert repo is not None
    view = status_from_hub(repo, endpoint=endpoint, token=token)
    if view.job_id != job_id:
        raise StatusUnavailable(f"{repo} reports job {view.job_id}, not {job_id}")
    return view


def status_command(
    job_id: str,
    *,
    volume: Path | None,
    repo: str | None,
    endpoint: str | None,
    token: str | None,
    as_json: bool,
) -> int:
    if (volume is None) == (repo is None):
        print("loraq status: pass exactly one of --volume and --repo", file=sys.stderr)
        return EXIT_USAGE
    try:
        view = _read(job_id, volume, repo, endpoint, token)
    except StatusUnavailable as exc:
        print(f"loraq status: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if as_json:
        print(view.model_dump_json(indent=2))
    else:
        print("\n".join(status_text.status_lines(view)))
    return EXIT_FOUND
