"""``huggingface``: the LoRA, its config, a model card and the loss chart, in one Hub commit.

The repository is ``output.huggingface.repo_id``, else ``<user>/loraq-<job_id>`` for the token's
user; private unless ``output.huggingface.private`` is false. ``output.huggingface.all_epochs``
adds every saved epoch under ``epochN/``.

Idempotent, because a publish may run again after a crash: the repository name derives from
the job, creating one that exists is fine, and every uploaded file is a pure function of the
job (the card has no timestamps, the chart is rendered deterministically), so a re-run finds
nothing changed and makes no second commit.

The token stays in memory: it goes to the Hub per call and into nothing we write; error
messages pass through ``ctx.redact``. huggingface_hub is synchronous, so the whole exchange
runs in a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from pydantic import SecretStr

from contracts.enums import EventType, OutputMethod, StageName
from contracts.request import HuggingFaceOutput
from contracts.result import OutputInfo
from infra.hub import HubAccessDenied, HubError, HubNotFound, HubUnavailable
from infra.hub_upload import HubInvalidRepo, HubUploader, default_repo_id
from infra.loss_chart import render_loss_chart
from stages.context import StageContext
from stages.delivery import Bundle, DeliveryError
from stages.delivery.model_card import CardInput, render

CARD = "README.md"
LOSS_CHART = "loss_chart.png"
ADAPTER_CONFIG = "adapter_config.json"
TOKEN_FIELD = "output.huggingface.token"  # noqa: S105 (a field name, not a secret)
REPO_FIELD = "output.huggingface.repo_id"

log = structlog.get_logger(__name__)


async def deliver(ctx: StageContext, bundle: Bundle) -> OutputInfo:
    token = ctx.request.huggingface_token()
    if token is None:
        raise DeliveryError(
            "the huggingface method needs a token with the write role "
            "(output.huggingface.token or api_keys.huggingface_token)",
            retryable=False,
            field=TOKEN_FIELD,
        )
    options = ctx.request.output.huggingface or HuggingFaceOutput()
    try:
        repo_id, repo_url, commit = await asyncio.to_thread(_publish, ctx, bundle, options, token)
    except HubError as exc:
        raise _delivery_error(ctx, exc) from exc
    log.info(
        "hub_published",
        job_id=ctx.job_id,
        stage=StageName.PUBLISH.value,
        repo_id=repo_id,
        commit=commit or "unchanged",
    )
    uploader = HubUploader(token, ctx.settings.hf_endpoint)
    name = bundle.lora_path.name
    return OutputInfo(
        download_url=uploader.file_url(repo_id, name, download=True),
        safetensors_url=uploader.file_url(repo_id, name, download=False),
        repo_url=repo_url,
        download_method=OutputMethod.HUGGINGFACE,
        expires_in_days=None,
        note="Private repository: downloads need a token with access to it"
        if options.private
        else None,
        network_volume_path=str(bundle.model_dir),
    )


def _publish(
    ctx: StageContext, bundle: Bundle, options: HuggingFaceOutput, token: SecretStr
) -> tuple[str, str, str | None]:
    """Create the repository if needed and commit the files: (repo id, repo URL, commit)."""
    uploader = HubUploader(token, ctx.settings.hf_endpoint)
    repo_id = options.repo_id or default_repo_id(uploader.whoami(), ctx.job_id)
    repo_url = uploader.ensure_repo(repo_id, private=options.private)
    files = _files(ctx, bundle, all_epochs=options.all_epochs)
    message = f"LoRA from loraq job {ctx.job_id} ({bundle.model_dir.name})"
    return repo_id, repo_url, uploader.commit(repo_id, files, message)


def _files(ctx: StageContext, bundle: Bundle, *, all_epochs: bool) -> dict[str, bytes | Path]:
    """Path in the repository → content: the newest LoRA at the top, then the extras."""
    name = bundle.lora_path.name
    files: dict[str, bytes | Path] = {name: bundle.lora_path}
    if (bundle.model_dir / ADAPTER_CONFIG).is_file():
        files[ADAPTER_CONFIG] = bundle.model_dir / ADAPTER_CONFIG
    folders = [d.name for d in bundle.epoch_dirs] if all_epochs else []
    for folder in bundle.epoch_dirs if all_epochs else ():
        files[f"{folder.name}/{name}"] = folder / name
        if (folder / ADAPTER_CONFIG).is_file():
            files[f"{folder.name}/{ADAPTER_CONFIG}"] = folder / ADAPTER_CONFIG
    points = _loss_points(ctx)
    if points:
        files[LOSS_CHART] = render_loss_chart(points)
    files[CARD] = render(
        CardInput(
            request=ctx.request,
            job_id=ctx.job_id,
            lora_file=name,
            epochs_completed=int(ctx.output_of(StageName.TRAIN, "epochs_completed") or 0),
            latest_epoch=bundle.model_dir.name,
            loss_chart=LOSS_CHART if points else None,
            epoch_folders=folders,
        )
    )
    return files


def _loss_points(ctx: StageContext) -> list[tuple[int, float]]:
    """(step, loss) from the job's progress events, in the order they were recorded."""
    points = []
    for event in ctx.store.read_events(ctx.job_id):
        if event.type is not EventType.JOB_PROGRESS:
            continue
        step, loss = event.data.get("step"), event.data.get("loss")
        if isinstance(step, int) and isinstance(loss, int | float):
            points.append((step, float(loss)))
    return points


def _delivery_error(ctx: StageContext, exc: HubError) -> DeliveryError:
    message = ctx.redact(f"Hugging Face Hub: {exc}")
    if isinstance(exc, HubAccessDenied):
        return DeliveryError(
            f"{message} (the token needs the write role, and the repository must be in the "
            "token's own namespace or an organization it may write to)",
            retryable=False,
            field=TOKEN_FIELD,
        )
    if isinstance(exc, HubInvalidRepo | HubNotFound):
        return DeliveryError(message, retryable=False, field=REPO_FIELD)
    return DeliveryError(message, retryable=isinstance(exc, HubUnavailable))
