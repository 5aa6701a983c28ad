"""S3 objects: parse ``s3://`` URLs, upload files, presign and resume downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiobotocore.session import get_session

from infra.download import Pace
from infra.s3_download import download_object

SEVEN_DAYS_S = 7 * 24 * 3600  # SigV4's longest presigned validity


def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URL: {url}")
    return parsed.netloc, parsed.path.lstrip("/")


class S3Objects:
    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    async def upload_file(self, path: Path, bucket: str, key: str) -> None:
        with path.open("rb") as body:
            await self._s3.put_object(Bucket=bucket, Key=key, Body=body)

    async def presign_get(self, bucket: str, key: str, expires_s: int = SEVEN_DAYS_S) -> str:
        url = await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )
        return str(url)

    async def download_to(
        self, bucket: str, key: str, dest: Path, max_bytes: int, pace: Pace | None = None
    ) -> int:
        """Stream an object into ``dest``, resuming a cut transfer (``infra.s3_download``)."""
        return await download_object(self._s3, bucket, key, dest, max_bytes, pace)


@asynccontextmanager
async def s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> AsyncIterator[Any]:
    """An S3 client for a user's own storage (R2, MinIO, another AWS account).

    With no keys it falls back to the worker's own credential chain.
    """
    kwargs: dict[str, Any] = {}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if region and region != "auto":
        kwargs["region_name"] = region
    elif region == "auto":
        kwargs["region_name"] = "us-east-1"  # R2 takes any region name; SigV4 needs one
    if access_key and secret_key:
        kwargs["aws_access_key_id"] = access_key
        kwargs["aws_secret_access_key"] = secret_key
    async with get_session().create_client("s3", **kwargs) as client:
        yield client
