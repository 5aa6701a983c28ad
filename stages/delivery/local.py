"""``local``: the LoRA stays on the worker's volume (the demo, and operators with a shared disk)."""

from __future__ import annotations

import shutil

from contracts.enums import OutputMethod
from contracts.result import OutputInfo
from stages.context import StageContext
from stages.delivery import Bundle


async def deliver(ctx: StageContext, bundle: Bundle) -> OutputInfo:
    target = bundle.lora_path
    if ctx.settings.local_publish_dir is not None:
        folder = ctx.settings.local_publish_dir / ctx.job_id / bundle.model_dir.name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / bundle.lora_path.name
        tmp = target.with_suffix(".partial")
        shutil.copyfile(bundle.lora_path, tmp)
        tmp.replace(target)
    return OutputInfo(
        download_url=target.resolve().as_uri(),
        safetensors_url=target.resolve().as_uri(),
        download_method=OutputMethod.LOCAL,
        note="The LoRA stays on the worker's volume",
        network_volume_path=str(bundle.model_dir),
    )
