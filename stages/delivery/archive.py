"""The zip a user downloads from S3 or a temporary host: the newest epoch's folder."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path

from stages.context import StageContext
from stages.delivery import Bundle


def build_archive(model_dir: Path, dest: Path) -> Path:
    """Zip the model folder (LoRA, adapter config, train.toml) under a temp name, then rename."""
    tmp = dest.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(model_dir.iterdir()):
            if item.is_file():
                archive.write(item, f"{model_dir.name}/{item.name}")
    tmp.replace(dest)
    return dest


async def archive_for_download(ctx: StageContext, bundle: Bundle) -> Path:
    """``work/<job_id>_<epochN>.zip`` of the newest epoch, built off the event loop.

    Zipping gigabytes in the loop would stall it, and with it the heartbeats.
    """
    ctx.paths.work.mkdir(parents=True, exist_ok=True)
    dest = ctx.paths.work / f"{ctx.job_id}_{bundle.model_dir.name}.zip"
    return await asyncio.to_thread(build_archive, bundle.model_dir, dest)
