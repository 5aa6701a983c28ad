"""Publish: deliver the newest LoRA and write ``result.json`` (the seed's response).

Idempotent: object keys and archive names derive from the job id and the epoch, so a re-run
after a crash overwrites the same objects instead of creating new ones.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from contracts.enums import ErrorCode, OutputMethod, StageName
from contracts.result import JobResult, OutputInfo
from infra.s3 import SEVEN_DAYS_S, S3Objects, s3_client
from stages.context import StageContext, StageOutcome
from stages.errors import Permanent, Retryable
from stages.registry import spec_for

NAME = StageName.PUBLISH
SUPPORTED_METHODS = frozenset({OutputMethod.LOCAL, OutputMethod.S3})


async def run(ctx: StageContext) -> StageOutcome:
    model_dir = Path(str(ctx.output_of(StageName.TRAIN, "model_dir")))
    lora_path = Path(str(ctx.output_of(StageName.TRAIN, "lora_path")))
    if not lora_path.is_file():
        raise Permanent(ErrorCode.PUBLISH_FAILED, f"the trained LoRA is missing: {lora_path}")
    method = ctx.request.output.method
    if method is OutputMethod.S3:
        output = await _publish_s3(ctx, model_dir, lora_path)
    elif method is OutputMethod.LOCAL:
        output = _publish_local(ctx, model_dir, lora_path)
    else:
        raise Permanent(
            ErrorCode.UNSUPPORTED,
            f"output method '{method}' is not available",
            field="output.method",
        )
    spec = spec_for(ctx.request.model_type)
    result = JobResult(
        job_id=ctx.job_id,
        model_type=ctx.request.model_type,
        model_name=spec.display_name,
        epochs_completed=int(ctx.output_of(StageName.TRAIN, "epochs_completed") or 0),
        latest_epoch=model_dir.name,
        output=output,
    )
    ctx.store.save_result(result)
    return StageOutcome({"download_url_set": output.download_url is not None})


def _publish_local(ctx: StageContext, model_dir: Path, lora_path: Path) -> OutputInfo:
    target = lora_path
    if ctx.settings.local_publish_dir is not None:
        folder = ctx.settings.local_publish_dir / ctx.job_id / model_dir.name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / lora_path.name
        tmp = target.with_suffix(".partial")
        shutil.copyfile(lora_path, tmp)
        tmp.replace(target)
    return OutputInfo(
        download_url=target.resolve().as_uri(),
        safetensors_url=target.resolve().as_uri(),
        download_method=OutputMethod.LOCAL,
        note="The LoRA stays on the worker's volume",
        network_volume_path=str(model_dir),
    )


def build_archive(model_dir: Path, dest: Path) -> Path:
    """Zip the model folder (LoRA, adapter config, train.toml) under a temp name, then rename."""
    tmp = dest.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(model_dir.iterdir()):
            if item.is_file():
                archive.write(item, f"{model_dir.name}/{item.name}")
    tmp.replace(dest)
    return dest


async def _publish_s3(ctx: StageContext, model_dir: Path, lora_path: Path) -> OutputInfo:
    s3 = ctx.request.output.s3
    assert s3 is not None  # the request model requires it for this method
    ctx.paths.work.mkdir(parents=True, exist_ok=True)
    archive = build_archive(model_dir, ctx.paths.work / f"{ctx.job_id}_{model_dir.name}.zip")
    prefix = f"{s3.key_prefix.strip('/')}/{ctx.job_id}"
    zip_key = f"{prefix}/{model_dir.name}.zip"
    lora_key = f"{prefix}/{model_dir.name}/{lora_path.name}"
    try:
        async with s3_client(
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key=s3.access_key.get_secret_value() if s3.access_key else None,
            secret_key=s3.secret_key.get_secret_value() if s3.secret_key else None,
        ) as client:
            objects = S3Objects(client)
            await objects.upload_file(archive, s3.bucket, zip_key)
            await objects.upload_file(lora_path, s3.bucket, lora_key)
            zip_url = await objects.presign_get(s3.bucket, zip_key, SEVEN_DAYS_S)
            lora_url = await objects.presign_get(s3.bucket, lora_key, SEVEN_DAYS_S)
    except Exception as exc:  # botocore: endpoint down, access denied, no such bucket
        raise Retryable(
            ErrorCode.PUBLISH_FAILED, f"upload to s3://{s3.bucket} failed: {exc}", field="output.s3"
        ) from exc
    size_mb = round(archive.stat().st_size / 1024**2, 3)
    archive.unlink()  # uploaded: the volume keeps the model folder, not a second copy
    return OutputInfo(
        download_url=zip_url,
        safetensors_url=lora_url,
        download_method=OutputMethod.S3,
        expires_in_days=7,
        archive_size_mb=size_mb,
        note="Presigned links, valid for 7 days",
        network_volume_path=str(model_dir),
    )
