"""``s3``: a zip and the raw LoRA in the user's own bucket (AWS, R2, MinIO), presigned 7 days.

Idempotent: object keys derive from the job id and the epoch, so a re-run after a crash
overwrites the same objects instead of creating new ones.
"""

from __future__ import annotations

from contracts.enums import OutputMethod
from contracts.request import S3Output
from contracts.result import OutputInfo
from infra.download import DownloadFailed, DownloadRefused, check_endpoint
from infra.s3 import SEVEN_DAYS_S, S3Objects, s3_client
from stages.context import StageContext
from stages.delivery import Bundle, DeliveryError
from stages.delivery.archive import archive_for_download


async def deliver(ctx: StageContext, bundle: Bundle) -> OutputInfo:
    s3 = ctx.request.output.s3
    if s3 is None:
        raise DeliveryError("output.s3 is required", retryable=False, field="output.s3")
    await _check_target(ctx, s3)
    model_dir, lora_path = bundle.model_dir, bundle.lora_path
    archive = await archive_for_download(ctx, bundle)
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
        raise DeliveryError(
            f"upload to s3://{s3.bucket} failed: {exc}", retryable=True, field="output.s3"
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


async def _check_target(ctx: StageContext, s3: S3Output) -> None:
    """Write as the tenant, or as the worker only where its operator said tenants may.

    A tenant's ``endpoint_url`` gets the download rules (no private address unless allowed):
    it is a connection the worker makes on the tenant's behalf.
    """
    if s3.endpoint_url:
        try:
            await check_endpoint(s3.endpoint_url, ctx.settings.fetch_allow)
        except DownloadRefused as exc:
            raise DeliveryError(str(exc), retryable=False, field="output.s3.endpoint_url") from exc
        except DownloadFailed as exc:
            raise DeliveryError(str(exc), retryable=True, field="output.s3.endpoint_url") from exc
    if s3.access_key is None and s3.bucket not in ctx.settings.output_buckets:
        raise DeliveryError(
            f"without output.s3.access_key/secret_key the worker writes with its own role only "
            f"into the buckets its operator lists (LORAQ_OUTPUT_BUCKETS), and '{s3.bucket}' is "
            "not one",
            retryable=False,
            field="output.s3.bucket",
        )
