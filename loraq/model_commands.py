"""``loraq config`` and ``loraq provision``: check a job before paying for a GPU; fill a volume.

``config`` runs the checks a worker runs first (the request's validation, then preflight) and
writes the ``train.toml`` and ``dataset.toml`` the job would train with, with paths under the
given volume. It touches neither the network nor the volume.

``provision`` downloads model types' weights into ``<volume>/models/<type>/`` exactly as the
provision stage does (same lock, same checks, same marker), so a volume can be filled before
any job arrives; ``joycaption`` fills ``models/joycaption/`` the way the caption stage would on
its first uncaptioned image. The token comes from ``HF_TOKEN``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr, ValidationError

from contracts.enums import ModelType
from contracts.request import JobInput, JobRequest
from infra.hub import HubClient
from infra.redact import redact
from infra.volume import JOBS_DIR, MODELS_DIR, JobPaths
from stages.configure import build_configs, write_configs
from stages.errors import Interrupted, StageFailure
from stages.pipeline import preflight
from stages.provision import provision_model
from stages.registry import AuxiliaryModel, ModelSpec, joycaption_spec, spec_for


def default_volume() -> Path:
    """The worker's volume setting (``LORAQ_VOLUME``), else its default."""
    return Path(os.environ.get("LORAQ_VOLUME", "/var/lib/loraq"))


# The job id when the request names none (a worker would use the SQS MessageId).
PLACEHOLDER_JOB_ID = "JOB_ID"


def config_command(job_file: Path, out: Path, volume: Path, err: TextIO | None = None) -> int:
    """Write the job's TOML files into ``out``; 1 and the problems on ``err`` if it is invalid."""
    err = err or sys.stderr
    try:
        raw = json.loads(job_file.read_text())
    except (OSError, ValueError) as exc:
        print(f"{job_file}: not a readable JSON file: {exc}", file=err)
        return 1
    request = _validate(raw, err)
    if request is None:
        return 1
    try:
        preflight(request)
    except StageFailure as failure:
        print(f"{_input_field(failure.field)}: {failure.message}", file=err)
        return 1
    paths = JobPaths(volume / JOBS_DIR / (request.job_id or PLACEHOLDER_JOB_ID))
    models_dir = volume / MODELS_DIR / request.model_type.value
    configs = build_configs(request, paths, models_dir, media={})
    write_configs(configs, out)
    for name in ("train.toml", "dataset.toml"):
        print(out / name)
    return 0


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
