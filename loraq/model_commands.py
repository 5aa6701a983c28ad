"""``loraq config`` and ``loraq provision``: check a job before paying for a GPU; fill a volume.

``config`` is the dry run: it runs the worker's own checks with the worker's own settings
(``LORAQ_*`` from the environment, as ``loraq worker`` reads them): the request's validation,
preflight (captioning with the worker's backend, the model's memory need against the GPU's),
the Hugging Face token against the gated base model unless the volume already holds it (the
refusal the provision stage would make, with its field), and each dataset URL with a one-byte
range GET under the download's own SSRF rules and size cap. Then it writes the ``train.toml``
and ``dataset.toml`` the job would train with, with paths under the given volume, and says what
a run would cost: the predicted steps (given the dataset's file counts), the memory estimate and
a rough time. It never writes to the volume; ``--offline`` skips the Hub and the dataset URLs.
Wherever a worker would refuse the job, it exits 1 naming the field.

``provision`` downloads model types' weights into ``<volume>/models/<type>/`` exactly as the
provision stage does (same lock, same checks, same marker), so a volume can be filled before
any job arrives; ``joycaption`` fills ``models/joycaption/`` the way the caption stage would on
its first uncaptioned image. The token comes from ``HF_TOKEN``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from huggingface_hub import HfApi
from pydantic import SecretStr, ValidationError

from contracts.enums import ErrorCode, ModelType
from contracts.request import JobInput, JobRequest
from infra.download import (
    AddressRefused,
    AllowedResolver,
    DownloadFailed,
    DownloadRefused,
    Pace,
    get_checked,
)
from infra.hub import HubAccessDenied, HubClient, HubNotFound, translate_error
from infra.redact import Redactor, redact
from infra.settings import Settings
from infra.volume import JOBS_DIR, MODELS_DIR, JobPaths
from stages import model_budget, weights
from stages.configure import Configs, build_configs, write_configs
from stages.errors import Interrupted, Permanent, Retryable, StageFailure
from stages.pipeline import preflight
from stages.provision import TOKEN_FIELD, provision_model
from stages.registry import AuxiliaryModel, ModelSpec, joycaption_spec, spec_for


def default_volume() -> Path:
    """The worker's volume setting (``LORAQ_VOLUME``), else its default."""
    return Path(os.environ.get("LORAQ_VOLUME", "/var/lib/loraq"))


# The job id when the request names none (a worker would use the SQS MessageId).
PLACEHOLDER_JOB_ID = "JOB_ID"
# The dry run never reads the queue, but Settings requires one.
_NO_QUEUE = "unused-by-loraq-config"
# A dataset host that does not answer a one-byte request within this is reported as down.
_PROBE_WAIT_S = 30.0
_CONTENT_RANGE_TOTAL = re.compile(r"bytes (?:\d+-\d+|\*)/(\d+)")


def config_command(
    job_file: Path,
    out: Path,
    volume: Path,
    err: TextIO | None = None,
    *,
    offline: bool = False,
    media: Mapping[str, int] | None = None,
    gpu_memory_gib: float | None = None,
    report: TextIO | None = None,
) -> int:
    """Check the job as a worker would; on success write its TOML files into ``out``.

    1 and the problem, field first, on ``err`` wherever a worker would refuse the job.
    ``media`` is the dataset's file counts (``{"images": 40}``), for the step prediction.
    """
    err, report = err or sys.stderr, report or sys.stdout
    request = _read_request(job_file, err)
    settings = _worker_settings(volume, gpu_memory_gib, err)
    if request is None or settings is None:
        return 1
    gpu = model_budget.gpu_memory_gib(settings.gpu_memory_gib)
    try:
        preflight(request, settings.caption_image_backend, gpu_memory_gib=gpu)
        notes = asyncio.run(_before_launch(request, settings, offline))
    except StageFailure as failure:
        scrub = Redactor(request.secret_values())
        print(redact(scrub(f"{_input_field(failure.field)}: {failure.message}")), file=err)
        return 1
    paths = JobPaths(volume / JOBS_DIR / (request.job_id or PLACEHOLDER_JOB_ID))
    models_dir = volume / MODELS_DIR / request.model_type.value
    counts = dict(media or {})
    configs = build_configs(request, paths, models_dir, counts, num_gpus=settings.num_gpus)
    write_configs(configs, out)
    for name in ("train.toml", "dataset.toml"):
        print(out / name, file=report)
    for line in [
        *notes,
        *_cost(request, configs, counts, gpu, _gpu_source(gpu_memory_gib, settings)),
    ]:
        print(line, file=report)
    return 0


def _read_request(job_file: Path, err: TextIO) -> JobInput | None:
    try:
        raw = json.loads(job_file.read_text())
    except (OSError, ValueError) as exc:
        print(f"{job_file}: not a readable JSON file: {exc}", file=err)
        return None
    return _validate(raw, err)


def _worker_settings(volume: Path, gpu_memory_gib: float | None, err: TextIO) -> Settings | None:
    """``Settings()`` as ``loraq worker`` builds it, with the volume and GPU given here."""
    overrides: dict[str, Any] = {"volume": volume}
    if "LORAQ_QUEUE_URL" not in os.environ:
        overrides["queue_url"] = _NO_QUEUE
    if gpu_memory_gib is not None:
        overrides["gpu_memory_gib"] = gpu_memory_gib
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            print(redact(f"LORAQ_{name}: {error['msg']}"), file=err)
        return None


def _input_field(field: str | None) -> str:
    """Preflight names fields inside ``input``; report them from the body's root."""
    if not field:
        return "input"
    return field if field.startswith("input.") else f"input.{field}"


def _validate(raw: Any, err: TextIO) -> JobInput | None:
    """The seed's body ``{"input": {...}}``; a bare input object is accepted too."""
    body = raw if isinstance(raw, dict) and "input" in raw else {"input": raw}
    try:
        return JobRequest.model_validate(body).input
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "input"
            # Pydantic may echo the input, and the input may hold a token: never print it.
            print(redact(f"{field}: {error['msg']}"), file=err)
        return None


async def _before_launch(request: JobInput, settings: Settings, offline: bool) -> list[str]:
    """What the worker would meet only after it took the job: the weights and the dataset."""
    notes = [await _weights_access(request, settings, offline)]
    for kind in ("images", "videos"):
        url = getattr(request.dataset, f"{kind}_url")
        if url is None:
            continue
        field = f"dataset.{kind}_url"
        notes.append(
            f"input.{field}: not checked (--offline)"
            if offline
            else await _reach(url, field, settings)
        )
    return [note for note in notes if note]


async def _weights_access(request: JobInput, settings: Settings, offline: bool) -> str:
    spec = spec_for(request.model_type)
    if spec.builtin or not spec.gated:
        return ""
    models_dir = settings.volume / MODELS_DIR / spec.model_type.value
    token = request.huggingface_token()
    if token is None:
        # The worker's own refusal: provisioning raises it, before any Hub call, when the
        # volume lacks the weights; when it holds them, no token is needed at all.
        try:
            await provision_model(spec, models_dir, HubClient(settings.hf_endpoint), None)
        except Interrupted as stop:  # never raised without a stop request; typed for mypy
            raise Retryable(ErrorCode.PROVISION_FAILED, stop.reason) from None
        return f"weights: {spec.display_name} is on the volume, no token needed"
    if await asyncio.to_thread(_on_volume, spec, models_dir):
        return f"weights: {spec.display_name} is on the volume, the token is not used"
    if offline:
        return f"weights: {TOKEN_FIELD} not checked against the Hub (--offline)"
    for source in spec.sources:
        if source.gated:
            await asyncio.to_thread(_auth_check, spec, source.repo_id, token, settings.hf_endpoint)
    return f"weights: the token may download {spec.display_name}"


def _on_volume(spec: ModelSpec, models_dir: Path) -> bool:
    if weights.read_marker(spec, models_dir) is not None:
        return True
    findings = weights.inspect(spec, models_dir)
    return findings.complete and not findings.wrong


def _auth_check(spec: ModelSpec, repo_id: str, token: SecretStr, endpoint: str | None) -> None:
    """The Hub's own answer to "may this token read the gated files" (``HfApi.auth_check``)."""
    try:
        HfApi(endpoint=endpoint, token=False).auth_check(repo_id, token=token.get_secret_value())
    except Exception as exc:
        error = translate_error(exc, repo_id)
    else:
        return
    what = f"{spec.display_name} weights"
    if isinstance(error, HubAccessDenied):
        raise Permanent(
            ErrorCode.PROVISION_FAILED,
            f"{what}: the token was refused: it must belong to an account that accepted the "
            f"model's license on the Hub ({error})",
            field=TOKEN_FIELD,
        )
    if isinstance(error, HubNotFound):
        raise Permanent(ErrorCode.PROVISION_FAILED, f"{what}: {error}", field="model_type")
    raise Retryable(ErrorCode.PROVISION_FAILED, f"{what}: the Hub could not say: {error}")


async def _reach(url: str, field: str, settings: Settings) -> str:
    """One byte of the dataset, asked the way the fetch stage asks for all of it."""
    if url.startswith("s3://"):
        return f"input.{field}: s3:// is read by the worker with its own credentials; not checked"
    try:
        size = await _probe_http(url, settings)
    except DownloadRefused as exc:
        raise Permanent(ErrorCode.DATASET_DOWNLOAD_FAILED, str(exc), field=field) from exc
    except DownloadFailed as exc:
        raise Retryable(
            ErrorCode.DATASET_DOWNLOAD_FAILED, f"{exc} (a worker would retry it)", field=field
        ) from exc
    return f"input.{field}: reachable" + (f", {size / 1e6:.1f} MB" if size is not None else "")


async def _probe_http(url: str, settings: Settings) -> int | None:
    """The size the server announces; refused as the download would refuse it.

    Same resolver (the SSRF filter), same redirect walk with every hop checked, same size
    cap; a range of one byte, so a presigned GET URL answers as it would to the download.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=_PROBE_WAIT_S, sock_read=None)
    connector = aiohttp.TCPConnector(resolver=AllowedResolver(settings.fetch_allow))
    pace = Pace(window_s=_PROBE_WAIT_S, deadline_s=_PROBE_WAIT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            headers = {"Range": "bytes=0-0"}
            async with await get_checked(
                session, url, settings.fetch_allow, headers, pace
            ) as reply:
                size = _announced_size(reply)
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressRefused):
            raise DownloadRefused(str(exc.os_error)) from exc
        raise DownloadFailed(f"connection failed: {exc}") from exc
    except aiohttp.InvalidURL as exc:
        raise DownloadRefused(f"not a valid URL: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed(f"connection failed: {exc}") from exc
    if size is not None and size > settings.max_download_bytes:
        raise DownloadRefused(f"{size} bytes is over the {settings.max_download_bytes}-byte limit")
    return size


def _announced_size(reply: aiohttp.ClientResponse) -> int | None:
    if reply.status in (206, 416):
        match = _CONTENT_RANGE_TOTAL.fullmatch(reply.headers.get("Content-Range", "").strip())
        return int(match.group(1)) if match else None
    encoded = reply.headers.get("Content-Encoding", "identity").lower() != "identity"
    return None if encoded else reply.content_length


def _gpu_source(given: float | None, settings: Settings) -> str:
    if given is not None:
        return "--gpu-memory-gib"
    if settings.gpu_memory_gib is not None:
        return "LORAQ_GPU_MEMORY_GIB"
    return "this machine's GPU (nvidia-smi)"


def _cost(
    request: JobInput, configs: Configs, counts: Mapping[str, int], gpu: float | None, source: str
) -> list[str]:
    """What a run would take: steps, one GPU's memory and a rough time."""
    need = model_budget.estimate(
        request.model_type,
        configs.train,
        configs.dataset,
        videos=model_budget.has_videos(request),
    )
    steps = configs.total_steps if counts else None
    lines = [
        f"steps: {steps:,} (stages/step_count.py, from the file counts given)"
        if steps is not None
        else "steps: unknown until the dataset's file counts are given (--images N, --videos N)"
    ]
    if need is None:
        return [*lines, f"memory, time: {request.model_type} trains on the CPU, no GPU"]
    held = (
        f"this worker's GPU has {gpu:.1f} GiB ({source})"
        if gpu
        else "not held against a GPU: set LORAQ_GPU_MEMORY_GIB or --gpu-memory-gib"
    )
    lines.append(f"memory: about {need.total_gib:.1f} GiB of one GPU ({need.describe()}); {held}")
    per_step = need.seconds_per_step
    total = f", about {_duration(per_step * steps)} for {steps:,} steps" if steps else ""
    lines.append(
        f"time: about {per_step:.1f} s a step on {model_budget.REFERENCE_GPU}{total}, loading "
        "and caching aside (rough: from parameters and tokens, not measured; it may be off 2x)"
    )
    return lines


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# What ``loraq provision`` accepts: every model type, and the image captioner.
PROVISIONABLE = [t.value for t in ModelType] + [m.value for m in AuxiliaryModel]


def _spec(name: str) -> ModelSpec:
    if name == AuxiliaryModel.JOYCAPTION:
        return joycaption_spec()
    return spec_for(ModelType(name))


def provision_command(
    model_types: list[str], volume: Path, endpoint: str | None, out: TextIO | None = None
) -> int:
    """Provision each type in turn; stop at the first failure with its field and message."""
    out = out or sys.stdout
    hub = HubClient(endpoint)
    token_value = os.environ.get("HF_TOKEN")
    token = SecretStr(token_value) if token_value else None
    for model_type in model_types:
        spec = _spec(model_type)
        if spec.builtin:
            print(f"{model_type}: built in, nothing to download", file=out)
            continue
        models_dir = volume / MODELS_DIR / spec.model_type.value

        def waiting(model_type: str = model_type) -> None:
            print(f"{model_type}: waiting: another process is downloading it", file=out, flush=True)

        try:
            result = asyncio.run(provision_model(spec, models_dir, hub, token, on_wait=waiting))
        except StageFailure as failure:
            print(f"{model_type}: {failure.code} ({failure.field}): {failure.message}", file=out)
            return 1
        except Interrupted as stop:
            print(f"{model_type}: stopped: {stop.reason}", file=out)
            return 1
        size = (
            f", {result.downloaded_bytes / 1e9:.2f} GB downloaded"
            if result.downloaded_bytes
            else ""
        )
        print(f"{model_type}: ready in {result.models_dir} ({result.how}{size})", file=out)
    return 0
