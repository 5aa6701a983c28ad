"""``s3://`` dataset downloads resume like HTTP ones, against moto's S3 over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from contracts.enums import ErrorCode
from contracts.request import DatasetS3
from infra.aws import AwsClients
from infra.download import DownloadRefused
from infra.local_stack import LocalStack
from infra.partial_download import PartialDownload
from infra.s3 import S3Objects
from infra.s3_download import download_object
from loraq.sample_data import image_dataset_zip
from stages import fetch
from stages.errors import Permanent
from tests.captioning.conftest import make_context

KEY = "datasets/big.zip"
SIZE = 5 * 1024 * 1024 + 123  # several 1 MiB reads


class Ranges:
    """The Range / IfMatch of every GetObject the client sends (botocore's own event hook)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append({k: params.get(k) for k in ("Range", "IfMatch")})


async def _cut_after_first_chunk(s3: Any, bucket: str, dest: Path) -> int:
    """Start a download and kill it (as a dying worker would) once bytes are on disk."""
    partial = PartialDownload(dest)
    task = asyncio.create_task(download_object(s3, bucket, KEY, dest, max_bytes=SIZE))
    while not (partial.data.exists() and partial.data.stat().st_size > 0):
        assert not task.done(), "the download finished before it could be cut"
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held = partial.data.stat().st_size
    assert 0 < held < SIZE and partial.sidecar.exists()
    return held


async def test_a_cut_download_resumes_from_the_held_bytes(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN an s3:// download killed after its first chunk WHEN it runs again THEN it asks S3
    for the rest only (Range from the held size, IfMatch on the ETag), and the file is
    byte-identical; the .partial and its sidecar are gone."""
    data = os.urandom(SIZE)
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=data)
    dest = tmp_path / "images.zip"
    ranges = Ranges()
    async with AwsClients() as aws:
        aws.s3.meta.events.register("before-parameter-build.s3.GetObject", ranges)
        held = await _cut_after_first_chunk(aws.s3, stack.bucket, dest)
        assert await download_object(aws.s3, stack.bucket, KEY, dest, max_bytes=SIZE) == SIZE
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert ranges.calls[0] == {"Range": None, "IfMatch": None}
    assert ranges.calls[1]["Range"] == f"bytes={held}-"
    assert (
        ranges.calls[1]["IfMatch"]
        == stack.client("s3").head_object(Bucket=stack.bucket, Key=KEY)["ETag"]
    )
    assert not PartialDownload(dest).data.exists() and not PartialDownload(dest).sidecar.exists()


async def test_an_object_replaced_meanwhile_is_downloaded_again_from_zero(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a cut download WHEN the object is replaced before the retry THEN S3 refuses the
    range (IfMatch), and the retry starts over: the result is the new object, never a splice."""
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=os.urandom(SIZE))
    dest = tmp_path / "images.zip"
    ranges = Ranges()
    async with AwsClients() as aws:
        aws.s3.meta.events.register("before-parameter-build.s3.GetObject", ranges)
        await _cut_after_first_chunk(aws.s3, stack.bucket, dest)
        new = os.urandom(SIZE)
        stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=new)
        assert await download_object(aws.s3, stack.bucket, KEY, dest, max_bytes=SIZE) == SIZE
    assert dest.read_bytes() == new
    # Three requests: the cut one, the refused range (412 on IfMatch), the restart from zero.
    assert [c["Range"] is not None for c in ranges.calls] == [False, True, False]


async def test_the_size_cap_and_a_missing_key_are_refused(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN an object over the cap, or no object WHEN downloaded THEN refused (no retry can
    help) and nothing is left on the volume."""
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=b"x" * 2048)
    dest = tmp_path / "images.zip"
    async with AwsClients() as aws:
        with pytest.raises(DownloadRefused, match="over the 1024-byte limit"):
            await download_object(aws.s3, stack.bucket, KEY, dest, max_bytes=1024)
        with pytest.raises(DownloadRefused, match="NoSuchKey"):
            await download_object(aws.s3, stack.bucket, "nope.zip", dest, max_bytes=1024)
    assert list(tmp_path.iterdir()) == []


async def test_the_fetch_stage_reads_an_s3_url_with_the_workers_credentials(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a dataset zip in the worker's bucket and an s3:// images_url WHEN the fetch stage
    runs with the worker's S3 client THEN every image is extracted; nothing is left in work/."""

    body = image_dataset_zip(count=6, size=48)
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=body)
    ctx = _s3_context(tmp_path, f"s3://{stack.bucket}/{KEY}", dataset_buckets=[stack.bucket])
    async with AwsClients() as aws:
        ctx.s3 = S3Objects(aws.s3)
        outcome = await fetch.run(ctx)
    assert outcome.outputs["images_count"] == 6
    assert len(list((ctx.paths.dataset / "images").glob("*.png"))) == 6
    assert not list(ctx.paths.work.glob("images.zip*"))


def _s3_context(
    tmp_path: Path, url: str, own: dict[str, Any] | None = None, **settings: Any
) -> Any:
    ctx = make_context(tmp_path / "vol", "http://unused", **settings)
    update: dict[str, Any] = {"images_url": url, "videos_url": None}
    if own is not None:
        update["s3"] = DatasetS3.model_validate(own)
    ctx.request = ctx.request.model_copy(
        update={"dataset": ctx.request.dataset.model_copy(update=update)}
    )
    return ctx


async def test_the_workers_role_reads_only_buckets_the_operator_listed(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN another tenant's object in a bucket the worker's role can read, not listed in
    LORAQ_DATASET_BUCKETS WHEN a request names it with no dataset.s3 THEN the fetch fails as a
    permanent dataset_download_failed on its field and nothing is read (confused deputy)."""
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=image_dataset_zip(count=2))
    ctx = _s3_context(tmp_path, f"s3://{stack.bucket}/{KEY}", dataset_buckets=["other"])
    async with AwsClients() as aws:
        ctx.s3 = S3Objects(aws.s3)
        with pytest.raises(Permanent) as caught:
            await fetch.run(ctx)
    assert caught.value.code is ErrorCode.DATASET_DOWNLOAD_FAILED
    assert caught.value.field == "dataset.images_url"
    assert "LORAQ_DATASET_BUCKETS" in caught.value.message
    assert not (ctx.paths.dataset / "images").exists()


async def test_dataset_s3_reads_as_the_tenant_from_their_own_endpoint(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN dataset.s3 with an endpoint and keys, and no bucket listed WHEN fetched THEN the
    object is read with the tenant's client; a private endpoint not allowed is refused."""
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=image_dataset_zip(count=3))
    own = {"endpoint_url": stack.endpoint, "access_key": "tk", "secret_key": "ts"}
    url = f"s3://{stack.bucket}/{KEY}"
    ctx = _s3_context(tmp_path / "a", url, own, fetch_allow=["127.0.0.1"])
    outcome = await fetch.run(ctx)  # no worker S3 client at all: ctx.s3 is None
    assert outcome.outputs["images_count"] == 3

    ctx = _s3_context(tmp_path / "b", url, own, fetch_allow=[])
    with pytest.raises(Permanent, match="non-public address") as caught:
        await fetch.run(ctx)
    assert caught.value.field == "dataset.images_url"


async def test_upper_case_caption_extensions_pair_with_their_images(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN ``shape_000.TXT`` beside ``shape_000.png`` WHEN fetched THEN it is ``shape_000.txt``,
    the name diffusion-pipe pairs by ``with_suffix('.txt')``, and no upper-case caption is left
    to be ignored."""
    import io
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(image_dataset_zip(count=2, size=48)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in source.namelist():
            data = source.read(name)
            if name == "shape_000.txt":
                archive.writestr("shape_000.TXT", b"upper case caption")
            else:
                archive.writestr(name, data)
    stack.client("s3").put_object(Bucket=stack.bucket, Key=KEY, Body=buffer.getvalue())
    ctx = _s3_context(tmp_path, f"s3://{stack.bucket}/{KEY}", dataset_buckets=[stack.bucket])
    async with AwsClients() as aws:
        ctx.s3 = S3Objects(aws.s3)
        await fetch.run(ctx)
    images = ctx.paths.dataset / "images"
    assert not [p for p in images.iterdir() if p.suffix == ".TXT"]
    assert (images / "shape_000.txt").read_text() == "upper case caption"
    assert (images / "shape_001.txt").exists()
