"""Caption: make sure every media file has its ``<stem>.txt`` and the trigger word leads it.

The trigger word is prepended once (``"<trigger>, caption"``): a caption that already starts
with it is left alone, so re-running after a crash never doubles it. Captioning backends
(JoyCaption for images, Gemini for videos) plug in behind ``Captioner`` for datasets that
arrive without captions.
"""

from __future__ import annotations

from pathlib import Path

from contracts.enums import DatasetType, ErrorCode, StageName
from infra.volume import atomic_write_text
from stages.context import StageContext, StageOutcome
from stages.errors import Permanent
from stages.fetch import CAPTION_SUFFIX, IMAGE_SUFFIXES, VIDEO_SUFFIXES

NAME = StageName.CAPTION


async def run(ctx: StageContext) -> StageOutcome:
    media = _media_files(ctx.paths.dataset)
    missing = [m for m in media if not m.with_suffix(CAPTION_SUFFIX).exists()]
    if missing and ctx.request.dataset.type is not DatasetType.PRECAPTIONED:
        raise Permanent(
            ErrorCode.UNSUPPORTED,
            f"{len(missing)} files have no caption and this worker has no captioning backend "
            "configured; send captions and use dataset.type 'precaptioned'",
            field="dataset.type",
        )
    trigger = ctx.request.dataset.trigger_word
    for item in media:
        caption_path = item.with_suffix(CAPTION_SUFFIX)
        caption = (
            caption_path.read_text(encoding="utf-8", errors="replace").strip()
            if (caption_path.exists())
            else ""
        )
        final = with_trigger(caption, trigger)
        if final != caption or not caption_path.exists():
            atomic_write_text(caption_path, final)
    return StageOutcome({"captioned": len(media), "missing_captions": len(missing)})


def with_trigger(caption: str, trigger: str | None) -> str:
    caption = " ".join(caption.split())
    if not trigger:
        return caption
    if caption == trigger or caption.startswith(f"{trigger},"):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def _media_files(dataset_dir: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    if not dataset_dir.exists():
        return []
    return sorted(p for p in dataset_dir.rglob("*") if p.suffix.lower() in suffixes)
