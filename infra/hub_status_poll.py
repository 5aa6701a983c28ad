"""Follow a job's ``UPDATES/status.json`` on the Hub: one small request a poll, a download on
change.

Each poll asks only for the file's metadata (a ``HEAD`` of its resolve URL: no body, the same
call ``hf_hub_download`` starts with) and compares its ETag, the file's content hash, with the
last one read. The file is downloaded only when that changed. A commit that leaves the status
alone (the LoRA's upload, a README) changes the repo's commit but not the ETag, so it costs
nothing either.

Requests are made once, without huggingface_hub's own retries: the caller decides how long to
wait after a 429 or a 5xx (``retry_after_s`` reads the Hub's ``Retry-After``), so a watch never
turns an outage into a burst of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import get_hf_file_metadata, get_session, hf_hub_url, hf_raise_for_status
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError
from huggingface_hub.utils._headers import build_hf_headers
from pydantic import SecretStr, ValidationError

from contracts.status import JobStatusView
from infra.hub import HubError, HubUnavailable, translate_error
from infra.hub_http import Response
from infra.updates_files import STATUS_FILE

# Seconds to wait for the Hub's answer to one request (huggingface_hub's own metadata timeout).
_REQUEST_TIMEOUT_S = 10.0


class HubUnreachable(HubUnavailable):
    """No answer at all (refused, timed out, no such host), where a 429 or 5xx is an answer."""


@dataclass(frozen=True)
class StatusPoll:
    """What one poll found."""

    exists: bool  # False: the repo is there, the job has not reported yet
    view: JobStatusView | None  # the status when it changed since the last poll, else None


class HubStatusPoller:
    """Poll ``UPDATES/status.json`` of one model repository (blocking calls; one per thread).

    The token is ``None`` for huggingface_hub's default (``HF_TOKEN``, else the stored login),
    as ``loraq status`` reads it: this runs on the user's own machine.
    """

    def __init__(
        self, repo_id: str, *, endpoint: str | None = None, token: SecretStr | None = None
    ) -> None:
        self.repo_id = repo_id
        self._endpoint = endpoint
        self._token = token.get_secret_value() if token is not None else None
        self._url = hf_hub_url(repo_id, STATUS_FILE, repo_type="model", endpoint=endpoint)
        self._etag: str | None = None

    def poll(self) -> StatusPoll:
        """The file's state now.

        Raises ``infra.hub.HubUnavailable`` for what a later poll may get past (429, 5xx, the
        network: ``HubUnreachable``) and another ``HubError`` for what it will not (no such
        repository, no access, a file that is not a loraq status).
        """
        try:
            metadata = get_hf_file_metadata(
                self._url, token=self._token, timeout=_REQUEST_TIMEOUT_S, endpoint=self._endpoint
            )
            if metadata.etag is not None and metadata.etag == self._etag:
                return StatusPoll(exists=True, view=None)
            reply = get_session().get(
                self._url, headers=build_hf_headers(token=self._token), timeout=_REQUEST_TIMEOUT_S
            )
            hf_raise_for_status(reply)
        except RemoteEntryNotFoundError:
            return StatusPoll(exists=False, view=None)
        except Exception as exc:
            error = translate_error(exc, self.repo_id)
            if isinstance(error, HubUnavailable) and not isinstance(exc, HfHubHTTPError):
                error = HubUnreachable(str(error))
            raise error from exc
        view = self._parse(reply.content)
        # The ETag of the bytes read, not of the HEAD: a commit in between is read again.
        self._etag = _etag(reply) or metadata.etag
        return StatusPoll(exists=True, view=view)

    def _parse(self, content: bytes) -> JobStatusView:
        try:
            return JobStatusView.model_validate_json(content)
        except ValidationError as exc:
            raise HubError(f"{self.repo_id}: {STATUS_FILE} is not a loraq status") from exc


def retry_after_s(exc: BaseException) -> float | None:
    """The wait the Hub asked for (``Retry-After`` in seconds) in the reply behind ``exc``."""
    cause = exc.__cause__
    if not isinstance(cause, HfHubHTTPError) or cause.response is None:
        return None
    value = cause.response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _etag(reply: Response) -> str | None:
    value = reply.headers.get("X-Linked-Etag") or reply.headers.get("ETag")
    return value.removeprefix("W/").strip('"') if value else None
